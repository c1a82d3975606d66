"""A run's saved task evaluations: what ``lmforge eval --tasks`` wrote beside each of its
checkpoints (``<checkpoint>/evals/<time>-<task>.json``), gathered for ``runs show``.

Only reads JSON files (``lmforge.eval.tasks.saved_evals``), so ``runs show`` stays free of torch.
"""

from __future__ import annotations

from typing import Any

from lmforge.checkpoint.listing import CheckpointInfo


def run_evals(checkpoints: list[CheckpointInfo], warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """One entry per saved file across ``checkpoints``, newest first: ``{"checkpoint", "file",
    "path", "created", "tasks", "rows"}``. A damaged file is left out and said in ``warnings``."""
    from lmforge.eval.tasks import EVALS_DIR, saved_evals  # light: json and pathlib only

    found = [
        {"checkpoint": c.name, "path": str(c.path / EVALS_DIR / record["file"]), **record}
        for c in checkpoints
        for record in saved_evals(c.path, warnings)
    ]
    # the file name starts with the save time too: it orders a record whose "created" is missing
    found.sort(key=lambda e: (e["created"] or "", e["file"], e["checkpoint"]), reverse=True)
    return found
