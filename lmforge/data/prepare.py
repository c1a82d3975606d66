"""``prepare_dataset``: text -> token files + ``meta.json`` in the workspace.

The steps, each in its own module: ``plan`` says what NAME means and which
splits to write; ``encode`` streams each split's documents through the
tokenizer into its ``.bin`` file in bounded memory; ``staging`` is where it is
all written before one rename makes ``datasets/<name>/`` appear, so an
interrupted prepare never looks prepared and ``--force`` keeps the old dataset
until the new one is complete.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lmforge.data import encode
from lmforge.data.encode import Encoder, worth_parallel, write_split
from lmforge.data.files import data_files, is_glob
from lmforge.data.plan import hold_out_first, parse_splits, plan_source, splits_to_write
from lmforge.data.shards import DEFAULT_SHARD_TOKENS, SplitShards
from lmforge.data.sources import SPLITS, Source, SplitSource
from lmforge.data.staging import PartialPrepare, clean_leftovers
from lmforge.data.store import (
    META_FILE,
    PreparedDataset,
    dtype_for_vocab,
    meta_header,
    open_dataset,
    prepare_command,
)
from lmforge.data.tokenizer import Tokenizer, default_num_threads, get_tokenizer, remember_tokenizer_file
from lmforge.errors import DataError, LmforgeError, UsageError
from lmforge.fileio import write_json
from lmforge.workspace import Workspace


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
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    max_tokens: int | None = None,
    val_tokens: int | None = None,
    subset: str | None = None,
    progress: PrepareProgress | None = None,
) -> PrepareResult:
    """Tokenize ``name`` into ``datasets/<alias or name>/`` of ``workspace``.

    ``name`` is ``wikitext-103``/``wikitext-2`` (``-v1`` for the tokenized
    variants; read from ``source`` when given, else from the Hub), a local text
    file or folder, or a Hub dataset id (documents in ``text_column``). Returns
    ``already_prepared=True`` without touching anything when the dataset exists
    (unless ``force``).

    Splits larger than ``shard_tokens`` are written as numbered shards. An interrupted
    prepare leaves ``datasets/.partial-<name>/`` behind; the same call again resumes at its
    first missing shard, with the same result as an uninterrupted prepare. ``max_tokens``
    stops the train split once it holds that many tokens (at the end of a ~1 MB batch);
    ``val_tokens`` holds the first documents of a source without validation out as its
    validation split, up to that many tokens. ``subset`` picks a Hub dataset's subset."""
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
    if shard_tokens < 1:
        raise UsageError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {max_tokens}")
    if val_tokens is not None and val_tokens < 1:
        raise UsageError(f"--val-tokens must be >= 1, got {val_tokens}")
    if val_tokens is not None and val_fraction is not None:
        raise UsageError("--val-tokens and --val-fraction both choose validation documents: give one")
    plan = plan_source(
        name, source=source, alias=alias, text_column=text_column, doc_separator=doc_separator, subset=subset
    )
    if (val_fraction is not None or val_tokens is not None) and plan.wikitext:
        raise UsageError(
            "--val-fraction/--val-tokens are for sources without a validation split; WikiText has one"
        )
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
    options = _prepare_options(name, source, requested, tok, text_column, doc_separator, val_fraction)
    options["--shard-tokens"] = shard_tokens if shard_tokens != DEFAULT_SHARD_TOKENS else None
    options["--max-tokens"] = max_tokens
    options["--val-tokens"] = val_tokens
    options["--subset"] = subset
    if "validation" not in src.splits and val_fraction is None and val_tokens is None and requested is None:
        again = prepare_command({"prepare": options}, plan.name, **{"--val-fraction": 0.05})
        notes.append(f"the source has no validation split: hold out documents with: {again}")
    held = None
    if val_tokens is not None:
        split_docs, held = hold_out_first(
            src, requested or [s for s in SPLITS if s in src.splits], val_tokens
        )
    else:
        split_docs = splits_to_write(src, wanted, requested, val_fraction)

    clean_leftovers(workspace)
    fingerprint = {
        "options": options,
        "tokenizer": tok.identity,
        "batch_bytes": encode.BATCH_BYTES,  # where batches, and so shards, end
        "source_files": _source_stamp(name, source),
    }
    partial = PartialPrepare(workspace, plan.name, fingerprint).open()
    if partial.resumed:
        notes.append(f"resumed the interrupted prepare in {partial.dir}")
    budgets = {"train": max_tokens, **({"validation": val_tokens} if held is not None else {})}
    try:
        with Encoder(tok, num_proc, worth_parallel(p.total_bytes for p in split_docs.values())) as encoder:
            split_meta = _write_splits(
                partial, split_docs, tok, encoder, progress, val_fraction, shard_tokens, budgets, notes, held
            )
        meta = _dataset_meta(plan.name, name, tok, src, split_meta, val_fraction, doc_separator)
        meta["prepare"] = options
        write_json(partial.dir / META_FILE, meta)
        partial.install(target)
    except LmforgeError:
        partial.discard()  # wrong input: nothing worth resuming
        raise
    except BaseException as exc:
        partial.close()  # interrupted: the finished shards stay for the next run to resume from
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DataError(
                f"no space left on the device while writing {partial.dir}",
                "free disk space and run the same command again: it resumes where it stopped",
            ) from None
        raise
    return PrepareResult(plan.name, target, False, meta, time.perf_counter() - started, notes)


def _write_splits(
    partial: PartialPrepare,
    split_docs: dict[str, SplitSource],
    tok: Tokenizer,
    encoder: Encoder,
    progress: PrepareProgress,
    val_fraction: float | None,
    shard_tokens: int,
    budgets: dict[str, int | None],
    notes: list[str],
    held: dict | None = None,
) -> dict[str, dict]:
    """Write each split's shards into ``partial``, in the order of ``SPLITS`` (validation
    first when it is held out of train's first documents, ``held``), skipping what an
    interrupted run finished; their ``meta.json`` entries, in the order of ``SPLITS``."""
    dtype = dtype_for_vocab(tok.vocab_size)
    split_meta = {}
    order = ["validation", "train", "test"] if held is not None else list(SPLITS)
    for split in order:
        if split not in split_docs:
            continue
        part = split_docs[split]
        entry = partial.done_split(split)
        if entry is not None:
            split_meta[split] = entry
            if held is not None and split == "validation":
                held["end"] = entry["source_items"]
            continue
        budget = budgets.get(split)
        # the evaluation splits keep their text, so `eval --protocol harness` can score each
        # document as lm-eval-harness does; train's text is left out (its size, and nothing reads it)
        shards = SplitShards(
            split,
            partial.dir,
            dtype,
            tok.vocab_size,
            keep_text=split != "train",
            shard_tokens=shard_tokens,
            budget=budget,
            done=partial.done_shards(split, dtype.itemsize),
            on_shard=lambda split, done: _shard_done(partial, progress, split, done),
        )
        progress.start_split(split, part.total_bytes, part.description)
        stopped = write_split(part.documents(), shards, encoder, progress)
        if shards.tokens == 0:
            raise DataError(
                f"split '{split}' of {part.description} is empty: no text to tokenize",
                "check the source (empty corpus)"
                + (", or use a larger --val-fraction" if val_fraction is not None else ""),
            )
        if held is not None and split == "validation":
            if not stopped and "train" in split_docs:
                raise DataError(
                    f"--val-tokens {budget:,} takes all of {part.description} ({shards.tokens:,} tokens): "
                    "nothing is left to train on",
                    "hold out fewer tokens with --val-tokens, or use --val-fraction",
                )
            held["end"] = shards.position
        elif budget is not None and not stopped:
            notes.append(
                f"the {split} split holds all of its source's {shards.tokens:,} tokens, "
                f"fewer than the {budget:,} asked for"
            )
        entry = {**shards.finish(), "source": part.description}
        if held is not None and split == "validation":
            entry["source_items"] = held["end"]  # where train's documents start
        partial.record_split(split, entry)
        for leftover in shards.leftovers():
            leftover.unlink()
        split_meta[split] = entry
        progress.end_split(split, entry)
    return {s: split_meta[s] for s in SPLITS if s in split_meta}


def _shard_done(partial: PartialPrepare, progress: PrepareProgress, split: str, shards: list[dict]) -> None:
    partial.record_shards(split, shards)
    report = getattr(progress, "shard_done", None)  # optional: a reporter may not show shards
    if report is not None:
        report(split, len(shards))


def _source_stamp(name: str, source: str | os.PathLike | None) -> list | None:
    """Path, size and modification time of each local source file: a resume refuses to
    continue over files that changed since (it starts afresh). None for the Hub."""
    given = str(source if source is not None else name)
    path = Path(given).expanduser()
    if is_glob(given) and not path.exists():
        files = data_files(given)
    elif not path.exists():
        return None
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _prepare_options(
    name: str,
    source: str | os.PathLike | None,
    requested: list[str] | None,
    tok: Tokenizer,
    text_column: str,
    doc_separator: str | None,
    val_fraction: float | None,
) -> dict:
    """The options this prepare was given, as ``meta.json`` keeps them for ``prepare_command``
    (a hint to rebuild the dataset repeats them); local paths made absolute."""
    local = Path(name).expanduser()
    if source is None and local.exists():
        name = str(local.resolve())
    elif source is None and is_glob(name):
        name = str(local.absolute())
    return {
        "name": name,
        "--source": str(Path(source).expanduser().resolve()) if source is not None else None,
        "--splits": ",".join(requested) if requested else None,
        "--tokenizer": tok.name,
        "--text-column": text_column if text_column != "text" else None,
        "--doc-separator": doc_separator,
        "--val-fraction": val_fraction,
    }


def _dataset_meta(
    name: str,
    requested: str,
    tok: Tokenizer,
    src: Source,
    split_meta: dict[str, dict],
    val_fraction: float | None,
    doc_separator: str | None,
) -> dict:
    return {
        **meta_header(
            name, tok, dtype_for_vocab(tok.vocab_size).name, "one end-of-text token between documents"
        ),
        "source": {
            **src.to_meta(),
            "requested": requested,
            "val_fraction": val_fraction,
            "doc_separator": doc_separator,
        },
        "splits": split_meta,
    }


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
