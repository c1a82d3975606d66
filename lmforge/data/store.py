"""Prepared datasets on disk: ``datasets/<name>/{train,validation,test}.bin`` + ``meta.json``.

A ``.bin`` file is a flat array of token ids (``uint16`` when the vocabulary
fits, else ``uint32``), documents separated by one end-of-text token, read by
memory map. ``meta.json`` says how to read it and what it holds::

    {"format_version": 1, "tokenizer": {"name": "gpt2", "sha256": "..."},
     "vocab_size": 50257, "eot_token": 50256, "dtype": "uint16",
     "splits": {"validation": {"tokens": ..., "documents": ..., "bytes": ...,
                               "words": ..., "source": ..., "sha256": ...}}}

``bytes`` and ``words`` describe the source text (UTF-8 bytes, and
``len(text.split())``) so evaluation can report bits per byte and word-level
perplexity.

Since lmforge 0.1 each split also records ``"doc_offsets": "<split>.docs.npy"``
(the UTF-8 offset of every document's start, then the total), and the
validation and test splits keep their text as tokenized in ``"text":
"<split>.text"``, so evaluation can rebuild the documents (``documents``).
Both keys are optional: a dataset prepared before them still loads and trains;
only what needs the documents asks for a new prepare.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.data.tokens import ShardedTokens
from lmforge.errors import DataError, NotFoundError, UsageError
from lmforge.units import is_count
from lmforge.workspace import Workspace

META_FILE = "meta.json"
FORMAT_VERSION = 1
_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def meta_header(name: str, tokenizer, dtype: str, documents_separated_by: str) -> dict:
    """The fields every dataset's ``meta.json`` begins with, prepared or imported; ``tokenizer``
    is a ``lmforge.data.tokenizer.Tokenizer`` (its identity, vocabulary size, end-of-text id)."""
    from lmforge import __version__
    from lmforge.units import now_iso

    return {
        "format": "lmforge-dataset",
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": now_iso(),
        "lmforge_version": __version__,
        "tokenizer": tokenizer.identity,
        "vocab_size": tokenizer.vocab_size,
        "eot_token": tokenizer.eot_token,
        "dtype": dtype,
        "documents_separated_by": documents_separated_by,
    }


# (path, size, mtime_ns) -> max id, so a large split is scanned once per process
_MAX_ID_CACHE: dict[tuple[str, int, int], int] = {}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise DataError(f"vocabulary of {vocab_size} ids does not fit uint32")


def _fix_hint(name: str) -> str:
    return f"prepare it again: lmforge data prepare {name} --force"


def _shell_word(value: str) -> str:
    """``value`` as one shell word, newlines and tabs written as ``--doc-separator`` reads them."""
    import shlex

    return shlex.quote(value.replace("\n", "\\n").replace("\t", "\\t"))


def prepare_command(meta: dict, name: str, **changes: object) -> str:
    """The ``lmforge data prepare`` command that made dataset ``name`` (from ``meta.json``),
    with ``changes`` (option -> value; ``None`` drops an option, ``True`` is a flag), ending
    in ``--force``: a hint to rebuild it keeps every option it was prepared with."""
    source = meta.get("source") or {}
    options = dict(meta.get("prepare") or {})
    if not options:  # prepared before meta.json recorded its options
        options = {
            "--tokenizer": (meta.get("tokenizer") or {}).get("name"),
            "--doc-separator": source.get("doc_separator"),
            "--val-fraction": source.get("val_fraction"),
        }
    target = options.pop("name", None) or source.get("requested") or name
    options["--as"] = name
    options.update(changes)
    if options.get("--tokenizer") == "gpt2":
        options.pop("--tokenizer")
    words = ["lmforge", "data", "prepare", _shell_word(str(target))]
    for flag, value in options.items():
        if value is None or value is False:
            continue
        words.append(flag if value is True else f"{flag} {_shell_word(str(value))}")
    return " ".join([*words, "--force"])


@dataclass
class PreparedDataset:
    name: str
    path: Path
    meta: dict

    @property
    def splits(self) -> list[str]:
        return list(self.meta.get("splits", {}))

    @property
    def tokenizer_identity(self) -> dict:
        return dict(self.meta["tokenizer"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_token(self) -> int:
        return int(self.meta["eot_token"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_DTYPES[self.meta["dtype"]])

    def split_meta(self, split: str) -> dict:
        """tokens, documents, bytes, words, source and sha256 of one split."""
        self._require(split)
        return dict(self.meta["splits"][split])

    def split_path(self, split: str) -> Path:
        """The token file of a one-shard split (the first shard's of a sharded one)."""
        return self.path / self.shard_entries(split)[0]["file"]

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    def _require(self, split: str) -> None:
        if split not in self.meta.get("splits", {}):
            have = ", ".join(self.splits) or "none"
            raise UsageError(
                f"dataset '{self.name}' has no '{split}' split (it has {have})",
                f"prepare it with: {self.missing_split_command(split)}",
            )

    def missing_split_command(self, split: str) -> str:
        """A prepare command that gives this dataset ``split`` too. WikiText has every split
        (``--splits``); another source's validation comes from holding documents out of train."""
        source = self.meta.get("source") or {}
        kind = str(source.get("kind", ""))
        options = self.meta.get("prepare") or {}
        held_out = options.get("--val-fraction") or options.get("--val-tokens") or source.get("val_fraction")
        if split == "validation" and not kind.startswith("wikitext") and not held_out:
            return prepare_command(self.meta, self.name, **{"--splits": None, "--val-fraction": 0.05})
        wanted = ",".join(dict.fromkeys([*self.splits, split]))
        return prepare_command(self.meta, self.name, **{"--splits": wanted})

    def documents(self, split: str) -> list[str]:
        """The split's documents, exactly as they were tokenized (the text is checked
        against the sha256 in ``meta.json``). A ``DataError`` that says how to get them
        when the dataset does not keep them (train, or a dataset prepared before)."""
        self._require(split)
        entry = self.meta["splits"][split]
        again = f"prepare it again: {prepare_command(self.meta, self.name)}"
        if "text" not in entry or "doc_offsets" not in entry:
            why = (
                "lmforge does not keep the text of a train split"
                if split == "train" and "doc_offsets" in entry
                else "it was prepared before lmforge kept the text of its documents"
            )
            raise DataError(
                f"dataset '{self.name}' has no document text for split '{split}': {why}",
                again if split != "train" else "evaluate a validation or test split (--split test)",
            )
        text_path, offsets_path = self.path / entry["text"], self.path / entry["doc_offsets"]
        try:
            raw = text_path.read_bytes()
            offsets = np.load(offsets_path)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the documents of split '{split}': {exc}", again) from None
        if hashlib.sha256(raw).hexdigest() != entry.get("sha256") or offsets[-1] != len(raw):
            raise DataError(f"{text_path} does not match {META_FILE} (changed or truncated)", again)
        return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

    def shard_entries(self, split: str) -> list[dict]:
        """``{file, tokens, sha256}`` of each token file of ``split``, in order; a dataset
        prepared before shards is one shard (its ``file``, no checksum)."""
        self._require(split)
        entry = self.meta["splits"][split]
        return entry.get("shards") or [{"file": entry.get("file", f"{split}.bin"), "tokens": entry["tokens"]}]

    def tokens(self, split: str) -> np.memmap | ShardedTokens:
        """The split's token ids: a read-only memory map, or ``ShardedTokens`` over one per
        shard. Checked against ``meta.json``: file sizes, dtype, every id below
        ``vocab_size`` and each shard's sha256 (read once per process)."""
        self._require(split)
        count = int(self.meta["splits"][split]["tokens"])
        if count == 0:
            raise DataError(f"split '{split}' of dataset '{self.name}' holds no tokens", _fix_hint(self.name))
        shards = [self._shard(shard) for shard in self.shard_entries(split)]
        if sum(len(s) for s in shards) != count:
            raise DataError(
                f"the shards of split '{split}' of dataset '{self.name}' do not add up to its {count} tokens",
                _fix_hint(self.name),
            )
        return shards[0] if len(shards) == 1 else ShardedTokens(shards)

    def _shard(self, shard: dict) -> np.memmap:
        count = int(shard["tokens"])
        path = self.path / shard["file"]
        if not path.is_file():
            raise DataError(f"token file {path} is missing", _fix_hint(self.name))
        dtype = self.dtype
        stat = path.stat()
        if stat.st_size != count * dtype.itemsize:
            raise DataError(
                f"token file {path} is truncated or corrupt: {stat.st_size} bytes, expected "
                f"{count * dtype.itemsize} ({count} tokens of {dtype.name})",
                _fix_hint(self.name),
            )
        array = np.memmap(path, dtype=dtype, mode="r", shape=(count,))
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _MAX_ID_CACHE:
            top, digest = 0, hashlib.sha256()
            step = 1 << 24  # scan in 16M-token pieces: memory stays flat
            for start in range(0, count, step):
                piece = array[start : start + step]
                top = max(top, int(piece.max()))
                if "sha256" in shard:
                    digest.update(piece.tobytes())
            if top < self.vocab_size and "sha256" in shard and digest.hexdigest() != shard["sha256"]:
                raise DataError(
                    f"token file {path} changed after it was prepared (its sha256 differs from {META_FILE})",
                    _fix_hint(self.name),
                )
            _MAX_ID_CACHE[key] = top
        if _MAX_ID_CACHE[key] >= self.vocab_size:
            raise DataError(
                f"token file {path} holds id {_MAX_ID_CACHE[key]}, "
                f"outside the vocabulary of {self.vocab_size}",
                _fix_hint(self.name),
            )
        return array

    def summary(self) -> dict:
        """One row of ``data list`` / the body of ``data info --json``."""
        return {
            "name": self.name,
            "path": str(self.path),
            "tokenizer": self.tokenizer_identity,
            "vocab_size": self.vocab_size,
            "eot_token": self.eot_token,
            "dtype": self.meta["dtype"],
            "size_on_disk": self.size_on_disk(),
            "created": self.meta.get("created"),
            "source": self.meta.get("source"),
            "splits": {s: self.split_meta(s) for s in self.splits},
        }


def _shards_ok(shards: object) -> bool:
    return isinstance(shards, list) and all(
        isinstance(s, dict)
        and is_count(s.get("tokens"))
        and isinstance(s.get("file"), str)
        and "/" not in s["file"]
        for s in shards
    )


def _splits_ok(splits: object) -> bool:
    return isinstance(splits, dict) and all(
        isinstance(s, dict)
        and is_count(s.get("tokens"))
        and isinstance(s.get("file", ""), str)
        and _shards_ok(s.get("shards", []))
        for s in splits.values()
    )


# (key, check, what it must be): what opening, listing and training read of meta.json
_META_SCHEMA = (
    ("tokenizer", lambda v: isinstance(v, dict), "a table"),
    ("vocab_size", lambda v: is_count(v) and v > 0, "a positive integer"),
    ("eot_token", is_count, "a token id"),
    ("dtype", lambda v: isinstance(v, str), "a string"),
    ("splits", _splits_ok, "split -> {tokens, file}"),
)


def _read_meta(path: Path, name: str) -> dict:
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {meta_path}: {exc}", _fix_hint(name)) from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path} is not a JSON object", _fix_hint(name))
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{meta_path} has format version {version}; this lmforge reads version {FORMAT_VERSION}",
            _fix_hint(name),
        )
    for key in ("tokenizer", "vocab_size", "eot_token", "dtype", "splits"):
        if key not in meta:
            raise DataError(f"{meta_path} lacks '{key}'", _fix_hint(name))
    for key, ok, what in _META_SCHEMA:
        if not ok(meta[key]):
            got = f"{meta[key]!r}"[:60]
            raise DataError(f"{meta_path} is damaged: {key!r} must be {what}, got {got}", _fix_hint(name))
    if meta["dtype"] not in _DTYPES:
        raise DataError(f"{meta_path} has unknown dtype {meta['dtype']!r}", _fix_hint(name))
    if meta["vocab_size"] > np.iinfo(_DTYPES[meta["dtype"]]).max + 1:
        raise DataError(
            f"{meta_path}: vocabulary {meta['vocab_size']} does not fit {meta['dtype']}", _fix_hint(name)
        )
    return meta


def _prepared_names(workspace: Workspace) -> list[str]:
    # temporary folders of a running or crashed prepare start with "." and are never datasets
    return [n for n in workspace.dataset_names() if not n.startswith(".")]


def open_dataset(workspace: Workspace, name: str) -> PreparedDataset:
    """The prepared dataset ``name``; ``NotFoundError`` listing the prepared ones."""
    path = workspace.dataset_dir(name)
    if name.startswith(".") or "/" in name or not (path / META_FILE).is_file():
        known = _prepared_names(workspace)
        listing = f"prepared: {', '.join(known)}" if known else "no dataset is prepared yet"
        raise NotFoundError(
            f"unknown dataset '{name}' in {workspace.datasets_dir} ({listing})",
            unknown_dataset_hint(name, known),
        )
    return PreparedDataset(name, path, _read_meta(path, name))


def unknown_dataset_hint(name: str, prepared: list[str]) -> str:
    """What to do about a dataset ``name`` that is not prepared: prepare it when ``data
    prepare`` knows the name; else the closest prepared name (a typo: ``wikitext2``); else
    the closest name ``data prepare`` knows; else how to prepare a corpus under that name."""
    import difflib

    from lmforge.data.wikitext import WIKITEXT_VARIANTS, canonical_wikitext_name

    if canonical_wikitext_name(name) or "/" in name or Path(name).expanduser().exists():
        return f"prepare it with: lmforge data prepare {name}"
    close = difflib.get_close_matches(name, prepared, n=1, cutoff=0.75)
    if close:
        return f"did you mean '{close[0]}'? `lmforge data list` shows the prepared datasets"
    known = difflib.get_close_matches(name.lower(), list(WIKITEXT_VARIANTS), n=1, cutoff=0.75)
    if known:
        return f"did you mean '{known[0]}'? Prepare it with: lmforge data prepare {known[0]}"
    return f"prepare a corpus under this name with: lmforge data prepare FILE-OR-HUB-ID --as {name}"


def list_datasets(workspace: Workspace, errors: list[tuple[str, str]] | None = None) -> list[PreparedDataset]:
    """The prepared datasets, by name. One with unreadable metadata is left out; pass
    ``errors`` to collect ``(name, message)`` for those."""
    found = []
    for name in _prepared_names(workspace):
        try:
            found.append(open_dataset(workspace, name))
        except DataError as exc:
            if errors is not None:
                errors.append((name, exc.message))
    return found


def check_tokenizer_match(dataset_identity: dict, other_identity: dict, what: str) -> None:
    """Raise when ``what`` (e.g. "checkpoint runs/x/best") uses another tokenizer than the data."""
    if dataset_identity.get("name") == other_identity.get("name") and dataset_identity.get(
        "sha256"
    ) == other_identity.get("sha256"):
        return
    raise UsageError(
        f"tokenizer mismatch: the dataset was tokenized with {_ident(dataset_identity)}, "
        f"but {what} uses {_ident(other_identity)}",
        "prepare the data with the same tokenizer (lmforge data prepare NAME --tokenizer ... --as NEW), "
        "or use a matching checkpoint",
    )


def _ident(identity: dict) -> str:
    return f"{identity.get('name', '?')} (sha256 {str(identity.get('sha256', '?'))[:12]}…)"
