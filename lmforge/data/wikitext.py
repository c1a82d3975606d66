"""WikiText: the variants, where a copy may sit, and its text cut into articles.

Read from the original ``wiki.{train,valid,test}.raw`` files (or ``.tokens`` for
the ``-v1`` variants), from their zip, from a local copy of the Hub's parquet
layout, or from the Hub itself (``Salesforce/wikitext``). Every layout gives the
same text; articles start at level-1 headings (see ``split_wikitext_articles``).
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lmforge.data import hub
from lmforge.data.local import parquet_rows, parquet_split_files, parquet_text_bytes
from lmforge.data.sources import SPLITS, Source, SplitSource, normalize_split, open_text, read_blocks
from lmforge.errors import DataError, UsageError

WIKITEXT_HUB_ID = "Salesforce/wikitext"
# canonical dataset name -> (Hub config, raw?)
WIKITEXT_VARIANTS = {
    "wikitext-103": ("wikitext-103-raw-v1", True),
    "wikitext-2": ("wikitext-2-raw-v1", True),
    "wikitext-103-v1": ("wikitext-103-v1", False),
    "wikitext-2-v1": ("wikitext-2-v1", False),
}
WIKITEXT_ALIASES = {
    "wikitext-103-raw": "wikitext-103",
    "wikitext-103-raw-v1": "wikitext-103",
    "wikitext-2-raw": "wikitext-2",
    "wikitext-2-raw-v1": "wikitext-2",
}
_RAW_FILE_SPLIT = {"train": "train", "validation": "valid", "test": "test"}


def canonical_wikitext_name(name: str) -> str | None:
    """``wikitext-103-raw-v1`` -> ``wikitext-103``; None when ``name`` is not WikiText."""
    name = name.lower()
    name = WIKITEXT_ALIASES.get(name, name)
    return name if name in WIKITEXT_VARIANTS else None


# An article starts at the blank line before a level-1 heading: a blank line (" \n" in WikiText;
# "\n" accepted too), then " = Title = " (not " = = Section = = "), then another blank line.
# The match is the "\n" that ends the line before the article (all else is lookahead): a pattern
# that starts with a literal lets `re` jump from line to line, ~10x faster than a lookbehind.
_ARTICLE_START = re.compile(r"\n(?= ?\n = (?!= )[^\n]* = \n ?\n)")


def split_wikitext_articles(blocks: Iterable[str]) -> Iterator[str]:
    """WikiText text (in blocks of any size) -> one string per article.

    A line is a level-1 heading (`` = Title = ``) only when the line before it
    is blank (`` \\n``) and so is the line after it: the two formula lines in
    the test split's "Constant k filter" that look like headings sit inside
    paragraphs. An article starts at the blank line before its heading, so
    every article reads `` \\n = Title = \\n \\n ...`` and the articles joined
    give back the text exactly. Scanning with one regular expression per block
    keeps this far cheaper than the tokenizer."""
    buf = ""
    scan = 0
    for block in blocks:
        buf += block
        cuts = [m.start() + 1 for m in _ARTICLE_START.finditer(buf, scan)]
        prev = 0
        for cut in cuts:
            yield buf[prev:cut]
            prev = cut
        buf = buf[prev:]
        # the next search starts at the third-last line: a match there may be incomplete
        end = len(buf)
        for _ in range(3):
            end = buf.rfind("\n", 0, end)
            if end <= 0:
                end = 0
                break
        scan = end
    if buf:
        yield buf


def hub_rows_to_blocks(rows: Iterable[str | None], rows_per_block: int = 4096) -> Iterator[str]:
    """The Hub's WikiText rows are lines: blank lines are ``""``, the others keep their ``\\n``."""
    block: list[str] = []
    for row in rows:
        block.append(row if row else " \n")
        if len(block) >= rows_per_block:
            yield "".join(block)
            block = []
    if block:
        yield "".join(block)


# --------------------------------------------------------------------------- where a copy sits


def wikitext_source(name: str, source: str | os.PathLike | None, splits: list[str]) -> Source:
    """WikiText ``name`` (canonical) from ``source`` (a folder, zip or parquet copy), or the Hub."""
    config, raw = WIKITEXT_VARIANTS[name]
    if source is None:
        return _wikitext_hub(name, config, splits)
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"--source {path} does not exist", wikitext_source_hint(raw))
    ext = ".raw" if raw else ".tokens"
    if path.is_file():
        if zipfile.is_zipfile(path):
            return _wikitext_zip(path, ext, splits, raw)
        if path.suffix == ".parquet":
            path = path.parent
        else:
            raise UsageError(
                f"--source {path} is a file; expected a folder or a zip of WikiText",
                wikitext_source_hint(raw),
            )
    folder = _find_raw_folder(path, ext)
    if folder is not None:
        return _wikitext_files(folder, ext, splits, raw)
    zips = sorted(p for p in path.glob("*.zip") if zipfile.is_zipfile(p))
    if zips:
        prefix = name.replace("-v1", "") + ("-raw" if raw else "")
        preferred = [z for z in zips if z.name.startswith(prefix)] or zips
        return _wikitext_zip(preferred[0], ext, splits, raw)
    parquet = _find_parquet_config(path, config)
    if parquet is not None:
        return _wikitext_parquet(parquet, config, splits)
    other = ".tokens" if raw else ".raw"
    note = ""
    if _find_raw_folder(path, other) is not None:
        note = (
            f"; it has wiki.*{other} files, which belong to the {'-v1 (tokenized)' if raw else 'raw'} variant"
        )
    elif configs := _parquet_configs(path):
        note = f"; it has parquet files for {', '.join(configs)}"
    # a --source that holds something else is the user's mistake (exit 2), like a missing file
    raise UsageError(
        f"--source {path} holds no WikiText: no wiki.{{train,valid,test}}{ext}, "
        f"zip, or {config}/*.parquet{note}",
        wikitext_source_hint(raw),
    )


def wikitext_source_hint(raw: bool) -> str:
    ext = ".raw" if raw else ".tokens"
    return (
        f"--source takes a folder with wiki.train{ext}, wiki.valid{ext}, wiki.test{ext} (or their zip), "
        "or a local copy of the Hub's parquet layout (Salesforce/wikitext)"
    )


def _find_raw_folder(path: Path, ext: str) -> Path | None:
    """``path`` or a folder one level below it that holds ``wiki.*{ext}`` files."""
    for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if any((folder / f"wiki.{s}{ext}").is_file() for s in _RAW_FILE_SPLIT.values()):
            return folder
    return None


def _missing_files_error(
    where: Path, missing: dict[str, str], found: list[str], present_splits
) -> UsageError:
    names = ", ".join(f"{f} (split {s})" for s, f in missing.items())
    have = f"; it has {', '.join(found)}" if found else ""
    hint = (
        f"prepare only the splits it has with --splits {','.join(present_splits)}"
        if present_splits
        else "point --source at the folder that holds them"
    )
    return UsageError(f"--source {where} is missing {names}{have}", hint)


def _wikitext_files(folder: Path, ext: str, splits: list[str], raw: bool) -> Source:
    files = {s: folder / f"wiki.{_RAW_FILE_SPLIT[s]}{ext}" for s in SPLITS}
    present = [s for s in SPLITS if files[s].is_file()]
    missing = {s: files[s].name for s in splits if not files[s].is_file()}
    if missing:
        raise _missing_files_error(folder, missing, [files[s].name for s in present], present)

    def make(path: Path) -> Callable[[], Iterator[str]]:
        def documents() -> Iterator[str]:
            with open_text(path) as f:
                yield from split_wikitext_articles(read_blocks(f, str(path)))

        return documents

    parts = {s: SplitSource(s, str(files[s]), make(files[s]), files[s].stat().st_size) for s in splits}
    return Source("wikitext-raw" if raw else "wikitext-tokens", str(folder), parts)


def _wikitext_zip(path: Path, ext: str, splits: list[str], raw: bool) -> Source:
    try:
        with zipfile.ZipFile(path) as zf:
            members = {Path(i.filename).name: i for i in zf.infolist() if not i.is_dir()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"cannot read zip {path}: {exc}", "download the zip again") from None
    wanted = {s: f"wiki.{_RAW_FILE_SPLIT[s]}{ext}" for s in SPLITS}
    present = [s for s in SPLITS if wanted[s] in members]
    missing = {s: wanted[s] for s in splits if wanted[s] not in members}
    if missing:
        raise _missing_files_error(path, missing, [wanted[s] for s in present], present)

    def make(member: zipfile.ZipInfo) -> Callable[[], Iterator[str]]:
        def documents() -> Iterator[str]:
            with zipfile.ZipFile(path) as zf, zf.open(member) as raw_stream:
                text = io.TextIOWrapper(raw_stream, encoding="utf-8", newline="")
                yield from split_wikitext_articles(read_blocks(text, f"{path}:{member.filename}"))

        return documents

    parts = {
        s: SplitSource(
            s, f"{path}:{members[wanted[s]].filename}", make(members[wanted[s]]), members[wanted[s]].file_size
        )
        for s in splits
    }
    return Source("wikitext-zip", str(path), parts)


def _find_parquet_config(path: Path, config: str) -> Path | None:
    """The folder with ``config``'s parquet files: ``path`` itself, ``path/config`` (``path``
    is the Hub repository's root, e.g. ``hf-parquet/wikitext``), or ``path/*/config`` (one
    level above the root)."""
    for folder in [path, path / config, *sorted(path.glob(f"*/{config}"))]:
        if folder.is_dir() and _holds_split_parquet(folder):
            return folder
    return None


def _holds_split_parquet(folder: Path) -> bool:
    """Whether ``folder`` is one config's folder: ``{split}-*.parquet`` files, or
    ``{split}/*.parquet``. A repository root also has ``*/*.parquet``, but its
    subfolders are configs (``wikitext-2-raw-v1/``), not splits."""
    if any(folder.glob("*.parquet")):
        return True
    return any(normalize_split(f.parent.name) in SPLITS for f in folder.glob("*/*.parquet"))


def _parquet_configs(path: Path) -> list[str]:
    """The config folders under a repository root ``path`` (for the error when the wanted one is absent)."""
    return sorted({f.parent.name for f in path.glob("*/*.parquet") if _holds_split_parquet(f.parent)})


def _wikitext_parquet(folder: Path, config: str, splits: list[str]) -> Source:
    files = parquet_split_files(folder)
    present = [s for s in SPLITS if s in files]
    missing = {s: f"{s}-*.parquet" for s in splits if s not in files}
    if missing:
        raise _missing_files_error(folder, missing, [f.name for s in present for f in files[s]], present)

    def make(split_files: list[Path]) -> Callable[[], Iterator[str]]:
        def documents() -> Iterator[str]:
            yield from split_wikitext_articles(hub_rows_to_blocks(parquet_rows(split_files, "text")))

        return documents

    parts = {
        s: SplitSource(
            s, ", ".join(str(f) for f in files[s]), make(files[s]), parquet_text_bytes(files[s], "text")
        )
        for s in splits
    }
    return Source("wikitext-parquet", str(folder), parts)


def _wikitext_hub(name: str, config: str, splits: list[str]) -> Source:
    dsdict = hub.load_hub(WIKITEXT_HUB_ID, config, wikitext=True)
    split_map = hub.hub_split_map(dsdict)

    def make(ds) -> Callable[[], Iterator[str]]:
        return lambda: split_wikitext_articles(hub_rows_to_blocks(hub.column_rows(ds, "text")))

    parts = {}
    for s in splits:
        ds = dsdict[split_map[s]]
        parts[s] = SplitSource(s, f"{WIKITEXT_HUB_ID}:{config}:{split_map[s]}", make(ds), hub.arrow_bytes(ds))
    return Source("wikitext-hub", f"{WIKITEXT_HUB_ID} ({config})", parts)
