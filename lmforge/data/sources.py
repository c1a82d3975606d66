"""Where text comes from, as a stream of documents per split.

A source maps split names (``train``, ``validation``, ``test``) to
``SplitSource`` objects that stream documents without ever holding a whole
split in memory:

- WikiText from the original ``wiki.{train,valid,test}.raw`` files (or
  ``.tokens`` for the ``-v1`` variants), from their zip, from a local copy of
  the Hub's parquet layout, or from the Hub itself (``Salesforce/wikitext``).
  Articles start at level-1 headings; see ``split_wikitext_articles``.
- Local ``.txt`` files or directories: one document per file, or documents
  separated by a marker string.
- Any Hugging Face dataset with a text column: one document per row.
"""

from __future__ import annotations

import io
import os
import re
import socket
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from lmforge.errors import DataError, UsageError

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation", "eval": "validation"}
READ_BLOCK_CHARS = 1 << 20
HUB_PROBE_TIMEOUT_S = 5.0

WIKITEXT_HUB_ID = "Salesforce/wikitext"
# canonical dataset name -> (Hub config, raw?)
WIKITEXT_VARIANTS = {
    "wikitext-103": ("wikitext-103-raw-v1", True),
    "wikitext-2": ("wikitext-2-raw-v1", True),
    "wikitext-103-v1": ("wikitext-103-v1", False),
    "wikitext-2-v1": ("wikitext-2-v1", False),
}
WIKITEXT_ALIASES = {
    "wikitext-103-raw": "wikitext-103",
    "wikitext-103-raw-v1": "wikitext-103",
    "wikitext-2-raw": "wikitext-2",
    "wikitext-2-raw-v1": "wikitext-2",
}
_RAW_FILE_SPLIT = {"train": "train", "validation": "valid", "test": "test"}


def canonical_wikitext_name(name: str) -> str | None:
    """``wikitext-103-raw-v1`` -> ``wikitext-103``; None when ``name`` is not WikiText."""
    name = name.lower()
    name = WIKITEXT_ALIASES.get(name, name)
    return name if name in WIKITEXT_VARIANTS else None


def normalize_split(split: str) -> str:
    split = split.strip().lower()
    return SPLIT_ALIASES.get(split, split)


@dataclass
class SplitSource:
    """One split of a source: ``documents()`` streams its documents in order.

    ``total_bytes`` is the UTF-8 size of the split's text when known (exact for
    files, approximate for parquet/Hub), for the progress bar's ETA."""

    split: str
    description: str
    documents: Callable[[], Iterator[str]]
    total_bytes: int | None = None


@dataclass
class Source:
    kind: str  # "wikitext-raw", "wikitext-zip", "wikitext-parquet", "wikitext-hub", "text", "parquet", "hub"
    description: str
    splits: dict[str, SplitSource]

    def to_meta(self) -> dict:
        return {"kind": self.kind, "description": self.description}


# --------------------------------------------------------------------------- text streams


def read_blocks(stream: io.TextIOBase, what: str) -> Iterator[str]:
    try:
        while block := stream.read(READ_BLOCK_CHARS):
            yield block
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})", "check the file"
        ) from None


# An article starts at the blank line before a level-1 heading: a blank line (" \n" in WikiText;
# "\n" accepted too), then " = Title = " (not " = = Section = = "), then another blank line.
# The match is the "\n" that ends the line before the article (all else is lookahead): a pattern
# that starts with a literal lets `re` jump from line to line, ~10x faster than a lookbehind.
_ARTICLE_START = re.compile(r"\n(?= ?\n = (?!= )[^\n]* = \n ?\n)")


def split_wikitext_articles(blocks: Iterable[str]) -> Iterator[str]:
    """WikiText text (in blocks of any size) -> one string per article.

    A line is a level-1 heading (`` = Title = ``) only when the line before it
    is blank (`` \\n``) and so is the line after it: the two formula lines in
    the test split's "Constant k filter" that look like headings sit inside
    paragraphs. An article starts at the blank line before its heading, so
    every article reads `` \\n = Title = \\n \\n ...`` and the articles joined
    give back the text exactly. Scanning with one regular expression per block
    keeps this far cheaper than the tokenizer."""
    buf = ""
    scan = 0
    for block in blocks:
        buf += block
        cuts = [m.start() + 1 for m in _ARTICLE_START.finditer(buf, scan)]
        prev = 0
        for cut in cuts:
            yield buf[prev:cut]
            prev = cut
        buf = buf[prev:]
        # the next search starts at the third-last line: a match there may be incomplete
        end = len(buf)
        for _ in range(3):
            end = buf.rfind("\n", 0, end)
            if end <= 0:
                end = 0
                break
        scan = end
    if buf:
        yield buf


def hub_rows_to_blocks(rows: Iterable[str | None], rows_per_block: int = 4096) -> Iterator[str]:
    """The Hub's WikiText rows are lines: blank lines are ``""``, the others keep their ``\\n``."""
    block: list[str] = []
    for row in rows:
        block.append(row if row else " \n")
        if len(block) >= rows_per_block:
            yield "".join(block)
            block = []
    if block:
        yield "".join(block)


# --------------------------------------------------------------------------- WikiText


def wikitext_source(name: str, source: str | os.PathLike | None, splits: list[str]) -> Source:
    """WikiText ``name`` (canonical) from ``source`` (a folder, zip or parquet copy), or the Hub."""
    config, raw = WIKITEXT_VARIANTS[name]
    if source is None:
        return _wikitext_hub(name, config, splits)
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"--source {path} does not exist", wikitext_source_hint(raw))
    ext = ".raw" if raw else ".tokens"
    if path.is_file():
        if zipfile.is_zipfile(path):
            return _wikitext_zip(path, ext, splits, raw)
        if path.suffix == ".parquet":
            path = path.parent
        else:
            raise UsageError(
                f"--source {path} is a file; expected a folder or a zip of WikiText",
                wikitext_source_hint(raw),
            )
    folder = _find_raw_folder(path, ext)
    if folder is not None:
        return _wikitext_files(folder, ext, splits, raw)
    zips = sorted(p for p in path.glob("*.zip") if zipfile.is_zipfile(p))
    if zips:
        prefix = name.replace("-v1", "") + ("-raw" if raw else "")
        preferred = [z for z in zips if z.name.startswith(prefix)] or zips
        return _wikitext_zip(preferred[0], ext, splits, raw)
    parquet = _find_parquet_config(path, config)
    if parquet is not None:
        return _wikitext_parquet(parquet, config, splits)
    other = ".tokens" if raw else ".raw"
    note = ""
    if _find_raw_folder(path, other) is not None:
        note = (
            f"; it has wiki.*{other} files, which belong to the {'-v1 (tokenized)' if raw else 'raw'} variant"
        )
    raise DataError(
        f"--source {path} holds no WikiText: no wiki.{{train,valid,test}}{ext}, "
        f"zip, or {config}/*.parquet{note}",
        wikitext_source_hint(raw),
    )


def wikitext_source_hint(raw: bool) -> str:
    ext = ".raw" if raw else ".tokens"
    return (
        f"--source takes a folder with wiki.train{ext}, wiki.valid{ext}, wiki.test{ext} (or their zip), "
        "or a local copy of the Hub's parquet layout (Salesforce/wikitext)"
    )


def _find_raw_folder(path: Path, ext: str) -> Path | None:
    """``path`` or a folder one level below it that holds ``wiki.*{ext}`` files."""
    for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if any((folder / f"wiki.{s}{ext}").is_file() for s in _RAW_FILE_SPLIT.values()):
            return folder
    return None


def _missing_files_error(where: Path, missing: dict[str, str], found: list[str], present_splits) -> DataError:
    names = ", ".join(f"{f} (split {s})" for s, f in missing.items())
    have = f"; it has {', '.join(found)}" if found else ""
    hint = (
        f"prepare only the splits it has with --splits {','.join(present_splits)}"
        if present_splits
        else "point --source at the folder that holds them"
    )
    return DataError(f"--source {where} is missing {names}{have}", hint)


def _open_text(path: Path) -> io.TextIOWrapper:
    # newline="" keeps "\r" and "\r\n" as they are: the text must round-trip byte for byte.
    return open(path, encoding="utf-8", newline="")


def _wikitext_files(folder: Path, ext: str, splits: list[str], raw: bool) -> Source:
    files = {s: folder / f"wiki.{_RAW_FILE_SPLIT[s]}{ext}" for s in SPLITS}
    present = [s for s in SPLITS if files[s].is_file()]
    missing = {s: files[s].name for s in splits if not files[s].is_file()}
    if missing:
        raise _missing_files_error(folder, missing, [files[s].name for s in present], present)

    def make(path: Path) -> Callable[[], Iterator[str]]:
        def documents() -> Iterator[str]:
            with _open_text(path) as f:
                yield from split_wikitext_articles(read_blocks(f, str(path)))

        return documents

    parts = {s: SplitSource(s, str(files[s]), make(files[s]), files[s].stat().st_size) for s in splits}
    return Source("wikitext-raw" if raw else "wikitext-tokens", str(folder), parts)


def _wikitext_zip(path: Path, ext: str, splits: list[str], raw: bool) -> Source:
    try:
        with zipfile.ZipFile(path) as zf:
            members = {Path(i.filename).name: i for i in zf.infolist() if not i.is_dir()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"cannot read zip {path}: {exc}", "download the zip again") from None
    wanted = {s: f"wiki.{_RAW_FILE_SPLIT[s]}{ext}" for s in SPLITS}
    present = [s for s in SPLITS if wanted[s] in members]
    missing = {s: wanted[s] for s in splits if wanted[s] not in members}
    if missing:
        raise _missing_files_error(path, missing, [wanted[s] for s in present], present)

    def make(member: zipfile.ZipInfo) -> Callable[[], Iterator[str]]:
        def documents() -> Iterator[str]:
            with zipfile.ZipFile(path) as zf, zf.open(member) as raw_stream:
                text = io.TextIOWrapper(raw_stream, encoding="utf-8", newline="")
                yield from split_wikitext_articles(read_blocks(text, f"{path}:{member.filename}"))

        return documents

    parts = {
        s: SplitSource(
            s, f"{path}:{members[wanted[s]].filename}", make(members[wanted[s]]), members[wanted[s]].file_size
        )
        for s in splits
    }
    return Source("wikitext-zip", str(path), parts)


def _find_parquet_config(path: Path, config: str) -> Path | None:
    """The folder with ``config``'s parquet files: ``path`` itself, or ``path/config``,
    or ``path/*/config`` (e.g. ``hf-parquet/wikitext/wikitext-103-raw-v1``)."""
    candidates = [path, path / config, *sorted(path.glob(f"*/{config}"))]
    for folder in candidates:
        if folder.is_dir() and (any(folder.glob("*.parquet")) or any(folder.glob("*/*.parquet"))):
            if folder == path and path.name != config and any(path.glob(f"*/{config}")):
                continue
            return folder
    return None


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


def _parquet_rows(files: list[Path], column: str) -> Iterator[str | None]:
    import pyarrow.parquet as pq

    for file in files:
        try:
            pf = pq.ParquetFile(file)
        except Exception as exc:
            raise DataError(f"cannot read parquet file {file}: {exc}", "the copy may be truncated") from None
        if column not in pf.schema_arrow.names:
            raise UsageError(
                f"{file} has no column '{column}' (columns: {', '.join(pf.schema_arrow.names)})",
                "choose the text column with --text-column",
            )
        for batch in pf.iter_batches(columns=[column], batch_size=4096):
            yield from batch.column(0).to_pylist()


def _parquet_text_bytes(files: list[Path], column: str) -> int | None:
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


def _wikitext_parquet(folder: Path, config: str, splits: list[str]) -> Source:
    files = parquet_split_files(folder)
    present = [s for s in SPLITS if s in files]
    missing = {s: f"{s}-*.parquet" for s in splits if s not in files}
    if missing:
        raise _missing_files_error(folder, missing, [f.name for s in present for f in files[s]], present)

    def make(split_files: list[Path]) -> Callable[[], Iterator[str]]:
        def documents() -> Iterator[str]:
            yield from split_wikitext_articles(hub_rows_to_blocks(_parquet_rows(split_files, "text")))

        return documents

    parts = {
        s: SplitSource(
            s, ", ".join(str(f) for f in files[s]), make(files[s]), _parquet_text_bytes(files[s], "text")
        )
        for s in splits
    }
    return Source("wikitext-parquet", str(folder), parts)


def parquet_source(folder: Path, column: str) -> Source:
    """Parquet files by split (Hub layouts), one document per row of ``column``."""
    files = parquet_split_files(folder)
    parts = {}
    for split, split_files in files.items():
        if split not in SPLITS:
            continue

        def documents(split_files=split_files):
            return (row for row in _parquet_rows(split_files, column) if row)

        parts[split] = SplitSource(
            split,
            ", ".join(map(str, split_files)),
            documents,
            _parquet_text_bytes(split_files, column),
        )
    return Source("parquet", str(folder), parts)


# --------------------------------------------------------------------------- the Hub


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the Hub answers a TCP connect within ``timeout``, else the reason.

    ``datasets`` retries for about half a minute before it gives up offline; this
    probe fails in seconds (the connect runs in a daemon thread so that even a
    DNS lookup cannot hold us)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    result: dict[str, str] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = ""
        except OSError as exc:
            result["error"] = f"{host}: {exc.strerror or exc}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if "ok" in result:
        return None
    return result.get("error", f"{host}: no answer within {timeout:.0f} s")


def _hub_unreachable(dataset: str, reason: str, wikitext: bool) -> DataError:
    if wikitext:
        hint = (
            "offline, pass --source DIR with wiki.train.raw, wiki.valid.raw, wiki.test.raw (or their zip, "
            "or a copy of the Hub's parquet files)"
        )
    else:
        hint = (
            "offline, prepare a local copy instead (lmforge data prepare PATH.txt|DIR|--source PARQUET-DIR)"
        )
    if hub_offline():
        hint += "; HF_HUB_OFFLINE is set, so only the Hugging Face cache was searched"
    else:
        hint += "; or set HF_HUB_OFFLINE=1 if the dataset is in your Hugging Face cache"
    return DataError(f"cannot reach the Hugging Face Hub for {dataset} ({reason})", hint)


def _load_hub(dataset: str, config: str | None, wikitext: bool):
    if not hub_offline():
        reason = _hub_reachable()
        if reason is not None:
            raise _hub_unreachable(dataset, reason, wikitext)
    import datasets

    try:
        return datasets.load_dataset(dataset, config)
    except (ConnectionError, OSError) as exc:
        raise _hub_unreachable(dataset, str(exc).splitlines()[0][:200], wikitext) from None
    except Exception as exc:  # DatasetNotFoundError, ValueError for a bad config, ...
        raise DataError(
            f"cannot load {dataset}{f' ({config})' if config else ''} from the Hub: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            "check the dataset id on huggingface.co",
        ) from None


def _hub_split_map(dsdict) -> dict[str, str]:
    """Our split name -> the Hub's (``valid`` -> ``validation`` etc.)."""
    return {normalize_split(s): s for s in dsdict}


def _hub_batches(ds, column: str) -> Iterator[str | None]:
    for batch in ds.iter(batch_size=1000):
        yield from batch[column]


def _wikitext_hub(name: str, config: str, splits: list[str]) -> Source:
    dsdict = _load_hub(WIKITEXT_HUB_ID, config, wikitext=True)
    split_map = _hub_split_map(dsdict)

    def make(ds) -> Callable[[], Iterator[str]]:
        return lambda: split_wikitext_articles(hub_rows_to_blocks(_hub_batches(ds, "text")))

    parts = {}
    for s in splits:
        ds = dsdict[split_map[s]]
        parts[s] = SplitSource(s, f"{WIKITEXT_HUB_ID}:{config}:{split_map[s]}", make(ds), _arrow_bytes(ds))
    return Source("wikitext-hub", f"{WIKITEXT_HUB_ID} ({config})", parts)


def _arrow_bytes(ds) -> int | None:
    try:
        return int(ds.data.nbytes)
    except Exception:
        return None


def hub_source(dataset_id: str, text_column: str, splits: list[str] | None) -> tuple[Source, list[str]]:
    """A Hub dataset with a text column: one document per row."""
    dsdict = _load_hub(dataset_id, None, wikitext=False)
    split_map = _hub_split_map(dsdict)
    first = dsdict[next(iter(dsdict))]
    if text_column not in first.column_names:
        raise UsageError(
            f"{dataset_id} has no column '{text_column}' (columns: {', '.join(first.column_names)})",
            "choose the text column with --text-column",
        )

    def make(ds) -> Callable[[], Iterator[str]]:
        return lambda: (row for row in _hub_batches(ds, text_column) if row)

    parts = {
        s: SplitSource(s, f"{dataset_id}:{hub}", make(dsdict[hub]), _arrow_bytes(dsdict[hub]))
        for s, hub in split_map.items()
        if s in SPLITS
    }
    return Source("hub", dataset_id, parts), [s for s in SPLITS if s in parts]


# --------------------------------------------------------------------------- local text

TEXT_SUFFIXES = (".txt", ".text")
MAX_PIECE_CHARS = 4 << 20


class Continuation(str):
    """More text of the document before it (a long document is streamed in pieces)."""


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
    with _open_text(path) as f:
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
