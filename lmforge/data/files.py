"""Corpora of data files on this machine: a folder or a glob of ``.parquet``, ``.jsonl``
(``.jsonl.gz``, ``.jsonl.zst``) and ``.txt`` files, read in order, one file at a time.

A file's split comes from its name or its folder's: a word ``train``, ``validation``
(``valid``, ``val``, ``dev``) or ``test`` between ``-``, ``_`` or ``.`` (``fineweb_val_000000``,
``validation-00000-of-00001.parquet``, ``test/part-0.jsonl``); every other file is train.
A parquet file or a JSON line gives one document per row (its ``--text-column``), a text
file one document (or the parts between ``--doc-separator``s). Nothing is read ahead:
memory holds one parquet record batch or one line at a time.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

from lmforge.data.local import TEXT_SUFFIXES, parquet_rows, parquet_text_bytes, text_file_documents
from lmforge.data.sources import SPLITS, Source, SplitSource, normalize_split
from lmforge.errors import DataError, UsageError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson")
DATA_SUFFIXES = (".parquet", *JSONL_SUFFIXES, *TEXT_SUFFIXES)


def is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in DATA_SUFFIXES if name.endswith(s)), None)


def data_files(path_or_glob: str | Path) -> list[Path]:
    """The data files of a folder (recursively) or a glob, sorted by path."""
    text = str(path_or_glob)
    if is_glob(text):
        found = [Path(p) for p in glob.glob(str(Path(text).expanduser()), recursive=True)]
    else:
        root = Path(text).expanduser()
        found = list(root.rglob("*")) if root.is_dir() else [root]
    return sorted(p for p in found if p.is_file() and _suffix(p))


def holds_records(folder: Path) -> bool:
    """Whether a folder holds JSON-lines files (then it is read by ``files_source``)."""
    return any(_suffix(p) in JSONL_SUFFIXES for p in folder.rglob("*") if p.is_file())


def split_of(path: Path) -> str:
    for part in (path.name, path.parent.name):
        for word in re.split(r"[-_.]", part.lower()):
            split = normalize_split(word)
            if split in SPLITS:
                return split
    return "train"


def _open_lines(path: Path) -> io.TextIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    if name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
        return io.TextIOWrapper(raw, encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def jsonl_rows(path: Path, column: str) -> Iterator[str | None]:
    """The ``column`` of each JSON line of ``path``; a one-line error for a line that is not
    JSON, and for a first record without the column."""
    with _open_lines(path) as f:
        try:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path}:{number} is not a JSON line ({exc})", "check the file") from None
                if not isinstance(record, dict) or (column not in record and number == 1):
                    keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                    raise UsageError(
                        f"{path} has no column '{column}' (its first record has: {keys})",
                        "choose the text column with --text-column",
                    )
                value = record.get(column)
                yield value if isinstance(value, str) else None
        except (UnicodeDecodeError, EOFError, OSError) as exc:
            raise DataError(f"cannot read {path}: {exc}", "the file may be truncated or not UTF-8") from None


def file_documents(path: Path, column: str, separator: str | None) -> Iterator[str]:
    suffix = _suffix(path)
    if suffix == ".parquet":
        yield from (row for row in parquet_rows([path], column) if row)
    elif suffix in JSONL_SUFFIXES:
        yield from (row for row in jsonl_rows(path, column) if row)
    else:
        yield from text_file_documents(path, separator)


def files_source(path_or_glob: str | Path, column: str, separator: str | None) -> Source:
    """The data files of a folder or a glob, by split (see the module docstring)."""
    files = data_files(path_or_glob)
    if not files:
        raise DataError(
            f"{path_or_glob} matches no data files ({', '.join(DATA_SUFFIXES)})",
            "give a folder or a glob of .parquet, .jsonl(.gz/.zst) or .txt files",
        )
    by_split: dict[str, list[Path]] = {}
    for file in files:
        by_split.setdefault(split_of(file), []).append(file)

    def make(split_files: list[Path]):
        def documents() -> Iterator[str]:
            for file in split_files:
                yield from file_documents(file, column, separator)

        return documents

    parts = {}
    for split in SPLITS:
        if split not in by_split:
            continue
        split_files = by_split[split]
        parts[split] = SplitSource(
            split,
            str(split_files[0])
            if len(split_files) == 1
            else f"{path_or_glob} ({len(split_files)} {split} files)",
            make(split_files),
            _text_bytes(split_files, column),
        )
    return Source("files", str(path_or_glob), parts)


def _text_bytes(files: list[Path], column: str) -> int | None:
    """About the UTF-8 size of the text, for the progress bar; None when compressed files
    leave it unknown."""
    total = 0
    for file in files:
        suffix = _suffix(file)
        if suffix == ".parquet":
            size = parquet_text_bytes([file], column)
            if size is None:
                return None
            total += size
        elif suffix in (".jsonl.gz", ".jsonl.zst", ".json.gz"):
            return None
        else:
            total += file.stat().st_size
    return total or None
