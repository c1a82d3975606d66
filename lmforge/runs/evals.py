"""Saved evaluation results: the JSON files that ``lmforge eval --tasks`` writes beside a
checkpoint (``<checkpoint>/evals/<time>-<task>.json``), writing one, reading a checkpoint's,
and gathering a run's for ``runs show``.

Only JSON and paths, so ``runs show`` and ``ckpt show`` stay free of torch. May import
``checkpoint.listing`` and the top-level modules (``fileio``, ``units``); not ``eval``,
which calls in here to save what it scored.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from lmforge.checkpoint.listing import CheckpointInfo

EVALS_DIR = "evals"
RECORD_FORMAT = "lmforge-eval"


def save_eval(checkpoint_dir: Path, tasks: list[str], record: dict[str, Any]) -> Path:
    """Write ``record`` (with ``format``, ``created`` and ``lmforge_version`` added in front) to
    ``<checkpoint>/evals/<time>-<first task>[+N].json`` atomically; the file's path."""
    from lmforge import __version__
    from lmforge.fileio import write_json_atomic
    from lmforge.units import now_iso

    created = now_iso()
    names = sorted(tasks) or ["none"]
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", names[0]) + (f"+{len(names) - 1}" if len(names) > 1 else "")
    stamp = re.sub(r"[^0-9TZ]", "", created)
    path = Path(checkpoint_dir) / EVALS_DIR / f"{stamp}-{label}.json"
    path.parent.mkdir(exist_ok=True)
    write_json_atomic(
        path, {"format": RECORD_FORMAT, "created": created, "lmforge_version": __version__, **record}
    )
    return path


def saved_evals(checkpoint_dir: str | os.PathLike, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """The saved task results of a checkpoint, oldest first: ``{"file", "created", "tasks",
    "rows"}`` each. An unreadable file is left out, and said in ``warnings`` (when given): one
    damaged file must not hide the others, but a person should learn it was passed over."""
    found = []
    for path in sorted((Path(checkpoint_dir) / EVALS_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
            if warnings is not None:
                warnings.append(f"skipped {path}: not readable JSON ({exc})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("rows", []), list):
            if warnings is not None:
                warnings.append(f"skipped {path}: not an lmforge eval record")
            continue
        rows = [r for r in record.get("rows") or [] if isinstance(r, dict)]
        created = record.get("created")
        found.append(
            {
                "file": path.name,
                "created": created if isinstance(created, str) else None,
                "tasks": sorted({str(r["task"]) for r in rows if r.get("task")}),
                "rows": rows,
            }
        )
    return found


def run_evals(checkpoints: list[CheckpointInfo], warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """One entry per saved file across ``checkpoints``, newest first: ``{"checkpoint", "file",
    "path", "created", "tasks", "rows"}``. A damaged file is left out and said in ``warnings``."""
    found = [
        {"checkpoint": c.name, "path": str(c.path / EVALS_DIR / record["file"]), **record}
        for c in checkpoints
        for record in saved_evals(c.path, warnings)
    ]
    # the file name starts with the save time too: it orders a record whose "created" is missing
    found.sort(key=lambda e: (e["created"] or "", e["file"], e["checkpoint"]), reverse=True)
    return found
