"""``lmforge data``: prepare, list and inspect datasets."""

from __future__ import annotations

import time

import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from lmforge.cli.common import JSON_OPTION, err_console, info, out_console, print_json, state, workspace
from lmforge.cli.complete import complete_dataset_names
from lmforge.units import plural

app = typer.Typer(
    help="Prepare, list and inspect tokenized datasets.\n\n"
    "  lmforge data prepare wikitext-103\n\n"
    "  lmforge data prepare wikitext-2 --source ./wikitext-2-raw   (offline)\n\n"
    "  lmforge data list",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(text: str | None, flag: str) -> int | None:
    """``"100M"`` -> 100_000_000: a token count with an optional K, M, B (or G) or T suffix;
    ``_`` and ``,`` may group digits. A ``typer.BadParameter`` naming ``flag`` otherwise."""
    if text is None:
        return None
    cleaned = text.strip().replace("_", "").replace(",", "").upper()
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned[-1:] in _UNITS and cleaned[-1:] else (cleaned, "")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a count (e.g. 500M, 2B, 100000)", param_hint=flag
        ) from None
    if value < 1 or value != value or value > 1e15:
        raise typer.BadParameter(f"{text!r} must be at least 1", param_hint=flag)
    return int(round(value))


def _rate(nbytes: int, tokens: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:.1f} MB/s, {tokens / seconds / 1e6:.2f}M tok/s"


class _Speed(ProgressColumn):
    """MB/s and tokens/s since the split started, as the reporter measured them (so the bar's
    last figure is the one the split's summary line prints)."""

    def render(self, task: Task) -> Text:
        return Text(task.fields.get("rate", ""), style="cyan", no_wrap=True)


class _Size(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = f"/{_mb(task.total)}" if task.total else ""
        return Text(f"{_mb(task.completed)}{total}", style="green")


class RichPrepareProgress:
    """Progress bar on stderr (bytes read, MB/s, tokens/s, ETA) and a plain line per split."""

    def __init__(self, ctx: typer.Context) -> None:
        self.ctx = ctx
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=16),  # the whole line fits 80 columns
            _Size(),
            _Speed(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
        )
        self.task = None
        self.tokens = 0
        self.started = 0.0

    def __enter__(self) -> RichPrepareProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()

    def start_split(self, split: str, total_bytes: int | None, source: str) -> None:
        if self.task is None:  # started on the first split: an early error leaves no empty bar behind
            self.progress.start()
        self.tokens = self.nbytes = 0
        self.started = time.perf_counter()
        self.split = split
        self.task = self.progress.add_task(split, total=total_bytes, rate="")

    def advance(self, nbytes: int, ntokens: int) -> None:
        self.tokens += ntokens
        self.nbytes += nbytes
        seconds = max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, advance=nbytes, rate=_rate(self.nbytes, self.tokens, seconds))

    def shard_done(self, split: str, shards: int) -> None:
        self.progress.update(self.task, description=f"{split} [{plural(shards, 'shard')}]")

    def end_split(self, split: str, stats: dict) -> None:
        """The summary line; its rate is what this run encoded (a resumed prepare's finished
        shards are in the totals, not in the rate), over the same time as the bar's."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        rate = _rate(self.nbytes, self.tokens, seconds)
        task = self.progress.tasks[-1]
        self.progress.update(self.task, total=task.completed, rate=rate)
        shards = len(stats.get("shards", [])) or 1
        self.progress.console.print(
            f"{split}: {stats['tokens']:,} tokens, {plural(stats['documents'], 'doc')}"
            f"{f', {shards:,} shards' if shards > 1 else ''}, "
            f"{_mb(stats['bytes'])} in {seconds:.1f} s ({rate})",
            highlight=False,
        )


class _QuietProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        pass


def _unescape(text: str | None) -> str | None:
    """``--doc-separator '\\n\\n'`` as typed in a shell means two newlines."""
    if text is None:
        return None
    return text.replace("\\n", "\n").replace("\\t", "\t")


@app.command("prepare")
def prepare(
    ctx: typer.Context,
    name: str = typer.Argument(
        ...,
        help="wikitext-103, wikitext-2 (raw; -v1 for the tokenized variants), a local file, folder or "
        "glob (.txt, .parquet, .jsonl, .jsonl.gz/.zst), or a Hugging Face dataset id (owner/name).",
        show_default=False,
    ),
    source: str = typer.Option(
        None,
        "--source",
        help="Read a local copy instead of the Hub: a folder with wiki.train.raw, wiki.valid.raw, "
        "wiki.test.raw, their zip, or the Hub's parquet layout.",
        show_default=False,
    ),
    splits: str = typer.Option(
        None,
        "--splits",
        help="Comma-separated splits to prepare, e.g. validation,test \\[default: all].",
        show_default=False,
    ),
    tokenizer: str = typer.Option("gpt2", "--tokenizer", help="gpt2 (tiktoken BPE) or bytes."),
    tokenizer_file: str = typer.Option(
        None,
        "--tokenizer-file",
        help="GPT-2's ranks file (gpt2.tiktoken) for offline use "
        "\\[default: $LMFORGE_TOKENIZER_FILE, else tokenizers/gpt2.tiktoken in the workspace].",
        show_default=False,
    ),
    num_proc: int = typer.Option(
        None, "--num-proc", min=1, help="Encoding threads \\[default: all cores].", show_default=False
    ),
    alias: str = typer.Option(
        None, "--as", help="Name of the prepared dataset \\[default: from NAME].", show_default=False
    ),
    force: bool = typer.Option(
        False, "--force", help="Rebuild even if prepared (the old copy stays until done)."
    ),
    text_column: str = typer.Option(
        "text", "--text-column", help="Column with the text (Hub, parquet and JSON-lines data)."
    ),
    doc_separator: str = typer.Option(
        None,
        "--doc-separator",
        help="Split local text files into documents at this string (\\n for newline) "
        "\\[default: one document per file].",
        show_default=False,
    ),
    val_fraction: float = typer.Option(
        None,
        "--val-fraction",
        help="Hold out this fraction of documents as the validation split, for sources without one.",
        show_default=False,
    ),
    shard_tokens: str = typer.Option(
        "100M",
        "--shard-tokens",
        help="Write splits larger than this many tokens as numbered shards (K, M, B suffixes).",
    ),
    max_tokens: str = typer.Option(
        None,
        "--max-tokens",
        help="Stop the train split at this many tokens, e.g. 500M or 2B \\[default: all].",
        show_default=False,
    ),
    val_tokens: str = typer.Option(
        None,
        "--val-tokens",
        help="Hold out the first documents, up to this many tokens (e.g. 10M), as the validation "
        "split, for sources without one.",
        show_default=False,
    ),
    subset: str = typer.Option(
        None, "--subset", help="The Hub dataset's subset (config), e.g. sample-10BT.", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Tokenize a dataset into the workspace (token files + meta.json).

    Examples:

      [bold]lmforge data prepare wikitext-103[/bold]   (from the Hugging Face Hub)

      [bold]lmforge data prepare wikitext-103 --source ./wikitext-103-raw[/bold]   (offline)

      [bold]lmforge data prepare wikitext-2 --splits validation,test --source ./wikitext-raw[/bold]

      [bold]lmforge data prepare ./books/ --val-fraction 0.05 --as books[/bold]

      [bold]lmforge data prepare ./corpus.txt --doc-separator '\\n\\n\\n' --tokenizer bytes[/bold]

      [bold]lmforge data prepare owner/dataset --text-column content[/bold]

      [bold]lmforge data prepare HuggingFaceFW/fineweb-edu --subset sample-10BT --max-tokens 2B[/bold]

      [bold]lmforge data prepare './crawl/*.jsonl.zst' --val-tokens 5M --as crawl[/bold]

    Run again with the same options, an interrupted prepare resumes where it stopped.
    """
    from lmforge.data.prepare import prepare_dataset

    ws = workspace(ctx)
    quiet = state(ctx).quiet
    reporter = _QuietProgress() if quiet else RichPrepareProgress(ctx)
    with reporter as progress:
        result = prepare_dataset(
            ws,
            name,
            source=source,
            splits=splits,
            tokenizer=tokenizer,
            tokenizer_file=tokenizer_file,
            num_proc=num_proc,
            alias=alias,
            force=force,
            text_column=text_column,
            doc_separator=_unescape(doc_separator),
            val_fraction=val_fraction,
            shard_tokens=parse_count(shard_tokens, "--shard-tokens"),
            max_tokens=parse_count(max_tokens, "--max-tokens"),
            val_tokens=parse_count(val_tokens, "--val-tokens"),
            subset=subset,
            progress=progress,
        )
    if result.already_prepared:
        info(
            ctx,
            f"Dataset [bold]{escape(result.name)}[/bold] is already prepared in {escape(str(result.path))} "
            "(use --force to rebuild it).",
        )
    else:
        info(
            ctx,
            f"Prepared [bold]{escape(result.name)}[/bold] in {escape(str(result.path))} "
            f"({result.seconds:.1f} s).",
        )
    for note in result.notes:
        info(ctx, f"[yellow]Note:[/yellow] {escape(note)}")
    if as_json:
        print_json(result.to_dict())
    elif not result.already_prepared:
        out_console.print(_splits_table(result.dataset))


def _splits_table(ds, title: str | None = "", checksums: bool = False) -> Table:
    if title == "":
        title = f"{ds.name} ({ds.meta['tokenizer']['name']}, {ds.meta['dtype']})"
    table = Table(title=title, title_justify="left", box=box.SIMPLE, pad_edge=False, collapse_padding=True)
    for col in ("split", "tokens", "documents", "text bytes", "words", "shards", "file size"):
        table.add_column(col, justify="left" if col == "split" else "right", no_wrap=True)
    if checksums:
        table.add_column("source sha256")
    for split in ds.splits:
        m = ds.split_meta(split)
        files = [ds.path / s["file"] for s in ds.shard_entries(split)]
        size = sum(f.stat().st_size for f in files if f.exists())
        table.add_row(
            split,
            f"{m['tokens']:,}",
            f"{m['documents']:,}",
            _human_bytes(m["bytes"]),
            f"{m['words']:,}" if m.get("words") is not None else "-",
            f"{len(files):,}",
            _human_bytes(size),
            *([(m.get("sha256") or "-")[:16] + "…"] if checksums else []),
        )
    return table


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    as_json: bool = JSON_OPTION,
) -> None:
    """List prepared datasets: tokens per split, documents, tokenizer, dtype, size on disk.

    Examples:

      [bold]lmforge data list[/bold]

      [bold]lmforge data list --json[/bold]
    """
    from lmforge.data.staging import unfinished_prepares
    from lmforge.data.store import list_datasets

    ws = workspace(ctx)
    errors: list[tuple[str, str]] = []
    datasets = list_datasets(ws, errors)
    unfinished = unfinished_prepares(ws)
    for name in unfinished:
        info(
            ctx,
            f"Unfinished prepare of [bold]{escape(name)}[/bold]: run the same `data prepare` to resume it.",
        )
    if as_json:
        print_json(
            {
                "workspace": str(ws.root),
                "datasets": [d.summary() for d in datasets],
                "unfinished": unfinished,
                "errors": [{"name": n, "error": e} for n, e in errors],
            }
        )
        return
    if not datasets and not errors:
        info(
            ctx,
            f"No datasets in {escape(str(ws.datasets_dir))}. Prepare one: lmforge data prepare wikitext-2",
        )
        return
    table = Table(
        title=f"Datasets in {ws.datasets_dir} (tokens per split)",
        title_justify="left",
        box=box.SIMPLE,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("name", no_wrap=True)
    for col in ("train", "validation", "test"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("docs", justify="right")
    table.add_column("shards", justify="right")
    table.add_column("tokenizer", min_width=9)
    table.add_column("dtype")
    table.add_column("size", justify="right", no_wrap=True)
    for d in datasets:
        s = d.meta["splits"]
        table.add_row(
            d.name,
            *(f"{s[x]['tokens']:,}" if x in s else "-" for x in ("train", "validation", "test")),
            f"{sum(v['documents'] for v in s.values()):,}",
            f"{sum(len(d.shard_entries(x)) for x in s):,}",
            d.tokenizer_identity["name"],
            d.meta["dtype"],
            _human_bytes(d.size_on_disk()),
        )
    for name, error in errors:
        table.add_row(name, "[red]unreadable[/red]", "", "", "", "", escape(error), "", "")
    out_console.print(table)


@app.command("info")
def info_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(
        ...,
        help="A prepared dataset (see `lmforge data list`).",
        show_default=False,
        autocompletion=complete_dataset_names,
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one prepared dataset: tokenizer, dtype, source, splits.

    Per split: tokens, documents, bytes and words of the source text, and its checksum.

    Examples:

      [bold]lmforge data info wikitext-103[/bold]

      [bold]lmforge data info wikitext-2 --json[/bold]
    """
    from lmforge.data.store import open_dataset

    ds = open_dataset(workspace(ctx), name)
    summary = ds.summary()
    if as_json:
        print_json(summary)
        return
    facts = Table(show_header=False, box=None)
    tok = ds.tokenizer_identity
    rows = {
        "name": ds.name,
        "path": str(ds.path),
        "tokenizer": f"{tok['name']} (sha256 {tok['sha256'][:16]}…)",
        "vocab size": f"{ds.vocab_size:,} (end-of-text {ds.eot_token})",
        "dtype": ds.meta["dtype"],
        "size on disk": _human_bytes(summary["size_on_disk"]),
        "source": (ds.meta.get("source") or {}).get("description", "?"),
        "created": ds.meta.get("created", "?"),
    }
    for key, value in rows.items():
        facts.add_row(f"[bold]{key}[/bold]", escape(str(value)))
    out_console.print(facts)
    out_console.print(_splits_table(ds, title=None, checksums=True))


# `data import` and `data export` (llm.c shards) live beside this module and register on `app`
from lmforge.cli import data_llmc  # noqa: E402, F401
