"""llm.c / modded-nanogpt token shards in and out: ``data import --format llmc`` and
``data export --format llmc``.

An llm.c shard is a header of 256 little-endian int32 -- ``[20240520, 1, n_tokens, 0, ...]``
-- then ``n_tokens`` uint16 token ids; a folder holds ``<name>_val_000000.bin``,
``<name>_train_000001.bin``, ... (GPT-2 tokens, each document after an end-of-text).
Importing checks every header and size before anything is written, then copies the
tokens (without re-tokenizing) into a staging folder renamed into place when complete;
exporting writes each shard of a split as one llm.c file, renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.data.files import split_of
from lmforge.data.sources import SPLITS
from lmforge.data.staging import clean_leftovers, install, staging_dir
from lmforge.data.store import META_FILE, PreparedDataset, meta_header, open_dataset
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import DataError, UsageError
from lmforge.fileio import fsync_dir, write_json
from lmforge.workspace import Workspace

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
SPLIT_WORDS = {"train": "train", "validation": "val", "test": "test"}
COPY_TOKENS = 1 << 24  # 32 MB of uint16 a piece: memory stays flat


@dataclass
class LlmcFile:
    path: Path
    split: str
    tokens: int


def read_header(path: Path) -> int:
    """The token count of llm.c shard ``path``; a ``DataError`` naming it when its header or
    size is wrong."""
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"{path} is not an llm.c shard: {size} bytes, shorter than its 1024-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise DataError(f"{path} is not an llm.c shard: magic number {header[0]}, expected {MAGIC}")
    if header[1] != VERSION:
        raise DataError(
            f"{path} is llm.c shard version {header[1]}; lmforge reads version {VERSION} (uint16 tokens)"
        )
    count = int(header[2])
    if count < 1 or size != HEADER_BYTES + 2 * count:
        raise DataError(
            f"{path} is truncated or corrupt: {size} bytes, its header says {count} tokens "
            f"({HEADER_BYTES + 2 * count} bytes)"
        )
    return count


def scan_folder(folder: Path) -> list[LlmcFile]:
    """The llm.c shards of ``folder`` by split, every header checked."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", "give the folder that holds the llm.c .bin shards")
    paths = sorted(folder.glob("*.bin"))
    if not paths:
        raise DataError(
            f"{folder} holds no .bin files", "llm.c shards are named like fineweb_train_000001.bin"
        )
    return [LlmcFile(p, split_of(p), read_header(p)) for p in paths]


def import_llmc(
    workspace: Workspace, folder: Path, name: str, tok: Tokenizer, *, force: bool = False
) -> PreparedDataset:
    """Dataset ``name`` from the llm.c shards of ``folder``, tokens copied as they are.
    ``tok`` is the tokenizer they were made with (GPT-2 for llm.c's own); every id is
    checked to fit its vocabulary."""
    if tok.vocab_size > 1 << 16:
        raise UsageError(f"llm.c shards hold uint16 ids; tokenizer {tok.name} has {tok.vocab_size:,}")
    found = scan_folder(folder)
    target = workspace.dataset_dir(name)
    if target.exists() and not force:
        raise UsageError(f"dataset '{name}' already exists", "pass --force to replace it, or --as NAME")
    by_split: dict[str, list[LlmcFile]] = {}
    for file in found:
        by_split.setdefault(file.split, []).append(file)
    clean_leftovers(workspace)
    tmp = staging_dir(workspace, name)
    try:
        splits = {s: _copy_split(tmp, s, by_split[s], tok) for s in SPLITS if s in by_split}
        meta = {
            **meta_header(name, tok, "uint16", "an end-of-text token before each document (llm.c)"),
            "source": {
                "kind": "llmc",
                "description": str(folder.resolve()),
                "requested": str(folder.resolve()),
            },
            "prepare": None,
            "splits": splits,
        }
        write_json(tmp / META_FILE, meta)
        fsync_dir(tmp)
        install(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-imported
        raise
    return open_dataset(workspace, name)


def _copy_split(tmp: Path, split: str, files: list[LlmcFile], tok: Tokenizer) -> dict:
    shards, documents = [], 0
    for index, file in enumerate(files):
        out_name = f"{split}.bin" if len(files) == 1 else f"{split}-{index:05d}.bin"
        digest = hashlib.sha256()
        source = np.memmap(file.path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(file.tokens,))
        with open(tmp / out_name, "wb") as out:
            for start in range(0, file.tokens, COPY_TOKENS):
                piece = np.asarray(source[start : start + COPY_TOKENS], dtype=np.uint16)
                top = int(piece.max())
                if top >= tok.vocab_size:
                    raise DataError(
                        f"{file.path} holds token id {top}, outside tokenizer {tok.name}'s vocabulary "
                        f"of {tok.vocab_size:,}",
                        "import it with the tokenizer it was made with (--tokenizer)",
                    )
                documents += int(np.count_nonzero(piece == tok.eot_token))
                data = piece.tobytes()
                digest.update(data)
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        shards.append(
            {"file": out_name, "tokens": file.tokens, "sha256": digest.hexdigest(), "from": file.path.name}
        )
    entry = {
        "tokens": sum(s["tokens"] for s in shards),
        "documents": documents,
        "bytes": None,  # the text is not in llm.c shards: no bits per byte or word perplexity
        "words": None,
        "source": ", ".join(f.path.name for f in files),
        "shards": shards,
    }
    if len(shards) == 1:
        entry["file"] = shards[0]["file"]
    return entry


def export_llmc(dataset: PreparedDataset, out: Path, *, prefix: str | None = None) -> list[Path]:
    """Write every split of ``dataset`` as llm.c shards into the new (or empty) folder ``out``:
    ``<prefix>_val_000000.bin``, ``<prefix>_train_000001.bin``, ...; the files appear only
    when all are written."""
    if dataset.dtype != np.uint16:
        raise UsageError(f"dataset '{dataset.name}' holds {dataset.dtype.name} ids; llm.c shards hold uint16")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not an empty folder", "choose a new folder with --out")
    prefix = prefix or dataset.name
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, Path]] = []
    try:
        number = {"validation": 0, "train": 1, "test": 0}  # llm.c's fineweb numbers val 0, train from 1
        for split in dataset.splits:
            tokens = dataset.tokens(split)
            for shard in getattr(tokens, "shards", [tokens]):
                if len(shard) > np.iinfo(np.int32).max:
                    raise UsageError(f"a shard of '{split}' has more tokens than an llm.c header can count")
                final = out / f"{prefix}_{SPLIT_WORDS[split]}_{number[split]:06d}.bin"
                number[split] += 1
                partial = final.with_name(final.name + ".partial")
                header = np.zeros(HEADER_INTS, dtype="<i4")
                header[:3] = (MAGIC, VERSION, len(shard))
                with open(partial, "wb") as f:
                    f.write(header.tobytes())
                    for start in range(0, len(shard), COPY_TOKENS):
                        f.write(np.asarray(shard[start : start + COPY_TOKENS], dtype="<u2").tobytes())
                    f.flush()
                    os.fsync(f.fileno())
                written.append((partial, final))
        for partial, final in written:
            os.replace(partial, final)
        fsync_dir(out)
    except BaseException:
        for partial, _ in written:
            partial.unlink(missing_ok=True)
        raise
    return [final for _, final in written]
