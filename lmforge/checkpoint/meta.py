"""A checkpoint's names, its ``meta.json`` and the shapes of its weights, readable without torch.

Listing, pruning and showing checkpoints only read ``meta.json`` (and the header of
``model.safetensors``); keeping it here (``store`` holds the weights and imports torch)
lets ``lmforge ckpt list`` and ``ckpt show`` start in a fraction of a second.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from lmforge.errors import CheckpointError
from lmforge.units import is_count

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
META_FILE = "meta.json"
# safetensors refuses headers above 100 MB; a bigger length is a damaged file, not a header to read
_MAX_HEADER_BYTES = 100_000_000


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
    _check_schema(meta, meta_path)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta['format_version']}, newer than this lmforge reads",
            "upgrade lmforge",
        )
    return meta


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# field -> (check, what it must be, required); what listing, resume and loading read of meta.json
_SCHEMA = {
    "kind": (lambda v: isinstance(v, str), "a string", True),
    "config": (lambda v: isinstance(v, dict), "a table", True),
    "format_version": (is_count, "a count (an integer >= 0)", False),
    "step": (is_count, "a count (an integer >= 0)", False),
    "tokens": (is_count, "a count (an integer >= 0)", False),
    "val_loss": (lambda v: v is None or _is_number(v), "a number or null", False),
    "run": (lambda v: v is None or isinstance(v, str), "a string", False),
    "created_at": (lambda v: v is None or isinstance(v, str), "a string", False),
    "files": (lambda v: isinstance(v, dict) and all(is_count(n) for n in v.values()), "name -> bytes", False),
    "sha256": (lambda v: isinstance(v, dict), "name -> digest", False),
}


def _check_schema(meta: dict[str, Any], meta_path: Path) -> None:
    """Refuse a ``meta.json`` whose fields have the wrong types (hand-edited or damaged): the
    one bad file is named, instead of a TypeError deep in a listing or a resume."""
    for key, (ok, what, required) in _SCHEMA.items():
        if key in meta and not ok(meta[key]) or (required and key not in meta):
            raise CheckpointError(
                f"{meta_path} is damaged: {key!r} must be {what}, got {f'{meta.get(key)!r}'[:60]}",
                "use another checkpoint (`lmforge ckpt list`), or delete this one",
            )


def stored_parameters(path: str | os.PathLike) -> int | None:
    """The number of values in the checkpoint's ``model.safetensors``: the model's total
    parameter count (a tied head is stored once, as ``wte``; padded vocabulary rows are not
    stored), read from the file's header without loading a tensor. None when the file is
    missing or its header damaged.

    The format: an 8-byte little-endian header length, then that many bytes of JSON mapping
    each tensor's name to its dtype, shape and offsets (and ``__metadata__`` to strings)."""
    try:
        with open(Path(path) / MODEL_FILE, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(length))
        shapes = [v["shape"] for k, v in header.items() if k != "__metadata__"]
        if not all(isinstance(s, list) and all(is_count(n) for n in s) for s in shapes):
            return None
        return sum(math.prod(s) for s in shapes)
    except (OSError, struct.error, UnicodeDecodeError, ValueError, AttributeError, KeyError, TypeError):
        return None
