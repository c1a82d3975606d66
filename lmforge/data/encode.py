"""Tokens from documents, in order and in bounded memory: the encoding half of a prepare.

Documents are grouped into batches of about a megabyte (``BATCH_BYTES``),
encoded on ``num_proc`` worker processes (forked, on Linux) or threads
(elsewhere: tiktoken releases the GIL while it encodes), and handed in order to
the split's ``shards.SplitShards``, which writes the token shards (and the text,
document offsets and counts that ``meta.json`` records). At most ``2 * num_proc``
batches are in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from lmforge.data.shards import Batch, SplitShards
from lmforge.data.sources import Continuation
from lmforge.data.tokenizer import Tokenizer

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
    """Encode ``(utf8_text, eot_before, ...)`` items into one array of ``dtype_name``; count words.

    Returns ``(tokens, words, max_id)``; ``tokens`` is None when an id would not fit
    (the caller raises: ids are never cast silently). Runs in a worker process."""
    tok = tok or _WORKER_TOKENIZER
    dtype = np.dtype(dtype_name)
    arrays, words = [], 0
    eot = np.array([tok.eot_token], dtype=np.uint32)
    for raw, eot_before, *_ in items:
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
    for raw, eot_before, *_ in items:
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
                # start the workers now, while this process is small: forked later, each would
                # hold a copy-on-write view of whatever the source reader has in memory by then
                self.pool.submit(int).result()
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


def _batches(documents: Iterator[str], position: int, documents_so_far: int) -> Iterator[Batch]:
    """Group documents into ``BATCH_BYTES`` batches of ``(utf8_text, eot_before, new_doc)``: an
    end-of-text goes between documents, never before the first one or inside a document.
    ``position`` counts the items read from ``documents`` (empty ones too), as a resume counts them."""
    items: list[tuple[bytes, bool, bool]] = []
    size = 0
    docs = documents_so_far
    for doc in documents:
        position += 1
        if not doc:
            continue
        new_doc = not isinstance(doc, Continuation) or docs == 0
        raw = doc.encode("utf-8")
        items.append((raw, new_doc and docs > 0, new_doc))
        docs += new_doc
        size += len(raw)
        if size >= BATCH_BYTES:
            yield Batch(items, size, position)
            items, size = [], 0
    if items:
        yield Batch(items, size, position)


def write_split(
    documents: Iterable[str], shards: SplitShards, encoder: Encoder, progress: PrepareProgress
) -> bool:
    """Encode ``documents`` in order into ``shards``, from its ``position`` on (the items
    before it are read and skipped: a resumed prepare), with at most ``2 * num_proc`` batches
    in flight. True when the split stopped at its token budget, False at the end of the text."""
    if shards.budget is not None and shards.tokens >= shards.budget:
        return True  # a resumed split that had already reached its budget
    stream = iter(documents)
    if shards.position:
        next(itertools.islice(stream, shards.position, shards.position), None)  # skip, unencoded
    pending: deque[tuple[Future, Batch]] = deque()
    try:
        for batch in _batches(stream, shards.position, shards.documents):
            pending.append((encoder.submit(batch.items, shards.dtype.name, shards.vocab_size), batch))
            while len(pending) >= 2 * encoder.num_proc:
                future, done = pending.popleft()
                if shards.write(future.result(), done, progress):
                    return True
        while pending:
            future, done = pending.popleft()
            if shards.write(future.result(), done, progress):
                return True
        return False
    except BaseException:
        shards.close()  # the open shard stays .partial: a resume writes it again
        raise
    finally:
        for future, _ in pending:
            future.cancel()
