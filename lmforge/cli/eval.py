"""``lmforge eval``: perplexity, word-level perplexity and bits per byte of checkpoints."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import typer
from rich.table import Table

from lmforge.cli.common import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    err_console,
    out_console,
    print_json,
    state,
    workspace,
)


def eval_command(
    ctx: typer.Context,
    checkpoints: list[str] = typer.Argument(
        ...,
        metavar="CKPT...",
        help="Checkpoints: best, latest, RUN, RUN:best, RUN:latest, RUN:step-N or a path.",
    ),
    data: str = typer.Option(
        None,
        "--data",
        help="Prepared dataset (default: the one the checkpoint was trained on).",
        show_default=False,
    ),
    split: str = typer.Option("validation,test", "--split", help="Comma-separated splits to evaluate."),
    block_size: int = typer.Option(
        None, "--block-size", help="Window length (default: the model's context).", show_default=False
    ),
    stride: int = typer.Option(
        None,
        "--stride",
        help="Step between windows; every token gets >= block_size - stride context "
        "(default: block_size / 2; = block size for non-overlapping windows).",
        show_default=False,
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
    max_tokens: int = typer.Option(
        None,
        "--max-tokens",
        help="Score only the first N tokens of each split (word ppl and bpb then n/a).",
        show_default=False,
    ),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """Evaluate checkpoints: loss, perplexity, word-level perplexity and bits per byte.

    Sliding windows: each scores only tokens no earlier window scored, with up to --block-size of context.

    Word perplexity (WikiText convention) and bits per byte divide the summed loss by the words and UTF-8
    bytes of the source text, so they compare across tokenizers; they need the whole split (n/a with
    --max-tokens).

    Examples:

      [bold]lmforge eval best[/bold]   (validation and test of the newest run's best checkpoint)

      [bold]lmforge eval my-run:step-2000 my-run:best --split test --json[/bold]

      [bold]lmforge eval best --stride 1024 --max-tokens 100000[/bold]   (quick, no overlap)

      [bold]torchrun --nproc_per_node 8 -m lmforge eval best[/bold]
    """
    from lmforge import distributed
    from lmforge.device import resolve_device
    from lmforge.errors import UsageError
    from lmforge.eval.evaluate import evaluate_checkpoint

    splits = [s.strip() for s in split.split(",") if s.strip()]
    if not splits:
        raise UsageError(f"--split names no split: {split!r}", "e.g. --split validation,test")
    ws = workspace(ctx)
    # under torchrun: join the group; "auto" is then cuda:LOCAL_RANK (see resolve_device)
    dist = distributed.init_distributed(resolve_device(device).type)
    quiet = state(ctx).quiet or not dist.is_main
    rows = []
    try:
        with _progress(quiet) as progress:
            for spec in checkpoints:
                rows += evaluate_checkpoint(
                    ws,
                    spec,
                    data=data,
                    splits=splits,
                    block_size=block_size,
                    stride=stride,
                    batch_size=batch_size,
                    max_tokens=max_tokens,
                    device=device,
                    dtype=dtype,
                    rank=dist.rank,
                    world_size=dist.world_size,
                    progress=progress,
                )
    finally:
        distributed.destroy()
    if not dist.is_main:
        return
    if as_json:
        print_json([row.to_dict() for row in rows])
        return
    _print_table(rows)
    notes = dict.fromkeys(row.note for row in rows if row.note)
    for note in notes:
        err_console.print(f"[dim]Note:[/dim] {note}", highlight=False)


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator:
    """A factory of progress bars on stderr (one per checkpoint and split), advanced by tokens."""
    if quiet:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    class TokensPerSecond(TransferSpeedColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return "" if speed is None else f"{speed:,.0f} tok/s"

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TokensPerSecond(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:

        def start(label: str, total: int):
            task = progress.add_task(label, total=total)
            return lambda n: progress.advance(task, n)

        yield start


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    return format(value, spec)


def _print_table(rows) -> None:
    table = Table(title="Evaluation")
    for name, justify in [
        ("checkpoint", "left"),
        ("split", "left"),
        ("loss", "right"),
        ("ppl", "right"),
        ("word ppl", "right"),
        ("bits/byte", "right"),
        ("tokens", "right"),
    ]:
        table.add_column(name, justify=justify)
    for r in rows:
        table.add_row(
            r.checkpoint,
            r.split,
            _fmt(r.loss, ".4f"),
            _fmt(r.ppl, ".2f"),
            _fmt(r.word_ppl, ".2f"),
            _fmt(r.bpb, ".4f"),
            f"{r.tokens:,}",
        )
    out_console.print(table)
