"""A checkpoint's names and its ``meta.json``, readable without torch.

Listing, pruning and showing checkpoints only read ``meta.json``; keeping it here
(``store`` holds the weights and imports torch) lets ``lmforge ckpt list`` start in
a fraction of a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmforge.errors import CheckpointError

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
META_FILE = "meta.json"


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of a complete checkpoint (CheckpointError if missing or corrupt)."""
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not meta_path.is_file():
        raise CheckpointError(
            f"checkpoint {path} is incomplete (no {META_FILE}); it was never finished",
            "use another checkpoint (`lmforge ckpt list`)",
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is corrupt: {exc}") from exc
    if not isinstance(meta, dict) or "config" not in meta or "kind" not in meta:
        raise CheckpointError(f"{meta_path} is not lmforge checkpoint metadata")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta['format_version']}, newer than this lmforge reads",
            "upgrade lmforge",
        )
    return meta
