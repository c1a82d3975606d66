"""One split written as numbered shards, each made atomically, so a prepare can resume.

``SplitShards`` takes encoded batches in order and appends them to the current
shard ``<split>-NNNNN.bin`` (written as ``.partial`` and renamed when full). A
shard is cut after the first batch that brings it to ``shard_tokens`` tokens, so
where shards end depends only on the documents, never on timing: a resumed
prepare cuts them at the same places. Each finished shard records its token
count, the sha256 of its token bytes, the documents, UTF-8 bytes and words of its
text, and ``position``: how many items of the split's document stream had been
read when it ended, where a resumed prepare starts reading again.

``finish`` gives the split's ``meta.json`` entry. A split of one shard is written
as ``<split>.bin``, as before shards existed; every split gets one
``<split>.docs.npy`` and (evaluation splits) one ``<split>.text``.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmforge.errors import DataError

if TYPE_CHECKING:
    from lmforge.data.prepare import PrepareProgress

DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16: a few seconds to write, one memory map each


@dataclass
class Batch:
    """Documents to encode together: ``(utf8_text, eot_before, new_doc)`` items, their UTF-8
    size, and ``end``: the items of the split's document stream read once it is written."""

    items: list[tuple[bytes, bool, bool]]
    nbytes: int
    end: int


def _fsync_close(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


class SplitShards:
    """The shards of one split (see the module docstring). ``done`` are the shards a previous,
    interrupted prepare finished (from ``staging.PartialPrepare``); writing continues after
    them. ``budget``: stop once the split holds that many tokens (``write`` returns True).
    ``on_shard(split, shards)`` is called after each shard is on disk."""

    def __init__(
        self,
        split: str,
        folder: Path,
        dtype: np.dtype,
        vocab_size: int,
        *,
        keep_text: bool,
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
        budget: int | None = None,
        done: list[dict] | None = None,
        on_shard: Callable[[str, list[dict]], None] | None = None,
    ) -> None:
        self.split = split
        self.folder = folder
        self.dtype = dtype
        self.vocab_size = vocab_size
        self.keep_text = keep_text
        self.shard_tokens = shard_tokens
        self.budget = budget
        self.on_shard = on_shard
        self.shards: list[dict] = list(done or [])
        self.tokens = sum(s["tokens"] for s in self.shards)
        self.documents = sum(s["documents"] for s in self.shards)
        self.bytes = sum(s["bytes"] for s in self.shards)
        self.words = sum(s["words"] for s in self.shards)
        self.position = self.shards[-1]["position"] if self.shards else 0
        self._open = False

    def stem(self, index: int) -> str:
        return f"{self.split}-{index:05d}"

    def _start_shard(self) -> None:
        stem = self.stem(len(self.shards))
        self._bin = open(self.folder / f"{stem}.bin.partial", "wb")
        self._text = open(self.folder / f"{stem}.text.partial", "wb") if self.keep_text else None
        self._token_hash, self._text_hash = hashlib.sha256(), hashlib.sha256()
        self._doc_starts = array("q")  # 8 bytes a document: bounded even for millions of rows
        self._n = {"tokens": 0, "documents": 0, "bytes": 0, "words": 0}
        self._open = True

    def write(self, result, batch: Batch, progress: PrepareProgress) -> bool:
        """Append one encoded batch; True when the split has reached its ``budget``."""
        tokens, words, top = result
        if tokens is None:
            # never cast silently: an id that does not fit would wrap around in the token file
            raise DataError(
                f"token id {top} does not fit {self.dtype.name} / vocabulary {self.vocab_size}",
                "the tokenizer and its vocabulary size disagree",
            )
        if not self._open:
            self._start_shard()
        for raw, _, new_doc in batch.items:
            if new_doc:
                self._doc_starts.append(self.bytes)
                self.documents += 1
                self._n["documents"] += 1
            self._text_hash.update(raw)
            if self._text is not None:
                self._text.write(raw)
            self.bytes += len(raw)
            self._n["bytes"] += len(raw)
        data = tokens.tobytes()
        self._bin.write(data)
        self._token_hash.update(data)
        self.tokens += int(tokens.size)
        self.words += words
        self._n["tokens"] += int(tokens.size)
        self._n["words"] += words
        self.position = batch.end
        progress.advance(batch.nbytes, int(tokens.size))
        full = self.budget is not None and self.tokens >= self.budget
        if full or self._n["tokens"] >= self.shard_tokens:
            self._cut()
        return full

    def _cut(self) -> None:
        """Finish the current shard: flushed, renamed into place, recorded, reported."""
        stem = self.stem(len(self.shards))
        _fsync_close(self._bin)
        os.replace(self.folder / f"{stem}.bin.partial", self.folder / f"{stem}.bin")
        entry = {"file": f"{stem}.bin", **self._n, "sha256": self._token_hash.hexdigest()}
        if self._text is not None:
            _fsync_close(self._text)
            os.replace(self.folder / f"{stem}.text.partial", self.folder / f"{stem}.text")
            entry["text"] = f"{stem}.text"
        with open(self.folder / f"{stem}.docs.npy", "wb") as f:
            np.save(f, np.array(self._doc_starts, dtype=np.int64))
            f.flush()
            os.fsync(f.fileno())
        entry.update(
            doc_starts=f"{stem}.docs.npy", text_sha256=self._text_hash.hexdigest(), position=self.position
        )
        self.shards.append(entry)
        self._open = False
        if self.on_shard is not None:
            self.on_shard(self.split, self.shards)

    def close(self) -> None:
        """Close the open shard's files (an interrupted write: the ``.partial`` files stay
        behind, and a resume writes that shard again)."""
        if self._open:
            for f in (self._bin, self._text):
                if f is not None and not f.closed:
                    f.close()
            self._open = False

    def finish(self) -> dict:
        """Cut the last shard and assemble the split: ``meta.json``'s entry for it."""
        if self._open and self._n["tokens"]:
            self._cut()
        self.close()
        starts = [np.load(self.folder / s["doc_starts"]) for s in self.shards]
        offsets = self.folder / f"{self.split}.docs.npy"
        with open(offsets, "wb") as f:
            np.save(f, np.append(np.concatenate(starts or [np.zeros(0, np.int64)]), np.int64(self.bytes)))
            f.flush()
            os.fsync(f.fileno())
        entry = {
            "tokens": self.tokens,
            "documents": self.documents,
            "bytes": self.bytes,
            "words": self.words,
            "sha256": self._text_sha256(),
            "doc_offsets": offsets.name,
        }
        if self.keep_text:
            entry["text"], entry["sha256"] = self._assemble_text()
        if len(self.shards) == 1:
            os.replace(self.folder / self.shards[0]["file"], self.folder / f"{self.split}.bin")
            self.shards[0]["file"] = f"{self.split}.bin"
            entry["file"] = f"{self.split}.bin"
        entry["shards"] = [{k: s[k] for k in ("file", "tokens", "sha256")} for s in self.shards]
        return entry

    def _text_sha256(self) -> str:
        """The sha256 of the split's text. Several shards without their text kept (train): the
        sha256 of their texts' sha256s, in order (the text itself is gone)."""
        if len(self.shards) == 1:
            return self.shards[0]["text_sha256"]
        return hashlib.sha256("".join(s["text_sha256"] for s in self.shards).encode()).hexdigest()

    def _assemble_text(self) -> tuple[str, str]:
        """``<split>.text`` from the shards' texts; its name and sha256."""
        target = self.folder / f"{self.split}.text"
        if len(self.shards) == 1:
            os.replace(self.folder / self.shards[0]["text"], target)
            return target.name, self.shards[0]["text_sha256"]
        digest = hashlib.sha256()
        with open(target, "wb") as out:
            for s in self.shards:
                with open(self.folder / s["text"], "rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        return target.name, digest.hexdigest()

    def leftovers(self) -> list[Path]:
        """The per-shard files that ``finish`` merged (removed once the split is recorded)."""
        names = [s.get("doc_starts") for s in self.shards] + [s.get("text") for s in self.shards]
        return [self.folder / n for n in names if n and (self.folder / n).exists()]
