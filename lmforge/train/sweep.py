"""Running a sweep (``lmforge.runs.sweeps``): every point of the grid, one after the other, as
a normal run of the workspace.

Running it again continues it: a point whose run finished is not run again, a point whose run
was interrupted resumes from its newest full checkpoint (so its curve is the uninterrupted one),
and a point whose run left no full checkpoint starts over. A point that stops the run (Ctrl-C,
SIGTERM, a failure) stops the sweep with the run's exit code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lmforge.checkpoint.listing import latest_full
from lmforge.fileio import remove_dir
from lmforge.observe.reporting import Reporter
from lmforge.runs.listing import run_info
from lmforge.runs.metrics import read_metrics
from lmforge.runs.sweeps import Sweep, SweepPoint, write_manifest
from lmforge.workspace import RunDir, Workspace

PointState = Literal["finished", "resume", "new"]


@dataclass
class SweepResult:
    """What a call of ``run_sweep`` did: the runs it trained (to the end), those it found
    finished, and the exit code of the run that stopped it (0 when none did)."""

    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    exit_code: int = 0
    stopped_at: str | None = None


def point_state(workspace: Workspace, point: SweepPoint) -> PointState:
    """What running ``point`` again means: nothing (its run finished), a resume (it has a full
    checkpoint), or a new run."""
    run_dir = workspace.runs_dir / point.run
    if not run_dir.is_dir():
        return "new"
    if run_info(run_dir, read_metrics(RunDir(run_dir).metrics_file)).status == "finished":
        return "finished"
    return "resume" if latest_full(run_dir) is not None else "new"


def point_overrides(sweep: Sweep, point: SweepPoint) -> tuple[str | None, dict[tuple[str, ...], Any]]:
    """The preset and the config overrides (``{("optim", "lr"): 1e-3}``) of one point."""
    preset, options = sweep.point_options(point)
    overrides: dict[tuple[str, ...], Any] = {tuple(k.split(".")): v for k, v in options.items()}
    overrides[("run",)] = point.run
    overrides[("train", "seed")] = point.seed
    return preset, overrides


def run_sweep(
    workspace: Workspace,
    sweep: Sweep,
    *,
    reporter: Reporter | None = None,
    on_point: Callable[[int, int, SweepPoint, PointState], None] | None = None,
) -> SweepResult:
    """Write the sweep's manifest and run its points in order (see the module's docstring).
    ``on_point(i, n, point, state)`` is called before each point, also for skipped ones."""
    from lmforge.train.run_spec import resolve_run
    from lmforge.train.trainer import TrainingManager

    write_manifest(workspace, sweep)
    result = SweepResult()
    points = sweep.points()
    for i, point in enumerate(points, 1):
        state = point_state(workspace, point)
        if on_point is not None:
            on_point(i, len(points), point, state)
        if state == "finished":
            result.skipped.append(point.run)
            continue
        if state == "resume":
            spec = resolve_run(workspace, resume=point.run)
        else:
            run_dir = workspace.runs_dir / point.run
            if run_dir.is_dir():  # this sweep's own run, stopped before its first full checkpoint
                remove_dir(run_dir)
            preset, overrides = point_overrides(sweep, point)
            spec = resolve_run(workspace, preset=preset, overrides=overrides)
        outcome = TrainingManager(workspace=workspace, spec=spec, reporter=reporter).train()
        if outcome.exit_code:
            result.exit_code = outcome.exit_code
            result.stopped_at = point.run
            return result
        result.trained.append(point.run)
    return result
