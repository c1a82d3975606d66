"""``prepare_dataset``: text -> token files + ``meta.json`` in the workspace.

The pipeline streams: documents are read one at a time, grouped into batches of
about a megabyte, encoded on ``num_proc`` threads (tiktoken releases the GIL
while it encodes), and appended to the split's ``.bin`` file in order. At most
``2 * num_proc`` batches are in flight, so memory does not grow with the
corpus.

Everything is written under ``datasets/.tmp-<name>-<pid>-<random>/`` and
renamed to ``datasets/<name>/`` only when every split and ``meta.json`` are on
disk: an interrupted prepare never looks prepared, and ``--force`` keeps the
old dataset until the new one is complete.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from lmforge import __version__
from lmforge.data import sources
from lmforge.data.sources import SPLITS, Continuation, Source
from lmforge.data.store import FORMAT_VERSION, META_FILE, PreparedDataset, dtype_for_vocab, open_dataset
from lmforge.data.tokenizer import Tokenizer, default_num_threads, get_tokenizer, remember_tokenizer_file
from lmforge.errors import DataError, UsageError
from lmforge.fileio import fsync_dir, install_dir, write_json
from lmforge.workspace import Workspace

BATCH_BYTES = 1 << 20  # text per encoding task: big enough to amortize, small enough to bound memory
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PrepareProgress(Protocol):
    """What the pipeline reports; the CLI draws a progress bar from it."""

    def start_split(self, split: str, total_bytes: int | None, source: str) -> None: ...

    def advance(self, nbytes: int, ntokens: int) -> None: ...

    def end_split(self, split: str, stats: dict) -> None: ...


class NullProgress:
    def start_split(self, split: str, total_bytes: int | None, source: str) -> None:
        pass

    def advance(self, nbytes: int, ntokens: int) -> None:
        pass

    def end_split(self, split: str, stats: dict) -> None:
        pass


@dataclass
class PrepareResult:
    name: str
    path: Path
    already_prepared: bool
    meta: dict
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def dataset(self) -> PreparedDataset:
        return PreparedDataset(self.name, self.path, self.meta)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "already_prepared": self.already_prepared,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            "meta": self.meta,
        }


# --------------------------------------------------------------------------- arguments


def parse_splits(splits: str | Iterable[str] | None) -> list[str] | None:
    """``"validation,test"`` -> ``["validation", "test"]`` (``valid``/``val`` accepted)."""
    if splits is None:
        return None
    items = splits.split(",") if isinstance(splits, str) else list(splits)
    out: list[str] = []
    for item in items:
        if not item.strip():
            continue
        split = sources.normalize_split(item)
        if split not in SPLITS:
            raise UsageError(f"unknown split '{item.strip()}' in --splits", f"choose from {','.join(SPLITS)}")
        if split not in out:
            out.append(split)
    if not out:
        raise UsageError("--splits names no split", f"e.g. --splits {','.join(SPLITS)}")
    return [s for s in SPLITS if s in out]


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UsageError(
            f"invalid dataset name '{name}'",
            "use letters, digits, '.', '_' and '-' (and not a leading '.'); choose one with --as NAME",
        )
    return name


@dataclass
class _Plan:
    """What NAME means: a source to build lazily (the Hub is only touched when needed)."""

    name: str
    wikitext: bool
    build: Callable[[list[str] | None], tuple[Source, list[str]]]


def _plan(name: str, source, splits, alias, text_column, doc_separator) -> _Plan:
    canonical = sources.canonical_wikitext_name(name)
    if canonical is not None:
        if doc_separator is not None:
            raise UsageError(
                "--doc-separator is for local text; WikiText is split into articles at its headings"
            )
        if source is not None and not Path(source).expanduser().exists():
            raise UsageError(f"--source {source} does not exist", sources.wikitext_source_hint(True))

        def build_wikitext(requested):
            wanted = requested or list(SPLITS)
            return sources.wikitext_source(canonical, source, wanted), wanted

        return _Plan(_check_name(alias or canonical), True, build_wikitext)

    local = Path(source if source is not None else name).expanduser()
    if source is not None or local.exists():
        if not local.exists():
            raise UsageError(
                f"--source {local} does not exist", "pass a .txt file, a folder, or a parquet folder"
            )
        default_name = name if source is not None else (local.stem if local.is_file() else local.name)

        def build_local(requested):
            if local.is_dir() and sources.parquet_split_files(local) and not any(local.rglob("*.txt")):
                src = sources.parquet_source(local, text_column)
            else:
                src = sources.text_source(local, doc_separator)
            return src, _pick_splits(src, requested)

        return _Plan(_check_name(alias or _default_alias(default_name)), False, build_local)

    if "/" in name and not name.startswith((".", "/", "~")):

        def build_hub(requested):
            src, _ = sources.hub_source(name, text_column, requested)
            return src, _pick_splits(src, requested)

        return _Plan(_check_name(alias or _default_alias(name.rsplit("/", 1)[-1])), False, build_hub)

    raise UsageError(
        f"unknown dataset '{name}': not wikitext-103 or wikitext-2, not a local file or folder, "
        "and not a Hugging Face dataset id (owner/name)",
        "e.g. lmforge data prepare wikitext-2, lmforge data prepare ./corpus.txt, "
        "lmforge data prepare owner/name --text-column text",
    )


def _default_alias(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "dataset"
    return cleaned


def _pick_splits(src: Source, requested: list[str] | None) -> list[str]:
    present = [s for s in SPLITS if s in src.splits]
    if requested is None:
        return present
    missing = [s for s in requested if s not in src.splits and s != "validation"]
    if missing:
        raise DataError(
            f"{src.description} has no {', '.join(missing)} split (it has {', '.join(present) or 'none'})",
            f"prepare only the splits it has with --splits {','.join(present)}",
        )
    return requested


# --------------------------------------------------------------------------- the pipeline

# Below this many bytes of text, encode in the calling thread: starting workers costs more.
PARALLEL_MIN_BYTES = 4 << 20

_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tok: Tokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tok
    # Ctrl-C reaches the whole process group: the parent cleans up and stops the workers,
    # which should not each print a KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# str.isspace() characters, for counting words as len(text.split()) does, on UTF-8 bytes
_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = True


def count_words(raw: bytes) -> int:
    """``len(raw.decode("utf-8").split())``, several times faster and without the list of
    words: words are runs of non-whitespace bytes, after the multi-byte Unicode spaces
    (U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000)
    are marked as whitespace."""
    a = np.frombuffer(raw, dtype=np.uint8)
    if a.size == 0:
        return 0
    space = _ASCII_SPACE[a]
    if not raw.isascii():
        lead = np.flatnonzero((a == 0xC2) | ((a >= 0xE1) & (a <= 0xE3)))
        if lead.size:
            padded = np.concatenate([a, np.zeros(2, dtype=np.uint8)])
            c0, c1, c2 = padded[lead], padded[lead + 1], padded[lead + 2]
            two = (c0 == 0xC2) & ((c1 == 0x85) | (c1 == 0xA0))
            three = (
                ((c0 == 0xE1) & (c1 == 0x9A) & (c2 == 0x80))
                | ((c0 == 0xE2) & (c1 == 0x80) & ((c2 <= 0x8A) | (c2 == 0xA8) | (c2 == 0xA9) | (c2 == 0xAF)))
                | ((c0 == 0xE2) & (c1 == 0x81) & (c2 == 0x9F))
                | ((c0 == 0xE3) & (c1 == 0x80) & (c2 == 0x80))
            )
            for width, hits in ((2, lead[two]), (3, lead[three])):
                for k in range(width):
                    space[hits + k] = True
    starts = ~space
    starts[1:] &= space[:-1]  # a word starts at a non-space after a space (or at the start)
    return int(np.count_nonzero(starts))


def _encode_batch(
    items: list[tuple[bytes, bool]], dtype_name: str, vocab_size: int, tok: Tokenizer | None = None
):
    """Encode ``(utf8_text, eot_before)`` items into one array of ``dtype_name``; count words.

    Returns ``(tokens, words, max_id)``; ``tokens`` is None when an id would not fit
    (the caller raises: ids are never cast silently). Runs in a worker process."""
    tok = tok or _WORKER_TOKENIZER
    dtype = np.dtype(dtype_name)
    arrays, words = [], 0
    eot = np.array([tok.eot_token], dtype=np.uint32)
    for raw, eot_before in items:
        if eot_before:
            arrays.append(eot)
        arrays.append(tok.encode_array(raw.decode("utf-8")))
        words += count_words(raw)
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint32)
    top = int(tokens.max()) if tokens.size else -1
    if top >= vocab_size or top > np.iinfo(dtype).max:
        return None, words, top
    return tokens.astype(dtype), words, top


def _encode_batch_threaded(items, dtype_name: str, vocab_size: int, tok: Tokenizer):
    """Thread variant: ``encode_ordinary`` releases the GIL (tiktoken's buffer path does not)."""
    dtype = np.dtype(dtype_name)
    ids: list[int] = []
    words = 0
    for raw, eot_before in items:
        if eot_before:
            ids.append(tok.eot_token)
        ids.extend(tok.encode(raw.decode("utf-8")))
        words += count_words(raw)
    tokens = np.array(ids, dtype=np.int64)
    top = int(tokens.max()) if tokens.size else -1
    if top >= vocab_size or top > np.iinfo(dtype).max:
        return None, words, top
    return tokens.astype(dtype), words, top


class _Encoder:
    """Runs ``_encode_batch`` inline, or on ``num_proc`` worker processes (forked, on
    Linux) or threads (elsewhere); results come back in submission order."""

    def __init__(self, tok: Tokenizer, num_proc: int, parallel: bool) -> None:
        self.tok = tok
        self.num_proc = num_proc
        self.pool: Executor | None = None
        self.threaded = False
        if parallel and num_proc > 1:
            if sys.platform.startswith("linux"):
                # fork: workers start in milliseconds and inherit the tokenizer (spawn/forkserver
                # would re-import and rebuild it, ~1 s). The workers only run tiktoken and numpy.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                    self.pool = ProcessPoolExecutor(
                        num_proc,
                        mp_context=multiprocessing.get_context("fork"),
                        initializer=_init_worker,
                        initargs=(tok,),
                    )
            else:
                self.pool = ThreadPoolExecutor(num_proc, thread_name_prefix="lmforge-encode")
                self.threaded = True

    def submit(self, items, dtype_name: str, vocab_size: int) -> Future:
        if self.pool is None:
            future: Future = Future()
            future.set_result(_encode_batch(items, dtype_name, vocab_size, self.tok))
            return future
        if self.threaded:
            return self.pool.submit(_encode_batch_threaded, items, dtype_name, vocab_size, self.tok)
        return self.pool.submit(_encode_batch, items, dtype_name, vocab_size)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _SplitWriter:
    split: str
    path: Path
    dtype: np.dtype
    vocab_size: int
    tokens: int = 0
    documents: int = 0
    bytes: int = 0
    words: int = 0

    def __post_init__(self) -> None:
        self._hash = hashlib.sha256()
        self._file = open(self.path, "wb")

    def add_text(self, raw: bytes) -> None:
        self._hash.update(raw)
        self.bytes += len(raw)

    def write(self, result, nbytes: int, progress: PrepareProgress) -> None:
        tokens, words, top = result
        if tokens is None:
            # never cast silently: an id that does not fit would wrap around in the token file
            raise DataError(
                f"token id {top} does not fit {self.dtype.name} / vocabulary {self.vocab_size}",
                "the tokenizer and its vocabulary size disagree",
            )
        self._file.write(tokens.tobytes())
        self.tokens += int(tokens.size)
        self.words += words
        progress.advance(nbytes, int(tokens.size))

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def _batches(
    documents: Iterable[str], writer: _SplitWriter
) -> Iterator[tuple[list[tuple[bytes, bool]], int]]:
    """Group documents into ``BATCH_BYTES`` batches of ``(utf8_text, eot_before)``: an
    end-of-text goes between documents, never before the first one or inside a document.
    Hashes the text on the way (in order); yields ``(batch, utf8_bytes)``."""
    batch: list[tuple[bytes, bool]] = []
    size = nbytes = 0
    for doc in documents:
        if not doc:
            continue
        new_doc = not isinstance(doc, Continuation)
        raw = doc.encode("utf-8")
        batch.append((raw, new_doc and writer.documents > 0))
        if new_doc:
            writer.documents += 1
        writer.add_text(raw)
        nbytes += len(raw)
        size += len(raw)
        if size >= BATCH_BYTES:
            yield batch, nbytes
            batch, size, nbytes = [], 0, 0
    if batch:
        yield batch, nbytes


def write_split(
    documents: Iterable[str], writer: _SplitWriter, encoder: _Encoder, progress: PrepareProgress
) -> None:
    """Encode ``documents`` in order into ``writer``, with at most ``2 * num_proc`` batches in flight."""
    pending: deque[tuple[Future, int]] = deque()
    try:
        for batch, nbytes in _batches(documents, writer):
            pending.append((encoder.submit(batch, writer.dtype.name, writer.vocab_size), nbytes))
            while len(pending) >= 2 * encoder.num_proc:
                future, n = pending.popleft()
                writer.write(future.result(), n, progress)
        while pending:
            future, n = pending.popleft()
            writer.write(future.result(), n, progress)
    finally:
        for future, _ in pending:
            future.cancel()
        writer.close()


def select_documents(documents: Iterable[str], val_fraction: float, validation: bool) -> Iterator[str]:
    """Hold out every document ``i`` with ``floor((i + 1) f) > floor(i f)`` as validation:
    exactly ``floor(n f)`` documents, spread evenly, the same on every run."""
    index = -1
    held_out = False
    for doc in documents:
        if not isinstance(doc, Continuation):
            index += 1
            held_out = int((index + 1) * val_fraction) > int(index * val_fraction)
        if held_out == validation:
            yield doc


# --------------------------------------------------------------------------- workspace files


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(workspace: Workspace) -> list[Path]:
    """Remove temporary folders of prepares that died (their process is gone); put back a
    dataset whose ``--force`` rebuild died between its two renames."""
    removed = []
    if not workspace.datasets_dir.is_dir():
        return removed
    for entry in sorted(workspace.datasets_dir.iterdir()):
        for prefix in (TMP_PREFIX, OLD_PREFIX):
            if not entry.name.startswith(prefix):
                continue
            parts = entry.name[len(prefix) :].rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and _pid_alive(int(parts[1])) and int(parts[1]) != 0:
                continue
            target = workspace.dataset_dir(parts[0])
            if prefix == OLD_PREFIX and not target.exists() and (entry / META_FILE).is_file():
                os.rename(entry, target)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _install(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is set aside under a name that
    ``clean_leftovers`` can restore from, and removed only afterwards."""
    aside = target.parent / f"{OLD_PREFIX}{target.name}-{os.getpid()}-{secrets.token_hex(4)}"
    install_dir(tmp, target, aside=aside)


# --------------------------------------------------------------------------- the entry point


def prepare_dataset(
    workspace: Workspace,
    name: str,
    *,
    source: str | os.PathLike | None = None,
    splits: str | Iterable[str] | None = None,
    tokenizer: str = "gpt2",
    tokenizer_file: str | os.PathLike | None = None,
    num_proc: int | None = None,
    alias: str | None = None,
    force: bool = False,
    text_column: str = "text",
    doc_separator: str | None = None,
    val_fraction: float | None = None,
    progress: PrepareProgress | None = None,
) -> PrepareResult:
    """Tokenize ``name`` into ``datasets/<alias or name>/`` of ``workspace``.

    ``name`` is ``wikitext-103``/``wikitext-2`` (``-v1`` for the tokenized
    variants; read from ``source`` when given, else from the Hub), a local text
    file or folder, or a Hub dataset id (documents in ``text_column``). Returns
    ``already_prepared=True`` without touching anything when the dataset exists
    (unless ``force``)."""
    started = time.perf_counter()
    progress = progress or NullProgress()
    requested = parse_splits(splits)
    if num_proc is None:
        num_proc = default_num_threads()
    if num_proc < 1:
        raise UsageError(f"--num-proc must be >= 1, got {num_proc}")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if doc_separator == "":
        raise UsageError("--doc-separator must not be empty")
    plan = _plan(name, source, requested, alias, text_column, doc_separator)
    if val_fraction is not None and plan.wikitext:
        raise UsageError("--val-fraction is for sources without a validation split; WikiText has one")
    tok = get_tokenizer(tokenizer, tokenizer_file=tokenizer_file, workspace=workspace)
    remembered = remember_tokenizer_file(workspace, tok, tokenizer_file) if tokenizer_file else None
    target = workspace.dataset_dir(plan.name)

    if target.exists() and not force:
        existing = _existing(workspace, plan.name, target)
        _check_rerun(existing, tok, requested)
        return PrepareResult(plan.name, target, True, existing.meta, time.perf_counter() - started)

    src, wanted = plan.build(requested)
    notes: list[str] = []
    if remembered is not None:
        notes.append(f"copied the tokenizer file to {remembered}, where train, eval and generate find it")
    if val_fraction is not None and requested is None:
        wanted = [s for s in SPLITS if s in wanted or s == "validation"]
    if "validation" not in src.splits and val_fraction is None and requested is None:
        notes.append("the source has no validation split: hold out documents with --val-fraction 0.05")
    split_docs = {s: src.splits[s] for s in wanted if s in src.splits}
    if val_fraction is not None:
        if "validation" in src.splits:
            raise UsageError(
                f"{src.description} has a validation split; --val-fraction is only for sources without one"
            )
        if "train" not in src.splits:
            raise DataError(f"{src.description} has no train split to hold documents out of")
        train = src.splits["train"]
        for split, keep in (("train", False), ("validation", True)):
            if split in wanted:
                split_docs[split] = sources.SplitSource(
                    split,
                    f"{train.description} ({'held out' if keep else 'without the held-out'} "
                    f"{val_fraction:g} of documents)",
                    lambda keep=keep: select_documents(train.documents(), val_fraction, keep),
                    int(train.total_bytes * (val_fraction if keep else 1 - val_fraction))
                    if train.total_bytes
                    else None,
                )
    elif "validation" in wanted and "validation" not in src.splits:
        raise DataError(
            f"{src.description} has no validation split",
            "hold out documents with --val-fraction 0.05, or leave validation out of --splits",
        )
    if not split_docs:
        raise DataError(f"{src.description} has none of the splits {', '.join(wanted)}")

    workspace.ensure(workspace.datasets_dir)
    clean_leftovers(workspace)
    tmp = workspace.datasets_dir / f"{TMP_PREFIX}{plan.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    dtype = dtype_for_vocab(tok.vocab_size)
    known = [p.total_bytes for p in split_docs.values()]
    parallel = any(b is None for b in known) or sum(b for b in known if b) >= PARALLEL_MIN_BYTES
    encoder = _Encoder(tok, num_proc, parallel)
    try:
        split_meta = {}
        for split in SPLITS:
            if split not in split_docs:
                continue
            part = split_docs[split]
            writer = _SplitWriter(split, tmp / f"{split}.bin", dtype, tok.vocab_size)
            progress.start_split(split, part.total_bytes, part.description)
            write_split(part.documents(), writer, encoder, progress)
            if writer.tokens == 0:
                raise DataError(
                    f"split '{split}' of {part.description} is empty: no text to tokenize",
                    "check the source (empty corpus)"
                    + (", or use a larger --val-fraction" if val_fraction is not None else ""),
                )
            split_meta[split] = {
                "file": f"{split}.bin",
                "tokens": writer.tokens,
                "documents": writer.documents,
                "bytes": writer.bytes,
                "words": writer.words,
                "source": part.description,
                "sha256": writer.sha256,
            }
            progress.end_split(split, split_meta[split])
        meta = {
            "format": "lmforge-dataset",
            "format_version": FORMAT_VERSION,
            "name": plan.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "lmforge_version": __version__,
            "tokenizer": tok.identity,
            "vocab_size": tok.vocab_size,
            "eot_token": tok.eot_token,
            "dtype": dtype.name,
            "documents_separated_by": "one end-of-text token between documents",
            "source": {
                **src.to_meta(),
                "requested": name,
                "val_fraction": val_fraction,
                "doc_separator": doc_separator,
            },
            "splits": split_meta,
        }
        write_json(tmp / META_FILE, meta)
        fsync_dir(tmp)
        _install(tmp, target)
    except OSError as exc:
        encoder.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DataError(
                f"no space left on the device while writing {tmp}", "free disk space and prepare again"
            ) from None
        raise
    except BaseException:
        encoder.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    encoder.close()
    return PrepareResult(plan.name, target, False, meta, time.perf_counter() - started, notes)


def _existing(workspace: Workspace, name: str, target: Path) -> PreparedDataset:
    if not (target / META_FILE).is_file():
        raise UsageError(
            f"{target} exists but is not a prepared dataset (no {META_FILE})",
            "pass --force to replace it, or choose another name with --as NAME",
        )
    return open_dataset(workspace, name)


def _check_rerun(existing: PreparedDataset, tok: Tokenizer, requested: list[str] | None) -> None:
    if existing.tokenizer_identity != tok.identity:
        raise UsageError(
            f"dataset '{existing.name}' is already prepared with tokenizer "
            f"{existing.tokenizer_identity.get('name')} "
            f"(sha256 {existing.tokenizer_identity.get('sha256', '')[:12]}…), not {tok.name} "
            f"(sha256 {tok.identity['sha256'][:12]}…)",
            "pass --force to rebuild it with the new tokenizer, or --as NAME to keep both",
        )
    missing = [s for s in requested or [] if s not in existing.splits]
    if missing:
        raise UsageError(
            f"dataset '{existing.name}' is prepared without split(s) {', '.join(missing)} "
            f"(it has {', '.join(existing.splits)})",
            f"pass --force to rebuild it with --splits {','.join(dict.fromkeys(existing.splits + missing))}",
        )
