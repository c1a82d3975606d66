"""``lmforge eval``: perplexity, word-level perplexity and bits per byte of checkpoints under the
``stream`` or ``harness`` protocol, and lm-eval-harness tasks (``--tasks``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import replace

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
from lmforge.cli.complete import complete_checkpoint_names, complete_dataset_names


def eval_command(
    ctx: typer.Context,
    checkpoints: list[str] = typer.Argument(
        ...,
        metavar="CKPT...",
        help="Checkpoints: best, latest, RUN, RUN:best, RUN:latest, RUN:step-N or a path.",
        autocompletion=complete_checkpoint_names,
    ),
    data: str = typer.Option(
        None,
        "--data",
        help="Prepared dataset (default: the one the checkpoint was trained on).",
        show_default=False,
        autocompletion=complete_dataset_names,
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
    protocol: str = typer.Option(
        None,
        "--protocol",
        help="stream: sliding windows over the token stream; harness: lm-eval-harness's wikitext task "
        "(per document, detokenized, disjoint windows). Default: stream, none with --tasks.",
        show_default=False,
    ),
    tasks: str = typer.Option(
        None,
        "--tasks",
        help='Comma-separated lm-eval-harness tasks (needs pip install "lmforge\\[eval]").',
        show_default=False,
    ),
    tasks_dir: str = typer.Option(
        None, "--tasks-dir", help="A folder of your own lm-eval task YAMLs.", show_default=False
    ),
    limit: int = typer.Option(
        None, "--limit", help="Score only the first N examples of each task.", show_default=False
    ),
    num_fewshot: int = typer.Option(
        None, "--num-fewshot", help="Few-shot examples per task (default: its own).", show_default=False
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows (or task requests) per forward pass."),
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

      [bold]lmforge eval best --protocol harness --split test[/bold]   (lm-eval-harness's WikiText numbers)

      [bold]lmforge eval best --tasks hellaswag,arc_easy --limit 200[/bold]

      [bold]lmforge eval best --tasks my_task --tasks-dir ./tasks[/bold]   (task YAMLs over local files)

      [bold]torchrun --nproc_per_node 8 -m lmforge eval best[/bold]   (tasks run on rank 0)
    """
    from lmforge import distributed
    from lmforge.device import resolve_device
    from lmforge.errors import UsageError
    from lmforge.eval.evaluate import evaluate_checkpoint
    from lmforge.eval.options import EvalOptions, check_protocol
    from lmforge.eval.tasks import check_task_options, evaluate_tasks_checkpoint, parse_tasks, require_lm_eval
    from lmforge.runs.names import resolve_checkpoint

    task_names = parse_tasks(tasks) if tasks is not None else []
    if task_names:
        check_task_options(limit, num_fewshot, tasks_dir)
        require_lm_eval()  # at once, before any checkpoint is loaded
    elif limit is not None or num_fewshot is not None or tasks_dir is not None:
        raise UsageError("--limit, --num-fewshot and --tasks-dir apply to --tasks", "e.g. --tasks hellaswag")
    if protocol is None and not task_names:
        protocol = "stream"
    options = EvalOptions(
        block_size=block_size,
        stride=stride,
        batch_size=batch_size,
        max_tokens=max_tokens,
        device=device,
        dtype=dtype,
    )
    if protocol is not None:
        check_protocol(protocol, options)
    splits = [s.strip() for s in split.split(",") if s.strip()]
    if not splits:
        raise UsageError(f"--split names no split: {split!r}", "e.g. --split validation,test")
    ws = workspace(ctx)
    # every name is resolved before the first checkpoint is scored, so a typo fails at once
    paths = {spec: resolve_checkpoint(ws, spec) for spec in checkpoints}
    # under torchrun: join the group; "auto" is then cuda:LOCAL_RANK (see resolve_device)
    dist = distributed.init_distributed(resolve_device(device).type)
    options = replace(options, rank=dist.rank, world_size=dist.world_size)
    quiet = state(ctx).quiet or not dist.is_main
    rows = []
    try:
        with _progress(quiet) as progress:
            for spec, path in paths.items() if protocol is not None else []:
                rows += evaluate_checkpoint(
                    ws,
                    path,
                    options,
                    data=data,
                    splits=splits,
                    protocol=protocol,
                    label=spec,
                    progress=progress,
                )
    finally:
        distributed.destroy()
    if not dist.is_main:
        return  # harness tasks run on rank 0 alone, after the group is gone: no rank waits on another
    task_rows = []
    task_options = replace(options, rank=0, world_size=1)
    with _progress(quiet) as progress:
        for spec, path in paths.items() if task_names else []:
            found, saved = evaluate_tasks_checkpoint(
                ws,
                path,
                task_names,
                task_options,
                label=spec,
                tasks_dir=tasks_dir,
                limit=limit,
                num_fewshot=num_fewshot,
                progress=progress,
            )
            task_rows += found
            if saved is not None and not as_json:
                err_console.print(f"[dim]Saved[/dim] {saved}", highlight=False)
    if as_json:
        print_json([row.to_dict() for row in rows] + [row.to_dict() for row in task_rows])
        return
    if rows:
        _print_table(rows, protocol)
    if task_rows:
        _print_task_table(task_rows)
    notes = dict.fromkeys(row.note for row in rows if row.note)
    for note in notes:
        err_console.print(f"[dim]Note:[/dim] {note}", highlight=False)


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator:
    """A progress factory on stderr, advanced by tokens: a Rich bar per checkpoint and split on
    a terminal, plain lines (start, once a minute, end) otherwise (a log file, CI)."""
    if quiet:
        yield None
        return
    if not err_console.is_terminal:
        from lmforge.cli.progress_lines import ProgressLines

        with ProgressLines(prefix="eval ") as lines:
            yield lines.start
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    class Speed(TransferSpeedColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            unit = "tok/s" if task.fields["unit"] == "tokens" else f"{task.fields['unit']}/s"
            return "" if speed is None else f"{speed:,.0f} {unit}"

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Speed(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:

        def start(label: str, total: int, unit: str = "tokens"):
            task = progress.add_task(label, total=total, unit=unit)
            return lambda n: progress.advance(task, n)

        yield start


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    return format(value, spec)


CAPTIONS = {
    "stream": "protocol stream: sliding windows over the token stream; loss and ppl include the end-of-text "
    "tokens between documents, word ppl and bits/byte do not",
    "harness": "protocol harness: lm-eval-harness's wikitext task (per document, detokenized, disjoint "
    "windows of the model's context)",
}


def _print_table(rows, protocol: str) -> None:
    table = Table(title="Evaluation", caption=CAPTIONS[protocol])
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


def _print_task_table(rows) -> None:
    table = Table(title="lm-eval-harness tasks")
    for name, justify in [
        ("checkpoint", "left"),
        ("task", "left"),
        ("metric", "left"),
        ("value", "right"),
        ("stderr", "right"),
        ("n", "right"),
    ]:
        table.add_column(name, justify=justify)
    for r in rows:
        metric = r.metric if r.filter == "none" else f"{r.metric} ({r.filter})"
        n = "" if r.samples is None else f"{r.samples:,}"
        table.add_row(r.checkpoint, r.task, metric, _fmt(r.value, ".4f"), _fmt(r.stderr, ".4f"), n)
    out_console.print(table)
