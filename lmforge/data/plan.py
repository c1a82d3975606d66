"""What ``lmforge data prepare NAME`` means: which source, under which name, which splits.

NAME is WikiText (``wikitext-103``, ``wikitext-2``, their ``-v1`` variants), a
local text file or folder (or ``--source`` folder of parquet files), or a Hub
dataset id ``owner/name``. ``splits_to_write`` then picks the splits to write,
holding documents out of train as validation for ``--val-fraction``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.data import files, hub, local, wikitext
from lmforge.data.sources import SPLITS, Continuation, Source, SplitSource, normalize_split
from lmforge.errors import DataError, UsageError
from lmforge.workspace import is_valid_name


def parse_splits(splits: str | Iterable[str] | None) -> list[str] | None:
    """``"validation,test"`` -> ``["validation", "test"]`` (``valid``/``val`` accepted)."""
    if splits is None:
        return None
    items = splits.split(",") if isinstance(splits, str) else list(splits)
    out: list[str] = []
    for item in items:
        if not item.strip():
            continue
        split = normalize_split(item)
        if split not in SPLITS:
            raise UsageError(f"unknown split '{item.strip()}' in --splits", f"choose from {','.join(SPLITS)}")
        if split not in out:
            out.append(split)
    if not out:
        raise UsageError("--splits names no split", f"e.g. --splits {','.join(SPLITS)}")
    return [s for s in SPLITS if s in out]


def _check_name(name: str) -> str:
    if not is_valid_name(name):
        raise UsageError(
            f"invalid dataset name '{name}'",
            "use letters, digits, '.', '_' and '-' (and not a leading '.'); choose one with --as NAME",
        )
    return name


@dataclass
class SourcePlan:
    """What NAME means: a source to build lazily (the Hub is only touched when needed).

    ``build(requested_splits)`` returns the source and the splits to write from it."""

    name: str
    wikitext: bool
    build: Callable[[list[str] | None], tuple[Source, list[str]]]


def plan_source(
    name: str,
    *,
    source: str | os.PathLike | None,
    alias: str | None,
    text_column: str,
    doc_separator: str | None,
    subset: str | None = None,
) -> SourcePlan:
    """The dataset NAME (``wikitext-103``, a local path, a Hub id) as a plan; the one-line
    errors for a NAME that is none of those, or options that do not fit its kind."""
    canonical = wikitext.canonical_wikitext_name(name)
    if subset is not None and (canonical is not None or "/" not in name or Path(name).expanduser().exists()):
        raise UsageError("--subset is for Hugging Face datasets (owner/name) that have subsets")
    if canonical is not None:
        if doc_separator is not None:
            raise UsageError(
                "--doc-separator is for local text; WikiText is split into articles at its headings"
            )
        if source is not None and not Path(source).expanduser().exists():
            raise UsageError(f"--source {source} does not exist", wikitext.wikitext_source_hint(True))

        def build_wikitext(requested):
            wanted = requested or list(SPLITS)
            return wikitext.wikitext_source(canonical, source, wanted), wanted

        return SourcePlan(_check_name(alias or canonical), True, build_wikitext)

    given = str(source if source is not None else name)
    if files.is_glob(given) and not Path(given).expanduser().exists():
        if not files.data_files(given):
            raise UsageError(
                f"{given} matches no data files", f"give files ending in {', '.join(files.DATA_SUFFIXES)}"
            )
        stem = re.sub(r"[*?\[\]].*", "", Path(given).name) or Path(given).parent.name

        def build_glob(requested):
            src = files.files_source(given, text_column, doc_separator)
            return src, _pick_splits(src, requested)

        return SourcePlan(
            _check_name(alias or _default_alias(stem.strip("-_.") or "dataset")), False, build_glob
        )

    path = Path(source if source is not None else name).expanduser()
    if source is not None or path.exists():
        if not path.exists():
            raise UsageError(
                f"--source {path} does not exist", "pass a .txt file, a folder, or a parquet folder"
            )
        default_name = name if source is not None else (path.stem if path.is_file() else path.name)

        def build_local(requested):
            hub_layout = path.is_dir() and set(local.parquet_split_files(path)) & set(SPLITS)
            if hub_layout and not any(path.rglob("*.txt")) and not files.holds_records(path):
                src = local.parquet_source(path, text_column)
            elif (path.is_dir() and (files.holds_records(path) or local.parquet_split_files(path))) or (
                path.is_file() and path.suffix.lower() not in local.TEXT_SUFFIXES
            ):
                src = files.files_source(path, text_column, doc_separator)
            else:
                src = local.text_source(path, doc_separator)
            return src, _pick_splits(src, requested)

        return SourcePlan(_check_name(alias or _default_alias(default_name)), False, build_local)

    if "/" in name and not name.startswith((".", "/", "~")):

        def build_hub(requested):
            src, _ = hub.hub_source(name, text_column, requested, subset=subset)
            return src, _pick_splits(src, requested)

        return SourcePlan(_check_name(alias or _default_alias(name.rsplit("/", 1)[-1])), False, build_hub)

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


def splits_to_write(
    src: Source, wanted: list[str], requested: list[str] | None, val_fraction: float | None
) -> dict[str, SplitSource]:
    """Split name -> what to write for it. With ``val_fraction`` the source must have a
    train split and no validation split: validation is ``val_fraction`` of train's
    documents (see ``select_documents``) and train is the rest."""
    if val_fraction is not None and requested is None:
        wanted = [s for s in SPLITS if s in wanted or s == "validation"]
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
                split_docs[split] = SplitSource(
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
    return split_docs


def hold_out_first(src: Source, wanted: list[str], val_tokens: int) -> tuple[dict[str, SplitSource], dict]:
    """Validation from the first documents of train, up to ``val_tokens`` tokens (the prepare
    stops it at that budget, at the end of a batch); train is every document after them.
    Returns the splits and ``held``, where the prepare puts ``end``: how many items of train's
    stream validation took, once it is written (train's documents skip them)."""
    if "validation" in src.splits:
        raise UsageError(
            f"{src.description} has a validation split; --val-tokens is only for sources without one"
        )
    if "train" not in src.splits:
        raise DataError(f"{src.description} has no train split to hold documents out of")
    train = src.splits["train"]
    held: dict = {}

    def rest() -> Iterator[str]:
        stream = iter(train.documents())
        next(itertools.islice(stream, held["end"], held["end"]), None)
        yield from stream

    split_docs = {s: src.splits[s] for s in wanted if s in src.splits and s != "train"}
    split_docs["validation"] = SplitSource(
        "validation", f"{train.description} (the first {val_tokens:,} tokens of documents)", train.documents
    )
    if "train" in wanted:
        split_docs["train"] = SplitSource(
            "train", f"{train.description} (after the held-out documents)", rest, train.total_bytes
        )
    return split_docs, held


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
