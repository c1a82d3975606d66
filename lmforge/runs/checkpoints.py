"""A run's checkpoints as the ``ckpt`` commands see them: which runs a command means, the
details of one checkpoint (with the run's training loss when it was saved), each run's own
keep-last setting, and pruning several runs at once.

The checkpoint format, listing and the prune plan of one run are ``lmforge.checkpoint``'s;
this module joins them to the run directory around them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.checkpoint.listing import CheckpointInfo, list_checkpoints
from lmforge.checkpoint.meta import read_meta, stored_parameters
from lmforge.checkpoint.prune import PrunePlan, delete_checkpoint, plan_prune
from lmforge.errors import LmforgeError, UsageError
from lmforge.runs.metrics import read_metrics, train_metrics_at
from lmforge.runs.names import resolve_run, runs_by_start
from lmforge.units import perplexity
from lmforge.workspace import RunDir, Workspace


def selected_runs(workspace: Workspace, run: str | None, *, default: str | None = None) -> list[Path]:
    """The run directories a command means: ``run`` (a name or ``latest``), else ``default``,
    else every run, oldest first."""
    spec = run or default
    if spec:
        return [resolve_run(workspace, spec)]
    return [workspace.run_dir(name) for name in runs_by_start(workspace)]


def checkpoints_of(run_dirs: list[Path], warnings: list[str] | None = None) -> list[CheckpointInfo]:
    """The complete checkpoints of these runs, run by run, each sorted by step (a damaged one
    is left out and said in ``warnings``)."""
    return [c for d in run_dirs for c in list_checkpoints(d, warnings)]


def checkpoint_details(path: Path, warnings: list[str] | None = None) -> dict[str, Any]:
    """What ``ckpt show`` prints: meta.json, the files on disk with their sizes, the parameter
    count (from the weights' header: no torch, either architecture), the validation loss and
    perplexity at save, the run's last logged training loss at or before the checkpoint's
    step, and the saved task evaluations (a damaged one is named in ``warnings``)."""
    meta = read_meta(path)
    expected = meta.get("files") or {}
    files = [
        {"name": f.name, "bytes": f.stat().st_size, "expected_bytes": expected.get(f.name)}
        for f in sorted(path.iterdir())
        if f.is_file()
    ]
    parameters = stored_parameters(path)
    val_loss = meta.get("val_loss")
    # no perplexity for a diverged loss: null in the JSON rather than inf or a 300-digit number
    finite_loss = isinstance(val_loss, (int, float)) and val_loss < 700
    metrics: dict[str, Any] = {"val_loss": val_loss, "val_ppl": perplexity(val_loss) if finite_loss else None}
    # a checkpoint directory sits in <run>/checkpoints/; an exported one has no run around it
    run = RunDir(path.parent.parent)
    if run.metrics_file.is_file():
        metrics.update(train_metrics_at(read_metrics(run.metrics_file), meta.get("step")))
    from lmforge.runs.evals import saved_evals  # light: reads the JSON files of evals/

    return {
        "path": str(path),
        "meta": meta,
        "metrics": metrics,
        "parameters": parameters,
        "files": files,
        "size_bytes": sum(f["bytes"] for f in files),
        "evals": saved_evals(path, warnings),  # lmforge eval --tasks results saved beside the checkpoint
    }


def keep_last_of(run_dir: Path) -> int:
    """The run's own ``checkpoint.keep_last`` (its config.toml), else the default."""
    from lmforge.config import CheckpointConfig, TrainingConfig

    try:
        return TrainingConfig.from_toml(RunDir(run_dir).config_file).checkpoint.keep_last
    except LmforgeError:
        return CheckpointConfig().keep_last


def plan_prunes(
    workspace: Workspace, run: str | None, *, all_runs: bool = False, keep_last: int | None = None
) -> list[PrunePlan]:
    """The prune plan of ``run`` (default: the newest run) or, with ``all_runs``, of every
    run; ``keep_last`` None keeps each run's own ``checkpoint.keep_last``."""
    if run and all_runs:
        raise UsageError(
            "pass a RUN or --all, not both", "lmforge ckpt prune RUN, or lmforge ckpt prune --all"
        )
    run_dirs = selected_runs(workspace, run, default=None if all_runs else "latest")
    return [plan_prune(workspace, d, keep_last_of(d) if keep_last is None else keep_last) for d in run_dirs]


@dataclass
class PruneResult:
    """What a prune deleted, the bytes it freed, and what it could not delete (and why)."""

    deleted: list[Path] = field(default_factory=list)
    freed_bytes: int = 0
    failed: list[str] = field(default_factory=list)


def prune(workspace: Workspace, plans: list[PrunePlan]) -> PruneResult:
    """Carry out prune plans; one directory that cannot be deleted does not stop the rest."""
    result = PruneResult()
    for item in (i for p in plans for i in p.delete):
        try:
            result.freed_bytes += delete_checkpoint(workspace, item.path)
            result.deleted.append(item.path)
        except (LmforgeError, OSError) as exc:
            result.failed.append(f"{item.path}: {exc}")
    return result
