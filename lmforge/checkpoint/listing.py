"""Which complete checkpoints a run has: ``list_checkpoints``, the newest full one (what a
resume continues from), and clearing the leftovers of saves that crashed.

A directory is a checkpoint only once its ``meta.json`` exists (see ``lmforge.checkpoint.store``);
``.tmp-*`` directories and ones without metadata are never listed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmforge.checkpoint.meta import META_FILE, read_meta
from lmforge.errors import CheckpointError
from lmforge.fileio import TMP_PREFIX, restore_set_aside
from lmforge.workspace import RunDir


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint, as ``ckpt list`` shows it."""

    path: Path
    run: str
    name: str  # "step-2000" or "best"
    kind: str  # "light" | "full" | "best"
    step: int
    tokens: int
    val_loss: float | None
    size_bytes: int
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def list_checkpoints(run_dir: str | os.PathLike, warnings: list[str] | None = None) -> list[CheckpointInfo]:
    """The complete checkpoints of a run, sorted by step (``best`` after a periodic one of the
    same step). Incomplete and temporary directories are skipped; one whose ``meta.json`` is
    there but unreadable is skipped too, and said in ``warnings`` (when given): it is not a
    checkpoint to use, but a person should learn it was passed over."""
    run_dir = Path(run_dir)
    root = RunDir(run_dir).checkpoints_dir
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.name.startswith(".") or not d.is_dir():
            continue
        try:
            meta = read_meta(d)
        except CheckpointError as exc:
            if warnings is not None and (d / META_FILE).is_file():
                warnings.append(f"skipped {exc}")
            continue
        out.append(
            CheckpointInfo(
                path=d,
                run=meta.get("run") or run_dir.name,
                name=d.name,
                kind=meta["kind"],
                step=meta.get("step", 0),
                tokens=meta.get("tokens", 0),
                val_loss=meta.get("val_loss"),
                size_bytes=sum(f.stat().st_size for f in d.iterdir() if f.is_file()),
                created_at=meta.get("created_at", ""),
            )
        )
    out.sort(key=lambda c: (c.step, c.name == "best"))
    return out


def latest_full(run_dir: str | os.PathLike, warnings: list[str] | None = None) -> CheckpointInfo | None:
    """The newest full checkpoint of a run (what ``--resume`` continues from); the damaged
    checkpoints passed over are said in ``warnings``."""
    fulls = [c for c in list_checkpoints(run_dir, warnings) if c.kind == "full"]
    return fulls[-1] if fulls else None


def _is_complete(path: Path) -> bool:
    try:
        read_meta(path)
    except CheckpointError:
        return False
    return True


def remove_stale_tmp(run_dir: str | os.PathLike) -> list[Path]:
    """Delete ``.tmp-*`` leftovers of saves that crashed (call only while holding the run).
    First, a ``best`` that a save set aside and died before replacing is put back: the last
    good ``best`` is restored, never deleted."""
    root = RunDir(Path(run_dir)).checkpoints_dir
    removed = []
    if root.is_dir():
        restore_set_aside(root, _is_complete)
        for d in root.iterdir():
            if d.name.startswith(TMP_PREFIX):
                shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
                removed.append(d)
    return removed
