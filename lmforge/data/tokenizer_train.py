"""``lmforge tokenizer train/list/show``: a byte-level BPE trained on a corpus, kept in the
workspace's ``tokenizers/`` and used by name like ``gpt2`` and ``bytes``.

A trained tokenizer is two files: ``NAME.tiktoken`` (its ranks, what every command loads
into tiktoken) and ``NAME.json`` (split pattern, special tokens, content hash, the corpus
it was trained on, bytes per token on held-out text). The text comes from any source
``data prepare`` reads, streamed from its train split with a character budget; every
``HOLDOUT_EVERY``-th document is held out of training to measure bytes per token.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.data.bpe import train_bpe_ranks
from lmforge.data.tokenizer import (
    ENDOFTEXT,
    META_SUFFIX,
    SPLIT_PATTERNS,
    TOKENIZER_NAMES,
    Tokenizer,
    get_tokenizer,
    gpt2_if_available,
    read_tokenizer_meta,
    workspace_ranks_file,
    workspace_tokenizer_names,
    write_workspace_tokenizer,
)
from lmforge.errors import DataError, NotFoundError, UsageError
from lmforge.fileio import write_json_atomic
from lmforge.units import now_iso
from lmforge.workspace import Workspace, is_valid_name

FORMAT_VERSION = 1
HOLDOUT_EVERY = 20  # every 20th document is held out of training, for bytes per token
HOLDOUT_MAX_CHARS = 2_000_000
_SCALES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_char_count(text: str | int | None) -> int | None:
    """``2B`` -> 2_000_000_000, ``500M``, ``10k``, ``12345``; None stays None (no budget)."""
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", text.replace("_", ""))
    if not match or float(match[1]) * _SCALES[match[2].lower()] < 1:
        raise UsageError(
            f"--max-chars {text!r} is not a positive count", "e.g. --max-chars 2B, 500M or 10000"
        )
    return int(float(match[1]) * _SCALES[match[2].lower()])


@dataclass
class CorpusStats:
    """What went into training and into the held-out sample."""

    description: str = ""
    split: str = ""
    documents: int = 0
    chars: int = 0
    held_out: list[str] = field(default_factory=list)
    held_out_chars: int = 0


def _source_documents(
    source: str, source_dir: str | None, text_column: str, separator: str | None
) -> tuple[Iterator[str], str, str]:
    """The documents of ``source``'s train split (else its first split), its description, the split."""
    from lmforge.data.plan import plan_source

    plan = plan_source(
        source, source=source_dir, alias=None, text_column=text_column, doc_separator=separator
    )
    if not plan.wikitext and source_dir is None and not Path(source).expanduser().exists():
        # a Hub dataset id: streamed, so a character budget reads only what it needs
        return hub_documents(source, text_column), f"{source} (train, streamed)", "train"
    src, wanted = plan.build(None)
    split = "train" if "train" in src.splits else wanted[0]
    return src.splits[split].documents(), f"{src.description} ({split})", split


def hub_documents(dataset_id: str, text_column: str) -> Iterator[str]:
    """The train split's ``text_column`` of a Hub dataset, row by row, through ``datasets``
    streaming (nothing is downloaded beyond what is read); one-line errors offline."""
    from lmforge.data import hub

    if not hub.hub_offline() and (reason := hub._hub_reachable()) is not None:
        raise hub._hub_unreachable(dataset_id, reason, wikitext=False)
    import datasets

    try:
        rows = datasets.load_dataset(dataset_id, split="train", streaming=True)
    except (ConnectionError, OSError) as exc:
        raise hub._hub_unreachable(dataset_id, str(exc).splitlines()[0][:200], wikitext=False) from None
    except Exception as exc:  # DatasetNotFoundError, no train split, ...
        first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise DataError(
            f"cannot stream {dataset_id} from the Hub: {type(exc).__name__}: {first_line}",
            "check the dataset id on huggingface.co",
        ) from None
    yield from hub.row_texts(rows, dataset_id, text_column)


def training_texts(documents: Iterator[str], max_chars: int | None, stats: CorpusStats) -> Iterator[str]:
    """``documents`` up to ``max_chars`` characters, the held-out ones set aside in ``stats``."""
    for i, doc in enumerate(documents):
        if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 and stats.held_out_chars < HOLDOUT_MAX_CHARS:
            stats.held_out.append(doc)
            stats.held_out_chars += len(doc)
            continue
        if max_chars is not None and stats.chars + len(doc) > max_chars:
            doc = doc[: max_chars - stats.chars]
        if doc:
            stats.documents += 1
            stats.chars += len(doc)
            yield doc
        if max_chars is not None and stats.chars >= max_chars:
            return


def bytes_per_token(tok: Tokenizer, texts: list[str]) -> dict[str, int | float] | None:
    """UTF-8 bytes per token of ``tok`` over ``texts`` (higher: the tokenizer packs more text)."""
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    tokens = sum(len(tok.encode_array(t)) for t in texts)
    return (
        {"bytes": nbytes, "tokens": tokens, "bytes_per_token": round(nbytes / tokens, 4)} if tokens else None
    )


@dataclass
class TrainedTokenizer:
    name: str
    path: Path  # the ranks file
    meta: dict[str, Any]


def check_new_name(workspace: Workspace, name: str, force: bool) -> None:
    if name in TOKENIZER_NAMES or not is_valid_name(name):
        raise UsageError(
            f"cannot name a tokenizer {name!r}: "
            + ("that name is built in" if name in TOKENIZER_NAMES else "use letters, digits, '.', '_', '-'"),
            "pick another NAME, e.g. wiki-32k",
        )
    if workspace_ranks_file(workspace, name).exists() and not force:
        raise UsageError(
            f"tokenizer '{name}' exists ({workspace_ranks_file(workspace, name)})",
            "pick another NAME, or pass --force to replace it (data prepared with it must be prepared again)",
        )


def special_token_list(special: list[str] | None) -> list[str]:
    """The special tokens in id order: the user's, then end-of-text last (always there)."""
    specials = [t for t in dict.fromkeys(special or []) if t != ENDOFTEXT]
    if any(not t for t in specials):
        raise UsageError("--special must not be empty")
    return [*specials, ENDOFTEXT]


def train_tokenizer(
    workspace: Workspace,
    name: str,
    source: str,
    *,
    vocab_size: int = 32768,
    max_chars: int | None = None,
    special: list[str] | None = None,
    pattern: str = "gpt2",
    source_dir: str | None = None,
    text_column: str = "text",
    doc_separator: str | None = None,
    force: bool = False,
) -> TrainedTokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (special tokens included) on ``source``
    and save it as ``tokenizers/NAME.tiktoken`` + ``NAME.json``."""
    check_new_name(workspace, name, force)
    if pattern not in SPLIT_PATTERNS:
        raise UsageError(f"unknown --pattern {pattern!r}", f"use one of {', '.join(SPLIT_PATTERNS)}")
    if vocab_size > 2**32 - 1:
        raise UsageError(f"--vocab-size {vocab_size} is too large", "use at most 4294967295 (e.g. 32768)")
    if max_chars is not None and max_chars < 1:
        raise UsageError(f"--max-chars must be positive, got {max_chars}")
    specials = special_token_list(special)
    documents, description, split = _source_documents(source, source_dir, text_column, doc_separator)
    stats = CorpusStats(description=description, split=split)
    started = time.perf_counter()
    ranks = train_bpe_ranks(
        training_texts(documents, max_chars, stats), vocab_size, SPLIT_PATTERNS[pattern], len(specials)
    )
    seconds = time.perf_counter() - started
    if stats.chars == 0:
        raise UsageError(f"{description} has no text to train on", "check the source")
    extra = {
        "format_version": FORMAT_VERSION,
        "created_at": now_iso(),
        "corpus": {
            "source": description,
            "documents": stats.documents,
            "chars": stats.chars,
            "max_chars": max_chars,
        },
        "training": {"seconds": round(seconds, 2), "requested_vocab_size": vocab_size},
    }
    pat = SPLIT_PATTERNS[pattern]
    ranks_path = write_workspace_tokenizer(workspace, name, ranks, pat, specials, extra)
    meta = read_tokenizer_meta(ranks_path.with_suffix(META_SUFFIX))
    tok = get_tokenizer(name, workspace=workspace)
    # no held-out documents (a source of fewer than HOLDOUT_EVERY): nothing to measure on
    meta["held_out"] = _held_out_stats(workspace, tok, stats.held_out)
    write_json_atomic(ranks_path.with_suffix(META_SUFFIX), meta)
    return TrainedTokenizer(name, ranks_path, meta)


def _held_out_stats(workspace: Workspace, tok: Tokenizer, texts: list[str]) -> dict[str, Any]:
    if not texts:
        return {}
    result: dict[str, Any] = {"documents": len(texts), **(bytes_per_token(tok, texts) or {})}
    gpt2 = gpt2_if_available(workspace)
    if gpt2 is not None:
        theirs = bytes_per_token(gpt2, texts)
        if theirs:
            result["gpt2_tokens"] = theirs["tokens"]
            result["gpt2_bytes_per_token"] = theirs["bytes_per_token"]
    return result


# --------------------------------------------------------------------------- list / show


def tokenizer_summary(workspace: Workspace, name: str) -> dict[str, Any]:
    """What ``tokenizer show NAME`` prints: vocabulary, special tokens, pattern, hash, corpus,
    bytes per token on held-out text (next to GPT-2's when it was available)."""
    if name in TOKENIZER_NAMES:
        tok = get_tokenizer(name, workspace=workspace)
        return {
            "name": name,
            "kind": "built in",
            "vocab_size": tok.vocab_size,
            "special_tokens": tok.special_tokens,
            "pattern": "gpt2" if name == "gpt2" else "bytes",
            "sha256": tok.identity["sha256"],
            "source": tok.source,
        }
    ranks_path = workspace_ranks_file(workspace, name)
    if not ranks_path.is_file():
        known = ", ".join([*TOKENIZER_NAMES, *workspace_tokenizer_names(workspace)])
        raise NotFoundError(
            f"unknown tokenizer '{name}' (known: {known})",
            f"train it with lmforge tokenizer train {name} SOURCE",
        )
    meta_path = ranks_path.with_suffix(META_SUFFIX)
    if not meta_path.is_file():  # a bare ranks file (copied in, or a model's, saved by ckpt import)
        tok = get_tokenizer(name, workspace=workspace)
        return {
            "name": name,
            "kind": "ranks file",
            "vocab_size": tok.vocab_size,
            "special_tokens": tok.special_tokens,
            "pattern": "gpt2",
            "sha256": tok.identity["sha256"],
            "source": str(ranks_path),
        }
    meta = read_tokenizer_meta(meta_path)
    kind = "imported" if "imported_from" in meta else "trained"  # saved by ckpt import from an export
    return {"kind": kind, **meta, "source": str(ranks_path)}


def list_tokenizers(workspace: Workspace) -> list[dict[str, Any]]:
    """One summary per tokenizer: the built-in ones (when loadable) and the workspace's."""
    rows = []
    for name in [*TOKENIZER_NAMES, *workspace_tokenizer_names(workspace)]:
        if name == "gpt2" and gpt2_if_available(workspace) is None:
            rows.append(
                {"name": "gpt2", "kind": "built in", "vocab_size": 50257, "source": "not here (offline)"}
            )
            continue
        rows.append(tokenizer_summary(workspace, name))
    return rows
