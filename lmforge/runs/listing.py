"""Runs in the workspace: what each one is, how far it got, and how it went.

A run directory (written by the trainer, layout in CONTRACTS.md) holds
``run.json`` (status, step, tokens, best validation loss, pid), ``config.toml``
(the resolved config), ``metrics.jsonl`` (one JSON object per logged step or
evaluation) and ``checkpoints/``. Everything here only reads those files,
except :func:`remove_run`.

Status. ``run.json`` says ``running``, ``finished``, ``interrupted`` (Ctrl-C or
SIGTERM: a full checkpoint was saved) or ``failed``. A run whose ``run.json``
still says ``running`` but whose process is gone (killed with SIGKILL, by the
OOM killer, or a machine reset, so nothing could record the end) is reported
as ``stale``: it can be resumed from its last full checkpoint like an
interrupted run. The pid is only checked when the run was started on this
host (``run.json``'s ``host``, when the trainer records it); a run started
elsewhere keeps the status it recorded.

Metrics are read robustly: a run that is being written, or was killed mid-write,
may end in a truncated line; such lines are skipped and counted, never fatal.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmforge.errors import NotFoundError, UsageError
from lmforge.workspace import Workspace

STATUSES = ("running", "finished", "interrupted", "failed", "stale", "unknown")


# ----------------------------------------------------------------------------- metrics


@dataclass
class Metrics:
    """The records of ``metrics.jsonl`` by kind, in file order."""

    train: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    bad_steps: list[dict[str, Any]] = field(default_factory=list)
    skipped_lines: int = 0  # truncated or corrupt lines that were ignored

    def __bool__(self) -> bool:
        return bool(self.train or self.eval)


def read_metrics(path: str | os.PathLike) -> Metrics:
    """Read a ``metrics.jsonl`` file; a missing file gives empty metrics.

    Lines that do not parse (the truncated last line of a run killed mid-write,
    or a line being written right now) are skipped and counted in
    ``skipped_lines``.
    """
    metrics = Metrics()
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return metrics
    with fh:
        for raw in fh:
            raw = raw.strip()
            if not raw:
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                metrics.skipped_lines += 1
                continue
            if not isinstance(record, dict):
                metrics.skipped_lines += 1
                continue
            kind = record.get("kind")
            if kind == "train" and _finite(record.get("loss")) is not None:
                metrics.train.append(record)
            elif kind == "eval" and _finite(record.get("val_loss")) is not None:
                metrics.eval.append(record)
            elif kind == "bad_step":
                metrics.bad_steps.append(record)
    return metrics


def summarize_metrics(metrics: Metrics) -> dict[str, Any]:
    """The numbers a person looks at first: last train loss, best validation
    loss and perplexity (and the step where it was reached), tokens seen,
    median throughput."""
    last = metrics.train[-1] if metrics.train else None
    best = min(metrics.eval, key=lambda r: r["val_loss"]) if metrics.eval else None
    last_eval = metrics.eval[-1] if metrics.eval else None
    speeds = [s for r in metrics.train if (s := _finite(r.get("tokens_per_sec"))) is not None and s > 0]
    records = metrics.train + metrics.eval
    return {
        "last_step": max((int(r.get("step", 0)) for r in records), default=None),
        "tokens": max((int(r.get("tokens") or 0) for r in records), default=None),
        "last_train_loss": last["loss"] if last else None,
        "last_train_step": last.get("step") if last else None,
        "last_lr": last.get("lr") if last else None,
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_ppl": perplexity(best["val_loss"]) if best else None,
        "best_step": best.get("step") if best else None,
        "last_val_loss": last_eval["val_loss"] if last_eval else None,
        "evaluations": len(metrics.eval),
        "tokens_per_sec_median": statistics.median(speeds) if speeds else None,
        "bad_steps": len(metrics.bad_steps),
        "skipped_lines": metrics.skipped_lines,
    }


def perplexity(loss: float | None) -> float | None:
    """``exp(loss)``; ``inf`` where that overflows (a diverged run), ``None`` without a loss."""
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


# ----------------------------------------------------------------------------- runs


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
    run_dir = Path(run_dir)
    warnings: list[str] = []
    record = _read_run_json(run_dir, warnings)
    if metrics is None:
        metrics = read_metrics(run_dir / "metrics.jsonl")
    if metrics.skipped_lines:
        warnings.append(f"metrics.jsonl: {metrics.skipped_lines} unreadable line(s) skipped")
    summary = summarize_metrics(metrics)
    config = _read_config_dict(run_dir, warnings)

    recorded = record.get("status") if isinstance(record.get("status"), str) else None
    pid = record.get("pid") if isinstance(record.get("pid"), int) else None
    status = recorded if recorded in STATUSES else "unknown"
    if recorded == "running" and not _alive_here(pid, record.get("host")):
        status = "stale"

    # run.json is rewritten at evaluations and checkpoints only; the metrics
    # file is appended at every log interval, so it may be further along.
    step = _max_int(record.get("step"), summary["last_step"])
    tokens = _max_int(record.get("tokens"), summary["tokens"])
    best_loss = _finite(record.get("best_val_loss"))
    best_step = record.get("best_step")
    if summary["best_val_loss"] is not None and (best_loss is None or summary["best_val_loss"] < best_loss):
        best_loss, best_step = summary["best_val_loss"], summary["best_step"]

    started = _parse_time(record.get("started_at"))
    ended = _parse_time(record.get("ended_at"))
    if ended is None and started is not None:
        if status == "running":
            ended = datetime.now(UTC)
        else:  # stale or unknown: the last time anything was written
            ended = _last_write(run_dir)
    duration = (ended - started).total_seconds() if started and ended and ended >= started else None

    return RunInfo(
        name=run_dir.name,
        path=run_dir,
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
        size_bytes=dir_size(run_dir),
        pid=pid,
        error=record.get("error"),
        warnings=warnings,
    )


def run_details(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What ``lmforge runs show`` prints: the run's row, its config's differences
    from its preset, a metrics summary and its checkpoints."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    from lmforge.errors import ConfigError

    info = run_info(run_dir, metrics)
    try:
        diff = config_diff(run_dir)
    except ConfigError:  # unreadable config.toml: already in info.warnings
        diff = []
    return {
        "run": info.to_dict(),
        "config_diff": [c.to_dict() for c in diff],
        "metrics": summarize_metrics(metrics),
        "checkpoints": checkpoints(run_dir),
    }


def checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """The run's complete checkpoints (via ``lmforge.checkpoint.store.list_checkpoints``)."""
    from lmforge.checkpoint.store import list_checkpoints

    out = []
    for ckpt in list_checkpoints(run_dir):
        row = asdict(ckpt)
        row["path"] = str(ckpt.path)
        out.append(row)
    return out


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ConfigChange:
    """A config value of a run that differs from its preset's default."""

    key: str  # "optim.lr"
    value: Any
    default: Any  # None when the key is not a known config field

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_diff(run_dir: str | os.PathLike) -> list[ConfigChange]:
    """The values of the run's ``config.toml`` that differ from
    ``resolve_config(preset=<its preset>)``, in file order. The run name is left
    out (every run has its own). A missing config file gives an empty list."""
    from lmforge.config import PRESETS, load_toml, resolve_config

    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        return []
    data = load_toml(path)
    preset = data.get("preset")
    base = resolve_config(preset=preset if preset in PRESETS else None).to_dict()
    defaults = _flatten(base)
    changes = []
    for key, value in _flatten(data).items():
        if key == "run":
            continue
        if key not in defaults:
            changes.append(ConfigChange(key, value, None))
        elif defaults[key] != value:
            changes.append(ConfigChange(key, value, defaults[key]))
    return changes


def compare_configs(run_dirs: list[Path]) -> dict[str, list[Any]]:
    """The config keys whose values differ between runs: ``{"optim.lr": [3e-4, 6e-4]}``
    (``None`` where a run's config lacks the key). The run name is left out."""
    from lmforge.config import resolve_config

    defaults = _flatten(resolve_config().to_dict())
    flats = []
    for run_dir in run_dirs:
        warnings: list[str] = []
        flats.append(_flatten(_read_config_dict(Path(run_dir), warnings)))
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys and k != "run"]
    out = {}
    for key in keys:
        # a key absent from one file (a None default) reads back as its default
        values = [flat.get(key, defaults.get(key)) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            out[key] = values
    return out


# ----------------------------------------------------------------------------- names and removal


def resolve_run(workspace: Workspace, spec: str) -> Path:
    """A run directory from a name or ``latest`` (see ``lmforge.runs.names``)."""
    from lmforge.runs.names import resolve_run as _resolve

    return _resolve(workspace, spec)


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
    if info.status == "running" and not force:
        raise UsageError(
            f"run {info.name!r} is still running (pid {info.pid})",
            "stop it first (Ctrl-C saves a checkpoint), or pass --force",
        )
    size = info.size_bytes
    shutil.rmtree(resolved)
    return size


def pid_alive(pid: int | None) -> bool:
    """True when a process with this pid exists on this host (or may: no permission to signal it)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


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


# ----------------------------------------------------------------------------- helpers


def _alive_here(pid: int | None, host: Any) -> bool:
    if isinstance(host, str) and host and host != socket.gethostname():
        return True  # started on another machine: its pid means nothing here, trust run.json
    return pid_alive(pid)


def _read_run_json(run_dir: Path, warnings: list[str]) -> dict[str, Any]:
    path = run_dir / "run.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        warnings.append("run.json is missing")
        return {}
    except (OSError, ValueError) as exc:
        warnings.append(f"run.json is unreadable: {exc}")
        return {}
    if not isinstance(data, dict):
        warnings.append("run.json is not a JSON object")
        return {}
    return data


def _read_config_dict(run_dir: Path, warnings: list[str]) -> dict[str, Any]:
    from lmforge.config import load_toml
    from lmforge.errors import ConfigError

    path = run_dir / "config.toml"
    if not path.is_file():
        return {}
    try:
        return load_toml(path)
    except ConfigError as exc:
        warnings.append(exc.message)
        return {}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif value is not None:  # None has no TOML spelling: absent means default
            out[prefix + key] = value
    return out


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _max_int(*values: Any) -> int | None:
    ints = [int(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(ints) if ints else None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _last_write(run_dir: Path) -> datetime | None:
    times = []
    for name in ("metrics.jsonl", "run.json"):
        try:
            times.append((run_dir / name).stat().st_mtime)
        except OSError:
            pass
    return datetime.fromtimestamp(max(times), UTC) if times else None
