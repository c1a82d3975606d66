"""Retention: the keep-last policy (``prunable``, applied by the trainer after each save),
the ``ckpt prune`` plan (that policy plus the safety rules), and the one helper that deletes
a checkpoint directory.

Never deleted: ``best``, the newest full checkpoint, anything that is a symlink or lies
outside ``<workspace>/runs/<run>/checkpoints/``, and a directory that may still be being
written (changed within ``STALE_INCOMPLETE_S``).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lmforge.checkpoint.listing import CheckpointInfo, list_checkpoints
from lmforge.checkpoint.meta import META_FILE
from lmforge.errors import UsageError
from lmforge.fileio import TMP_PREFIX, remove_dir, set_aside_target
from lmforge.workspace import RunDir, Workspace

STALE_INCOMPLETE_S = 3600.0  # a directory without meta.json untouched this long is a crashed save


@dataclass(frozen=True)
class PruneItem:
    """A directory ``ckpt prune`` deletes (or refuses to, with the reason)."""

    path: Path
    run: str
    name: str
    kind: str  # light | full | incomplete
    step: int | None
    size_bytes: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass
class PrunePlan:
    run: str
    keep_last: int
    delete: list[PruneItem]
    keep: list[CheckpointInfo]
    refused: list[PruneItem]  # would be pruned, but are symlinks, outside the workspace or being written

    @property
    def freed_bytes(self) -> int:
        return sum(i.size_bytes for i in self.delete)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "keep_last": self.keep_last,
            "delete": [i.to_dict() for i in self.delete],
            "keep": [c.to_dict() for c in self.keep],
            "refused": [i.to_dict() for i in self.refused],
        }


def prunable(checkpoints: list[CheckpointInfo], keep_last: int) -> list[CheckpointInfo]:
    """Which checkpoints the keep-last-N policy removes: all periodic checkpoints but the newest
    ``keep_last``; never ``best`` and never the newest full checkpoint (the one a resume needs)."""
    periodic = sorted((c for c in checkpoints if c.name != "best"), key=lambda c: c.step)
    fulls = [c for c in periodic if c.kind == "full"]
    keep = {c.path for c in periodic[-keep_last:]} if keep_last > 0 else set()
    if fulls:
        keep.add(fulls[-1].path)
    return [c for c in periodic if c.path not in keep]


def prune_keep_last(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Apply the keep-last policy to a run's checkpoints (the trainer, after each periodic
    save); returns the deleted paths. Each goes through ``remove_dir``: a kill part-way leaves
    a ``.tmp-`` name, never a checkpoint that still looks complete."""
    doomed = prunable(list_checkpoints(run_dir), keep_last)
    for c in doomed:
        remove_dir(c.path)
    return [c.path for c in doomed]


def _tree_size_and_mtime(path: Path) -> tuple[int, float]:
    size, mtime = 0, path.lstat().st_mtime
    for root, dirs, files in os.walk(path):  # does not follow symlinks
        for name in files + dirs:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            size += st.st_size if name in files else 0
            mtime = max(mtime, st.st_mtime)
    return size, mtime


def _deletable(workspace: Workspace, path: Path) -> str | None:
    """Why ``path`` must not be deleted, or None: only real directories at
    ``<workspace>/runs/<run>/checkpoints/<name>`` are."""
    if path.is_symlink():
        return f"a symbolic link to {path.resolve()}"
    resolved = path.resolve()
    run_dir = resolved.parent.parent
    if RunDir(run_dir).checkpoints_dir != resolved.parent or run_dir.parent != workspace.runs_dir.resolve():
        return f"not a checkpoint directory of the workspace {workspace.root} ({resolved})"
    return None


def plan_prune(
    workspace: Workspace, run_dir: str | os.PathLike, keep_last: int, now: float | None = None
) -> PrunePlan:
    """What ``ckpt prune`` deletes in one run: the checkpoints ``prunable`` picks, minus any
    that are symlinks or lie outside the workspace, plus leftovers of crashed saves (``.tmp-*``
    and directories without ``meta.json``) older than ``STALE_INCOMPLETE_S``; younger ones may
    still be being written and are kept."""
    run = RunDir(Path(run_dir))
    now = time.time() if now is None else now
    checkpoints = list_checkpoints(run.path)
    doomed = prunable(checkpoints, keep_last)
    delete, refused = [], []
    for c in doomed:
        reason = f"not among the last {keep_last}"
        item = PruneItem(c.path, run.name, c.name, c.kind, c.step, c.size_bytes, reason)
        why = _deletable(workspace, c.path)
        if why:
            refused.append(replace(item, reason=why))
        else:
            delete.append(item)
    root = run.checkpoints_dir
    complete = {c.path for c in checkpoints}
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d in complete or not (d.is_dir() or d.is_symlink()):
            continue
        if not d.name.startswith(TMP_PREFIX) and (d / META_FILE).is_file():
            continue  # complete but unreadable meta: not ours to judge
        why = _deletable(workspace, d)
        size, mtime = _tree_size_and_mtime(d) if not why else (0, now)
        reason = "leftover of a save that never finished"
        item = PruneItem(d, run.name, d.name, "incomplete", None, size, reason)
        aside_from = set_aside_target(d)
        if why:
            refused.append(replace(item, reason=why))
        elif aside_from and not (root / aside_from).exists() and (d / META_FILE).is_file():
            # the last good copy of a checkpoint whose replacement crashed: a resume restores it
            why_kept = f"the previous {aside_from!r}, set aside by a save that crashed"
            refused.append(replace(item, reason=why_kept))
        elif now - mtime < STALE_INCOMPLETE_S:
            refused.append(replace(item, reason="may still be being written (changed within the hour)"))
        else:
            delete.append(item)
    doomed_paths = {c.path for c in doomed}
    keep = [c for c in checkpoints if c.path not in doomed_paths]
    return PrunePlan(run.name, keep_last, delete, keep, refused)


def delete_checkpoint(workspace: Workspace, path: str | os.PathLike) -> int:
    """Delete one checkpoint directory of the workspace and return the bytes freed; a symlink or
    anything that is not ``<workspace>/runs/<run>/checkpoints/<name>`` is refused."""
    path = Path(path)
    why = _deletable(workspace, path)
    if why:
        raise UsageError(
            f"refusing to delete {path}: {why}", "lmforge only deletes checkpoints inside its workspace"
        )
    size, _ = _tree_size_and_mtime(path)
    remove_dir(path)
    return size
