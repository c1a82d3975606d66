"""Checkpoint and run names the way a person says them.

=================  =====================================================
``best``           the best checkpoint of the newest run
``latest``         the newest checkpoint of the newest run
``RUN``            that run's best checkpoint, else its latest
``RUN:best``       that run's best checkpoint
``RUN:latest``     that run's checkpoint with the highest step
``RUN:step-N``     the checkpoint saved at optimizer step N
a path             a checkpoint directory (or a run directory: its best/latest)
=================  =====================================================

``RUN`` may itself be ``latest`` (``latest:step-2000``). The newest run is the
one whose ``run.json`` has the latest ``started_at``, among runs that hold at
least one complete checkpoint (a run that has only just started has nothing to
evaluate yet). A checkpoint's "latest" is the one with the highest step, best
included if it is newer than every periodic checkpoint. An unknown name is a
``NotFoundError`` that lists what exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import CheckpointError, NotFoundError, UsageError
from lmforge.runs.record import RunRecord
from lmforge.workspace import RunDir, is_valid_name

if TYPE_CHECKING:
    from lmforge.checkpoint.listing import CheckpointInfo
    from lmforge.workspace import Workspace

NAME_FORMS = "best, latest, RUN, RUN:best, RUN:latest, RUN:step-N or a checkpoint directory"
# Words the resolver reads itself: a run so named could never be named back (``latest`` would
# mean two runs, and ``runs rm latest`` could delete the wrong one).
RESERVED_NAMES = frozenset({"best", "latest"})


def check_new_run_name(name: str, option: str = "--run") -> str:
    """``name`` when it may name a new run (or imported checkpoint); else a ``UsageError``
    naming ``option``: not a valid workspace name, or one of ``RESERVED_NAMES``."""
    if name in RESERVED_NAMES:
        raise UsageError(
            f"{option} {name!r} is reserved: it already means the newest run or checkpoint",
            f"pick another name with {option} NAME (not {' or '.join(sorted(RESERVED_NAMES))})",
        )
    if not is_valid_name(name):
        raise UsageError(
            f"invalid run name {name!r}",
            f"use letters, digits, '.', '_' and '-', starting with a letter or digit ({option} NAME)",
        )
    return name


def _started_at(run_dir: Path) -> str:
    """ISO 8601 start time from run.json; the directory's mtime when that is missing."""
    started = RunRecord.read(run_dir).get("started_at")
    if started:
        return str(started)
    from datetime import UTC, datetime

    return datetime.fromtimestamp(run_dir.stat().st_mtime, UTC).isoformat()


def runs_by_start(workspace: Workspace) -> list[str]:
    """Run names, oldest first (by run.json ``started_at``, then name)."""
    names = workspace.run_names()
    return sorted(names, key=lambda n: (_started_at(workspace.run_dir(n)), n))


def _no_runs(workspace: Workspace) -> NotFoundError:
    return NotFoundError(
        f"no runs in the workspace {workspace.root}",
        "train one with `lmforge train`, or pass --workspace / LMFORGE_HOME pointing at yours",
    )


def resolve_run(workspace: Workspace, spec: str) -> Path:
    """``latest`` (the newest run by start time) or a run name -> the run directory."""
    names = runs_by_start(workspace)
    if spec == "latest":
        if not names:
            raise _no_runs(workspace)
        return workspace.run_dir(names[-1])
    if spec in names:
        return workspace.run_dir(spec)
    if not names:
        raise NotFoundError(
            f"unknown run '{spec}': there are no runs in {workspace.root}", _no_runs(workspace).hint
        )
    raise NotFoundError(f"unknown run '{spec}'", f"runs: {_listing(names)} (or latest)")


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[-limit:])
    return shown if len(names) <= limit else f"…, {shown} ({len(names)} in all)"


def _checkpoints(run_dir: Path) -> list[CheckpointInfo]:
    from lmforge.checkpoint.listing import list_checkpoints

    return list_checkpoints(run_dir)


def _latest(checkpoints: list[CheckpointInfo]) -> CheckpointInfo:
    # highest step; on a tie prefer the periodic checkpoint (it may be a full one)
    return max(checkpoints, key=lambda c: (c.step, c.name != "best"))


def _pick(run_dir: Path, which: str, spec: str) -> Path:
    """``which`` = best | latest | default (best, else latest) | step-N, inside one run."""
    checkpoints = _checkpoints(run_dir)
    run = run_dir.name
    if not checkpoints:
        from lmforge.runs.listing import run_info

        if run_info(run_dir).status == "running":
            hint = "wait for its first checkpoint, or name another run (lmforge ckpt list)"
        else:  # none will come: waiting is a dead end
            hint = "it stopped before its first checkpoint: start the run again, or name another run"
        raise NotFoundError(f"run '{run}' has no complete checkpoints", hint)
    names = [c.name for c in checkpoints]
    if which == "latest":
        return _latest(checkpoints).path
    by_name = {c.name: c for c in checkpoints}
    if which == "default":
        return (by_name.get("best") or _latest(checkpoints)).path
    if which in by_name:
        return by_name[which].path
    what = "no best checkpoint yet" if which == "best" else f"no checkpoint '{which}'"
    raise NotFoundError(
        f"run '{run}' has {what} (checkpoint '{spec}')",
        f"its checkpoints: {_listing(names)}; name one as {run}:{names[-1]} or {run}:latest",
    )


def _newest_run_with_checkpoints(workspace: Workspace) -> Path:
    names = runs_by_start(workspace)
    if not names:
        raise _no_runs(workspace)
    for name in reversed(names):
        run_dir = workspace.run_dir(name)
        if _checkpoints(run_dir):
            return run_dir
    raise NotFoundError(
        f"no run in {workspace.root} has a complete checkpoint yet (runs: {_listing(names)})",
        "checkpoints are written every --light-interval steps and at the end of training",
    )


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.startswith((".", "~"))


def _from_path(spec: str) -> Path:
    from lmforge.checkpoint.meta import META_FILE, MODEL_FILE

    path = Path(spec).expanduser()
    if not path.exists():
        raise NotFoundError(
            f"no checkpoint at {path}: the path does not exist", f"checkpoint names: {NAME_FORMS}"
        )
    if (path / META_FILE).is_file():
        return path.resolve()
    if RunDir(path).checkpoints_dir.is_dir():  # a run directory
        return _pick(path.resolve(), "default", spec)
    if path.is_dir() and (path / MODEL_FILE).exists():
        raise CheckpointError(
            f"checkpoint {path} is incomplete (no {META_FILE}): it was being written or its save failed",
            "use another checkpoint (lmforge ckpt list)",
        )
    raise NotFoundError(
        f"{path} is not a checkpoint directory (no {META_FILE})", f"checkpoint names: {NAME_FORMS}"
    )


def resolve_checkpoint(workspace: Workspace, spec: str) -> Path:
    """A checkpoint name (see the module docstring) -> its directory."""
    spec = spec.strip()
    if not spec:
        raise NotFoundError("empty checkpoint name", f"checkpoint names: {NAME_FORMS}")
    if spec in ("best", "latest"):
        return _pick(_newest_run_with_checkpoints(workspace), spec, spec)
    if _looks_like_path(spec):
        return _from_path(spec)
    run, sep, which = spec.rpartition(":")
    if not sep:
        run, which = spec, "default"
    if run in workspace.run_names() or run == "latest":
        run_dir = _newest_run_with_checkpoints(workspace) if run == "latest" else resolve_run(workspace, run)
        return _pick(run_dir, which or "default", spec)
    if (
        Path(spec).expanduser().exists()
    ):  # a relative path without a slash: "step-100" in a run's checkpoints/
        return _from_path(spec)
    names = runs_by_start(workspace)
    if not names:
        raise NotFoundError(
            f"unknown checkpoint '{spec}': there are no runs in {workspace.root}", _no_runs(workspace).hint
        )
    raise NotFoundError(
        f"unknown checkpoint '{spec}': no run '{run}'",
        f"runs: {_listing(names)}; checkpoint names: {NAME_FORMS}",
    )
