"""Text on this machine: ``.txt`` files and folders, and folders of parquet files.

``text_source``: one document per file, or the parts between a ``--doc-separator``
marker; a long document is streamed in pieces cut where its tokens do not change.
``parquet_source``: the Hub's parquet layouts, one document per row of a column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from lmforge.data.sources import (
    SPLITS,
    Continuation,
    Source,
    SplitSource,
    normalize_split,
    open_text,
    read_blocks,
)
from lmforge.errors import DataError, UsageError

TEXT_SUFFIXES = (".txt", ".text")
MAX_PIECE_CHARS = 4 << 20


# --------------------------------------------------------------------------- text files


def safe_cut(text: str, limit: int) -> int:
    """The last position <= ``limit`` where ``text`` can be cut without changing its
    tokens: right after a ``\\n`` that has non-space characters on both sides. GPT-2's
    split pattern never joins such a ``\\n`` with its neighbours, and byte tokens do not
    care; 0 when there is no such place."""
    pos = text.rfind("\n", 0, limit)
    while pos > 0:
        if pos + 1 < len(text) and not text[pos - 1].isspace() and not text[pos + 1].isspace():
            return pos + 1
        pos = text.rfind("\n", 0, pos)
    return 0


def _pieces(doc_start: bool, buffer: str) -> Iterator[str]:
    """``buffer`` as one document (or its continuation), cut at safe places so no
    piece is much longer than ``MAX_PIECE_CHARS``."""
    while len(buffer) > MAX_PIECE_CHARS:
        cut = safe_cut(buffer, MAX_PIECE_CHARS)
        if cut == 0:
            break
        yield buffer[:cut] if doc_start else Continuation(buffer[:cut])
        buffer, doc_start = buffer[cut:], False
    if buffer:
        yield buffer if doc_start else Continuation(buffer)


def text_file_documents(path: Path, separator: str | None) -> Iterator[str]:
    """Documents of one text file: the whole file, or the parts between ``separator``s
    (the separators themselves are dropped; empty documents are skipped). Memory stays
    bounded: long documents are streamed in pieces (see ``Continuation``)."""
    buffer, doc_start = "", True
    with open_text(path) as f:
        for block in read_blocks(f, str(path)):
            buffer += block
            if separator:
                *docs, buffer = buffer.split(separator)
                for doc in docs:
                    if doc or not doc_start:
                        yield from _pieces(doc_start, doc)
                    doc_start = True
            if len(buffer) > 2 * MAX_PIECE_CHARS:
                # keep a tail that may hold the start of a separator split across blocks
                keep = len(separator) if separator else 0
                cut = safe_cut(buffer, len(buffer) - keep)
                if cut:
                    yield from _pieces(doc_start, buffer[:cut])
                    buffer, doc_start = buffer[cut:], False
    if buffer or not doc_start:
        yield from _pieces(doc_start, buffer)


def _text_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)


def _split_of(path: Path) -> str | None:
    split = normalize_split(path.stem if path.is_file() else path.name)
    return split if split in SPLITS else None


def text_source(path: Path, separator: str | None) -> Source:
    """A local ``.txt`` file or folder. A folder may hold ``train.txt``,
    ``validation.txt`` (or ``valid``/``val``), ``test.txt``, or subfolders with those
    names; otherwise all its ``.txt`` files (recursively, sorted) are the train split."""
    if path.exists() and not (path.is_file() or path.is_dir()):
        # /dev/zero would never end and a FIFO blocks until someone writes to it
        raise DataError(
            f"{path} is not a regular file or a folder (a device, FIFO or socket)",
            "give a text file, or a folder of text files",
        )
    if path.is_file():
        by_split = {"train": [path]}
    else:
        by_split = {}
        for child in sorted(path.iterdir()):
            split = _split_of(child)
            if split is None:
                continue
            if child.is_file() and child.suffix.lower() in TEXT_SUFFIXES:
                by_split.setdefault(split, []).append(child)
            elif child.is_dir():
                by_split.setdefault(split, []).extend(_text_files(child))
        if not by_split:
            files = _text_files(path)
            if files:
                by_split = {"train": files}
    if not any(by_split.values()):
        raise DataError(
            f"{path} holds no text files ({', '.join(TEXT_SUFFIXES)})", "empty corpus: add text files"
        )

    def make(files: list[Path]) -> Callable[[], Iterator[str]]:
        def documents() -> Iterator[str]:
            for file in files:
                yield from text_file_documents(file, separator)

        return documents

    parts = {
        s: SplitSource(
            s,
            str(files[0]) if len(files) == 1 else f"{path} ({len(files)} files)",
            make(files),
            sum(f.stat().st_size for f in files),
        )
        for s, files in by_split.items()
    }
    return Source("text", str(path), {s: parts[s] for s in SPLITS if s in parts})


# --------------------------------------------------------------------------- parquet


def parquet_split_files(folder: Path) -> dict[str, list[Path]]:
    """Split -> parquet files, for both layouts seen on the Hub:
    ``{split}-00000-of-00002.parquet`` and ``{split}/0000.parquet``."""
    found: dict[str, list[Path]] = {}
    for file in sorted(folder.glob("*.parquet")):
        split = normalize_split(file.name.split("-")[0].split(".")[0])
        found.setdefault(split, []).append(file)
    for file in sorted(folder.glob("*/*.parquet")):
        found.setdefault(normalize_split(file.parent.name), []).append(file)
    return found


def parquet_rows(files: list[Path], column: str) -> Iterator[str | None]:
    import pyarrow.parquet as pq

    for file in files:
        try:
            # no pre-buffering and small batches: memory holds one row group's column, not the file
            pf = pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20)
        except Exception as exc:
            raise DataError(f"cannot read parquet file {file}: {exc}", "the copy may be truncated") from None
        if column not in pf.schema_arrow.names:
            raise UsageError(
                f"{file} has no column '{column}' (columns: {', '.join(pf.schema_arrow.names)})",
                "choose the text column with --text-column",
            )
        for batch in pf.iter_batches(columns=[column], batch_size=256):
            yield from batch.column(0).to_pylist()


def parquet_text_bytes(files: list[Path], column: str) -> int | None:
    import pyarrow.parquet as pq

    try:
        total = 0
        for file in files:
            md = pq.ParquetFile(file).metadata
            for rg in range(md.num_row_groups):
                for c in range(md.num_columns):
                    col = md.row_group(rg).column(c)
                    if col.path_in_schema == column:
                        total += col.total_uncompressed_size
        return total or None
    except Exception:
        return None


def parquet_source(folder: Path, column: str) -> Source:
    """Parquet files by split (Hub layouts), one document per row of ``column``."""
    files = parquet_split_files(folder)
    parts = {}
    for split, split_files in files.items():
        if split not in SPLITS:
            continue

        def documents(split_files=split_files):
            return (row for row in parquet_rows(split_files, column) if row)

        parts[split] = SplitSource(
            split,
            ", ".join(map(str, split_files)),
            documents,
            parquet_text_bytes(split_files, column),
        )
    return Source("parquet", str(folder), parts)
