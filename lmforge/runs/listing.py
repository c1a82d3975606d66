"""Runs in the workspace: what each one is, how far it got, and removing one.

A run directory (written by the trainer; its paths in ``lmforge.workspace.RunDir``)
holds ``run.json`` (status, step, tokens, best validation loss, pid), ``config.toml``
(the resolved config), ``metrics.jsonl`` (one JSON object per logged step or
evaluation) and ``checkpoints/``. Everything here only reads those files,
except :func:`remove_run`.

Status. ``run.json`` says ``running``, ``finished``, ``interrupted`` (Ctrl-C or
SIGTERM: a full checkpoint was saved), ``aborted`` (a second Ctrl-C: stopped at once,
nothing saved) or ``failed``. A run whose ``run.json``
still says ``running`` but whose process is gone (killed with SIGKILL, by the
OOM killer, or a machine reset, so nothing could record the end) is reported
as ``stale``: it can be resumed from its last full checkpoint like an
interrupted run. Alive means the trainer still holds its lock on the run
directory (``RunDir.lock_file``, an ``flock`` the kernel drops when the process
dies; runs older than the lock: its pid is alive). This is only checked when the
run was started on this host (``run.json``'s ``host``, when the trainer records
it); a run started elsewhere keeps the status it recorded.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmforge.errors import NotFoundError, UsageError
from lmforge.fileio import lock_held, pid_alive, remove_dir
from lmforge.runs.metrics import Metrics, finite, read_metrics, summarize_metrics
from lmforge.runs.record import RunRecord, parse_time, read_config, run_duration
from lmforge.units import perplexity
from lmforge.workspace import RunDir, Workspace

STATUSES = ("running", "finished", "interrupted", "aborted", "failed", "stale", "unknown")


@dataclass
class RunInfo:
    """One row of ``lmforge runs list``."""

    name: str
    path: Path
    status: str  # one of STATUSES
    recorded_status: str | None  # what run.json says
    preset: str | None
    dataset: str | None
    step: int | None
    total_steps: int | None
    tokens: int | None
    best_val_loss: float | None
    best_val_ppl: float | None
    best_step: int | None
    started_at: str | None
    ended_at: str | None
    duration_s: float | None
    size_bytes: int
    pid: int | None
    error: str | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def list_runs(workspace: Workspace) -> list[RunInfo]:
    """Every run of the workspace, oldest first (by start time, then name)."""
    runs = [run_info(workspace.run_dir(name)) for name in workspace.run_names()]
    return sorted(runs, key=lambda r: (r.started_at or "", r.name))


def run_info(run_dir: str | os.PathLike, metrics: Metrics | None = None) -> RunInfo:
    """Read one run directory into a :class:`RunInfo` (never raises for a damaged run:
    what could not be read is said in ``warnings``)."""
    run = RunDir(Path(run_dir))
    warnings: list[str] = []
    record = RunRecord.read(run.path, warnings)
    if metrics is None:
        metrics = read_metrics(run.metrics_file)
    if metrics.skipped_lines:
        warnings.append(f"{run.METRICS_FILE}: {metrics.skipped_lines} unreadable line(s) skipped")
    summary = summarize_metrics(metrics)
    config = read_config(run.path, warnings)

    recorded = record.get("status") if isinstance(record.get("status"), str) else None
    pid = record.get("pid") if isinstance(record.get("pid"), int) else None
    status = recorded if recorded in STATUSES else "unknown"
    if recorded == "running" and not _alive(run, pid, record.get("host")):
        status = "stale"

    # run.json is rewritten at evaluations and checkpoints only; the metrics
    # file is appended at every log interval, so it may be further along.
    step = _max_int(record.get("step"), summary["last_step"])
    tokens = _max_int(record.get("tokens"), summary["tokens"])
    best_loss = finite(record.get("best_val_loss"))
    best_step = record.get("best_step")
    if summary["best_val_loss"] is not None and (best_loss is None or summary["best_val_loss"] < best_loss):
        best_loss, best_step = summary["best_val_loss"], summary["best_step"]

    started = parse_time(record.get("started_at"))
    ended = parse_time(record.get("ended_at"))
    if ended is None and started is not None:
        if status == "running":
            ended = datetime.now(UTC)
        else:  # stale or unknown: the last time anything was written
            ended = _last_write(run)
    duration = run_duration(record, ended)

    return RunInfo(
        name=run.name,
        path=run.path,
        status=status,
        recorded_status=recorded,
        preset=config.get("preset") if isinstance(config.get("preset"), str) else None,
        dataset=record.get("dataset") or (config.get("data") or {}).get("name"),
        step=step,
        total_steps=record.get("total_steps") or (config.get("train") or {}).get("steps"),
        tokens=tokens,
        best_val_loss=best_loss,
        best_val_ppl=perplexity(best_loss),
        best_step=best_step,
        started_at=record.get("started_at"),
        ended_at=record.get("ended_at"),
        duration_s=duration,
        size_bytes=dir_size(run.path),
        pid=pid,
        error=record.get("error"),
        warnings=warnings,
    )


def run_details(run_dir: str | os.PathLike, metrics: Metrics | None = None) -> dict[str, Any]:
    """What ``lmforge runs show`` prints: the run's row, its config's differences
    from its preset, a metrics summary, its checkpoints and their saved task evaluations."""
    from lmforge.checkpoint.listing import list_checkpoints
    from lmforge.errors import ConfigError
    from lmforge.runs.compare import changes_from_defaults
    from lmforge.runs.evals import run_evals

    run = RunDir(Path(run_dir))
    if metrics is None:
        metrics = read_metrics(run.metrics_file)
    info = run_info(run.path, metrics)
    try:
        changes = changes_from_defaults(run.path)
    except ConfigError:  # unreadable config.toml: already in info.warnings
        changes = []
    checkpoints = list_checkpoints(run.path)
    evals = run_evals(checkpoints, info.warnings)  # a damaged eval file: a warning of the run
    return {
        "run": info.to_dict(),
        "config_diff": [c.to_dict() for c in changes],
        "metrics": summarize_metrics(metrics),
        "checkpoints": [c.to_dict() for c in checkpoints],
        "evals": evals,
    }


def check_removable(info: RunInfo, *, force: bool = False) -> None:
    """Refuse (UsageError) to remove a run whose process is alive, unless ``force``."""
    if info.status == "running" and not force:
        raise UsageError(
            f"run {info.name!r} is still running (pid {info.pid})",
            "stop it first (Ctrl-C saves a checkpoint), or pass --force",
        )


def remove_run(workspace: Workspace, run_dir: str | os.PathLike, *, force: bool = False) -> int:
    """Delete a run directory and return the bytes freed.

    Only a directory directly inside the workspace's ``runs/`` is removed: a
    symlink, or anything that resolves outside the workspace, is refused. A run
    whose process is alive is refused unless ``force``.
    """
    run_dir = Path(run_dir)
    runs_root = workspace.runs_dir.resolve()
    if run_dir.is_symlink():
        raise UsageError(
            f"{run_dir} is a symbolic link to {run_dir.resolve()}",
            "lmforge only deletes real run directories; remove the link yourself",
        )
    resolved = run_dir.resolve()
    if resolved.parent != runs_root or not workspace.contains(resolved):
        raise UsageError(
            f"refusing to delete {resolved}: it is not a run directory of the workspace {workspace.root}",
            "lmforge runs rm only deletes directories under <workspace>/runs/",
        )
    if not resolved.is_dir():
        raise NotFoundError(f"no run directory at {resolved}")
    info = run_info(resolved)
    check_removable(info, force=force)
    size = info.size_bytes
    # renamed away first: a live trainer (--force) sees its directory vanish at once and stops
    remove_dir(resolved)
    return size


def dir_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:  # removed while walking (a pruned checkpoint)
                continue
            total += st.st_size
    return total


def _alive(run: RunDir, pid: int | None, host: Any) -> bool:
    if isinstance(host, str) and host and host != socket.gethostname():
        return True  # started on another machine: its pid and lock mean nothing here, trust run.json
    # the trainer's flock on the lock file: the kernel drops it when the trainer dies, however
    # it dies, whereas its pid may be reused by another process; runs from before the lock: pid
    held = lock_held(run.lock_file)
    return pid_alive(pid) if held is None else held


def _max_int(*values: Any) -> int | None:
    ints = [int(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(ints) if ints else None


def _last_write(run: RunDir) -> datetime | None:
    times = []
    for path in (run.metrics_file, run.run_file):
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            pass
    return datetime.fromtimestamp(max(times), UTC) if times else None
