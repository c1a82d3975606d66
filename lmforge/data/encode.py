"""Tokens from documents, in order and in bounded memory: the encoding half of a prepare.

Documents are grouped into batches of about a megabyte (``BATCH_BYTES``),
encoded on ``num_proc`` worker processes (forked, on Linux) or threads
(elsewhere: tiktoken releases the GIL while it encodes), and appended to the
split's ``.bin`` file in order (and, for the evaluation splits, the text itself to
``.text``, with each document's offset in ``.docs.npy``). At most ``2 * num_proc`` batches are in flight,
so memory does not grow with the corpus. ``SplitWriter`` also counts what
``meta.json`` records per split: tokens, documents, UTF-8 bytes, words and the
text's sha256.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmforge.data.sources import Continuation
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import DataError

if TYPE_CHECKING:
    from lmforge.data.prepare import PrepareProgress

BATCH_BYTES = 1 << 20  # text per encoding task: big enough to amortize, small enough to bound memory
# Below this many bytes of text, encode in the calling thread: starting workers costs more.
PARALLEL_MIN_BYTES = 4 << 20

_WORKER_TOKENIZER: Tokenizer | None = None


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_CHECK_S = 1.0


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker end when the prepare that started it ends, even by SIGKILL (which
    runs no clean-up): otherwise it waits on its task pipe forever, holding the deleted
    staging files. Linux: the kernel sends SIGKILL on the parent's death (``PR_SET_PDEATHSIG``).
    Everywhere: a daemon thread checks once a second that the parent is still ours."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the thread below still ends us
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="lmforge-parent-watch", daemon=True).start()


def _init_worker(tok: Tokenizer, parent_pid: int) -> None:
    global _WORKER_TOKENIZER
    _die_with_parent(parent_pid)
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


def encode_batch(
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


class Encoder:
    """Runs ``encode_batch`` inline, or on ``num_proc`` worker processes (forked, on
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
                        initargs=(tok, os.getpid()),
                    )
            else:
                self.pool = ThreadPoolExecutor(num_proc, thread_name_prefix="lmforge-encode")
                self.threaded = True

    def submit(self, items, dtype_name: str, vocab_size: int) -> Future:
        if self.pool is None:
            future: Future = Future()
            future.set_result(encode_batch(items, dtype_name, vocab_size, self.tok))
            return future
        if self.threaded:
            return self.pool.submit(_encode_batch_threaded, items, dtype_name, vocab_size, self.tok)
        return self.pool.submit(encode_batch, items, dtype_name, vocab_size)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def worth_parallel(split_bytes: Iterable[int | None]) -> bool:
    """Whether workers pay for their start: some split's size is unknown (the Hub, parquet),
    or there are at least ``PARALLEL_MIN_BYTES`` of text in all."""
    sizes = list(split_bytes)
    return any(b is None for b in sizes) or sum(b for b in sizes if b) >= PARALLEL_MIN_BYTES


@dataclass
class SplitWriter:
    """One split's token file and what ``meta.json`` records of it. With ``keep_text``
    the split's text is also written, as it was tokenized, to ``<split>.text`` beside
    the token file; every split records the UTF-8 offset of each document (see
    ``store.PreparedDataset.documents``)."""

    split: str
    path: Path
    dtype: np.dtype
    vocab_size: int
    keep_text: bool = False
    tokens: int = 0
    documents: int = 0
    bytes: int = 0
    words: int = 0

    def __post_init__(self) -> None:
        self._hash = hashlib.sha256()
        self._file = open(self.path, "wb")
        self._text = open(self.text_path, "wb") if self.keep_text else None
        self._doc_starts = array("q")  # 8 bytes a document: bounded even for millions of rows

    @property
    def text_path(self) -> Path:
        return self.path.with_suffix(".text")

    @property
    def offsets_path(self) -> Path:
        return self.path.with_suffix(".docs.npy")

    def add_text(self, raw: bytes, new_doc: bool = False) -> None:
        if new_doc:
            self.documents += 1
            self._doc_starts.append(self.bytes)
        self._hash.update(raw)
        if self._text is not None:
            self._text.write(raw)
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
        for f in (self._file, self._text):
            if f is not None and not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()

    def write_offsets(self) -> None:
        """``<split>.docs.npy``: int64 UTF-8 offset of each document's start, then the total."""
        starts = np.array(self._doc_starts, dtype=np.int64)
        with open(self.offsets_path, "wb") as f:
            np.save(f, np.append(starts, np.int64(self.bytes)))
            f.flush()
            os.fsync(f.fileno())

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def _batches(documents: Iterable[str], writer: SplitWriter) -> Iterator[tuple[list[tuple[bytes, bool]], int]]:
    """Group documents into ``BATCH_BYTES`` batches of ``(utf8_text, eot_before)``: an
    end-of-text goes between documents, never before the first one or inside a document.
    Hashes the text on the way (in order); yields ``(batch, utf8_bytes)``."""
    batch: list[tuple[bytes, bool]] = []
    size = nbytes = 0
    for doc in documents:
        if not doc:
            continue
        new_doc = not isinstance(doc, Continuation) or writer.documents == 0
        raw = doc.encode("utf-8")
        batch.append((raw, new_doc and writer.documents > 0))
        writer.add_text(raw, new_doc)
        nbytes += len(raw)
        size += len(raw)
        if size >= BATCH_BYTES:
            yield batch, nbytes
            batch, size, nbytes = [], 0, 0
    if batch:
        yield batch, nbytes


def write_split(
    documents: Iterable[str], writer: SplitWriter, encoder: Encoder, progress: PrepareProgress
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
