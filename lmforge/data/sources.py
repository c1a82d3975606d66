"""What every source of text is: split names, ``Source``/``SplitSource``, streams of documents.

A source maps split names (``train``, ``validation``, ``test``) to
``SplitSource`` objects that stream documents without ever holding a whole
split in memory. The sources themselves live beside this module:

- ``wikitext``: WikiText from its raw files, their zip, a local copy of the
  Hub's parquet layout, or the Hub; one document per article.
- ``local``: ``.txt`` files or folders (one document per file, or documents
  separated by a marker string) and parquet folders (one document per row).
- ``hub``: any Hugging Face dataset with a text column, one document per row,
  and the fast reachability check in front of every Hub download.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import DataError

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation", "eval": "validation"}
READ_BLOCK_CHARS = 1 << 20


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
    # "wikitext-raw", "wikitext-tokens", "wikitext-zip", "wikitext-parquet", "wikitext-hub",
    # "text", "parquet", "hub"
    kind: str
    description: str
    splits: dict[str, SplitSource]

    def to_meta(self) -> dict:
        return {"kind": self.kind, "description": self.description}


class Continuation(str):
    """More text of the document before it (a long document is streamed in pieces)."""


def open_text(path: Path) -> io.TextIOWrapper:
    # newline="" keeps "\r" and "\r\n" as they are: the text must round-trip byte for byte.
    return open(path, encoding="utf-8", newline="")


def read_blocks(stream: io.TextIOBase, what: str) -> Iterator[str]:
    """``stream`` in blocks of ``READ_BLOCK_CHARS``; a one-line error when it is not UTF-8."""
    try:
        while block := stream.read(READ_BLOCK_CHARS):
            yield block
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})", "check the file"
        ) from None
