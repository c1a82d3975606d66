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
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lmforge import __version__
from lmforge.data.encode import Encoder, SplitWriter, worth_parallel, write_split
from lmforge.data.plan import parse_splits, plan_source, splits_to_write
from lmforge.data.sources import SPLITS, Source, SplitSource
from lmforge.data.staging import clean_leftovers, install, staging_dir
from lmforge.data.store import (
    FORMAT_VERSION,
    META_FILE,
    PreparedDataset,
    dtype_for_vocab,
    open_dataset,
    prepare_command,
)
from lmforge.data.tokenizer import Tokenizer, default_num_threads, get_tokenizer, remember_tokenizer_file
from lmforge.errors import DataError, UsageError
from lmforge.fileio import fsync_dir, write_json
from lmforge.units import now_iso
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
    plan = plan_source(name, source=source, alias=alias, text_column=text_column, doc_separator=doc_separator)
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
    options = _prepare_options(name, source, requested, tok, text_column, doc_separator, val_fraction)
    if "validation" not in src.splits and val_fraction is None and requested is None:
        again = prepare_command({"prepare": options}, plan.name, **{"--val-fraction": 0.05})
        notes.append(f"the source has no validation split: hold out documents with: {again}")
    split_docs = splits_to_write(src, wanted, requested, val_fraction)

    clean_leftovers(workspace)
    tmp = staging_dir(workspace, plan.name)
    try:
        with Encoder(tok, num_proc, worth_parallel(p.total_bytes for p in split_docs.values())) as encoder:
            split_meta = _write_splits(tmp, split_docs, tok, encoder, progress, val_fraction)
        meta = _dataset_meta(plan.name, name, tok, src, split_meta, val_fraction, doc_separator)
        meta["prepare"] = options
        write_json(tmp / META_FILE, meta)
        fsync_dir(tmp)
        install(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DataError(
                f"no space left on the device while writing {tmp}", "free disk space and prepare again"
            ) from None
        raise
    return PrepareResult(plan.name, target, False, meta, time.perf_counter() - started, notes)


def _write_splits(
    tmp: Path,
    split_docs: dict[str, SplitSource],
    tok: Tokenizer,
    encoder: Encoder,
    progress: PrepareProgress,
    val_fraction: float | None,
) -> dict[str, dict]:
    """Write each split's ``<split>.bin`` into ``tmp``, in the order of ``SPLITS``; their
    ``meta.json`` entries."""
    dtype = dtype_for_vocab(tok.vocab_size)
    split_meta = {}
    for split in SPLITS:
        if split not in split_docs:
            continue
        part = split_docs[split]
        # the evaluation splits keep their text, so `eval --protocol harness` can score each
        # document as lm-eval-harness does; train's text is left out (its size, and nothing reads it)
        writer = SplitWriter(split, tmp / f"{split}.bin", dtype, tok.vocab_size, keep_text=split != "train")
        progress.start_split(split, part.total_bytes, part.description)
        write_split(part.documents(), writer, encoder, progress)
        writer.write_offsets()
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
            "doc_offsets": writer.offsets_path.name,
            **({"text": writer.text_path.name} if writer.keep_text else {}),
        }
        progress.end_split(split, split_meta[split])
    return split_meta


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
    return {
        "name": str(local.resolve()) if source is None and local.exists() else name,
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
        "format": "lmforge-dataset",
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": now_iso(),
        "lmforge_version": __version__,
        "tokenizer": tok.identity,
        "vocab_size": tok.vocab_size,
        "eot_token": tok.eot_token,
        "dtype": dtype_for_vocab(tok.vocab_size).name,
        "documents_separated_by": "one end-of-text token between documents",
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
