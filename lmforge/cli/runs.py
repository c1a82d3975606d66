"""``lmforge runs``: list, inspect, compare and delete training runs."""

from __future__ import annotations

import hashlib
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from lmforge.cli.common import JSON_OPTION, err_console, info, out_console, print_json, workspace
from lmforge.errors import UsageError
from lmforge.workspace import Workspace

app = typer.Typer(
    help="List, inspect, compare and delete training runs.\n\n"
    "Examples:\n\n"
    "  lmforge runs list\n\n"
    "  lmforge runs show latest\n\n"
    "  lmforge runs compare tiny-wikitext-2-20250101-120000 tiny-wikitext-2-20250102-090000\n\n"
    "  lmforge runs rm tiny-wikitext-2-20250101-120000 --yes",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

STATUS_STYLE = {
    "running": "cyan",
    "finished": "green",
    "interrupted": "yellow",
    "stale": "magenta",
    "failed": "red",
    "unknown": "dim",
}


def complete_run_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for RUN arguments: ``latest`` and the runs of the workspace."""
    root = ctx.find_root()
    ws = Workspace.resolve(root.params.get("workspace"))
    names = ["latest", *ws.run_names()]
    return [n for n in names if n.startswith(incomplete)]


def _run_argument(help: str) -> Any:
    return typer.Argument(..., help=help, autocompletion=complete_run_names, show_default=False)


# ----------------------------------------------------------------------------- list


@app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Every run: status, steps, tokens, best validation loss, duration, size.

    A run shown as [magenta]stale[/magenta] says "running" in its run.json, but no process with
    its pid is alive on this host: it was killed without a chance to record that (SIGKILL, out
    of memory, a reboot). Resume it like an interrupted run: [bold]lmforge train --resume RUN[/bold].

    Examples:

      [bold]lmforge runs list[/bold]

      [bold]lmforge runs list --json | jq '.[] | select(.status == "finished") | .name'[/bold]
    """
    from lmforge.runs.listing import list_runs

    ws = workspace(ctx)
    runs = list_runs(ws)
    if as_json:
        print_json([r.to_dict() for r in runs])
        return
    if not runs:
        info(
            ctx,
            f"No runs in {ws.runs_dir} yet. Start one with: lmforge train --preset tiny --data wikitext-2",
        )
        return
    columns = [
        ("run", [escape(r.name) for r in runs]),
        ("status", [_status(r.status) for r in runs]),
        ("preset", [r.preset or "-" for r in runs]),
        ("data", [escape(r.dataset or "-") for r in runs]),
        ("steps", [_steps(r.step, r.total_steps) for r in runs]),
        ("tokens", [fmt_count(r.tokens) for r in runs]),
        ("best val loss", [_loss_at(r.best_val_loss, r.best_step) for r in runs]),
        ("val ppl", [fmt_ppl(r.best_val_ppl) for r in runs]),
        ("started", [fmt_time(r.started_at) for r in runs]),
        ("duration", [fmt_duration(r.duration_s) for r in runs]),
        ("size", [fmt_bytes(r.size_bytes) for r in runs]),
    ]
    # on a narrow terminal, leave out the least telling columns rather than wrap every cell
    columns = _fit(columns, out_console.width, drop_first=["started", "preset", "data", "size", "duration"])
    table = Table(title=f"Runs in {escape(str(ws.runs_dir))}", title_justify="left")
    for header, _ in columns:
        left = header in ("run", "status", "preset", "data", "started")
        table.add_column(header, justify="left" if left else "right", no_wrap=header != "run")
    for i in range(len(runs)):
        table.add_row(*(cells[i] for _, cells in columns))
    out_console.print(table)
    _print_warnings(runs)


# ----------------------------------------------------------------------------- show


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    run: str = _run_argument("Run name, or 'latest' (the newest run)."),
    as_json: bool = JSON_OPTION,
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip the loss-curve PNG and sparkline."),
) -> None:
    """One run: config changes, metrics, checkpoints and loss curves.

    Prints the run's status, its config's differences from its preset's defaults, a
    metrics summary (last train loss, best validation loss and perplexity, tokens,
    median tokens/s), its checkpoints, and the loss curves as a terminal sparkline;
    the same curves (train and validation loss against tokens) are written to
    runs/RUN/plots/loss.png.

    Examples:

      [bold]lmforge runs show latest[/bold]

      [bold]lmforge runs show tiny-wikitext-2-20250101-120000 --json[/bold]
    """
    from lmforge.runs.listing import read_metrics, resolve_run, run_details

    run_dir = resolve_run(workspace(ctx), run)
    details = run_details(run_dir)
    plot_path = None
    metrics = read_metrics(run_dir / "metrics.jsonl")
    if not no_plot:
        from lmforge.runs.plots import plot_loss

        plot_path = plot_loss([(run_dir.name, metrics)], run_dir / "plots" / "loss.png")
    if as_json:
        print_json({**details, "plot": str(plot_path) if plot_path else None})
        return

    r, m = details["run"], details["metrics"]
    out_console.print(f"[bold]{escape(r['name'])}[/bold]  {_status(r['status'])}")
    head = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    rows = [
        ("path", escape(r["path"])),
        ("preset", r["preset"] or "-"),
        ("data", escape(r["dataset"] or "-")),
        ("started", fmt_time(r["started_at"])),
        ("duration", fmt_duration(r["duration_s"])),
        ("size", fmt_bytes(r["size_bytes"])),
    ]
    if r["error"]:
        rows.append(("error", f"[red]{escape(str(r['error']))}[/red]"))
    for key, value in rows:
        head.add_row(f"[dim]{key}[/dim]", value)
    out_console.print(head)

    diff = details["config_diff"]
    if diff:
        table = Table(title=f"Config: differences from preset {r['preset'] or 'gpt2'}", title_justify="left")
        table.add_column("key")
        table.add_column("value")
        table.add_column("preset default", style="dim")
        for c in diff:
            table.add_row(c["key"], escape(repr(c["value"])), escape(_default_text(c["default"])))
        out_console.print(table)
    else:
        out_console.print(f"Config: the defaults of preset {r['preset'] or 'gpt2'}")

    table = Table(title="Metrics", title_justify="left", show_header=False)
    table.add_column("metric", style="dim")
    table.add_column("value", justify="right")
    table.add_row("steps", _steps(r["step"], r["total_steps"]))
    table.add_row("tokens", fmt_count(r["tokens"]))
    table.add_row("last train loss", _loss_at(m["last_train_loss"], m["last_train_step"]))
    table.add_row("best val loss", _loss_at(r["best_val_loss"], r["best_step"]))
    table.add_row("best val perplexity", fmt_ppl(r["best_val_ppl"]))
    table.add_row("evaluations", str(m["evaluations"]))
    table.add_row("tokens/s (median)", fmt_count(m["tokens_per_sec_median"]))
    if m["bad_steps"]:
        table.add_row("skipped bad steps", f"[yellow]{m['bad_steps']}[/yellow]")
    out_console.print(table)

    ckpts = details["checkpoints"]
    if ckpts:
        table = Table(title="Checkpoints", title_justify="left")
        for column in ("name", "kind", "step", "tokens", "val loss", "size", "created"):
            table.add_column(
                column, justify="right" if column in ("step", "tokens", "val loss", "size") else "left"
            )
        for c in ckpts:
            table.add_row(
                escape(c["name"]),
                c["kind"],
                str(c["step"]),
                fmt_count(c["tokens"]),
                fmt_loss(c["val_loss"]),
                fmt_bytes(c["size_bytes"]),
                fmt_time(c["created_at"]),
            )
        out_console.print(table)
    else:
        out_console.print("Checkpoints: none")

    if not no_plot:
        _print_sparklines(metrics)
        if plot_path:
            out_console.print(f"Loss curves: {escape(str(plot_path))}", highlight=False, soft_wrap=True)
        else:
            info(ctx, "No losses logged yet: no plot written.")
    _print_warnings([details["run"]])


# ----------------------------------------------------------------------------- compare


@app.command("compare")
def compare_cmd(
    ctx: typer.Context,
    runs: list[str] = typer.Argument(
        ..., help="Two or more run names.", autocompletion=complete_run_names, show_default=False
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Where to write the PNG (default: <workspace>/runs/.compare/<a>-vs-<b>.png).",
        show_default=False,
        dir_okay=False,
    ),
    as_json: bool = JSON_OPTION,
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip the PNG."),
) -> None:
    """Runs side by side: one table and one loss plot.

    The table holds each run's status, steps, tokens, losses and speed, and the config
    values that differ between the runs. The plot (train and validation loss against
    tokens, one color per run) is written to runs/.compare/A-vs-B.png in the
    workspace, or to --out.

    Examples:

      [bold]lmforge runs compare RUN_A RUN_B[/bold]

      [bold]lmforge runs compare RUN_A RUN_B RUN_C --out lr-sweep.png[/bold]
    """
    from lmforge.runs.listing import compare_configs, read_metrics, resolve_run, run_info, summarize_metrics

    if len(runs) < 2:
        raise UsageError("compare needs at least two runs", "name two or more runs: lmforge runs compare A B")
    ws = workspace(ctx)
    run_dirs = []
    for spec in runs:
        path = resolve_run(ws, spec)
        if path in run_dirs:
            raise UsageError(f"run {path.name!r} is named twice", "compare different runs")
        run_dirs.append(path)
    metrics = [read_metrics(d / "metrics.jsonl") for d in run_dirs]
    infos = [run_info(d, m) for d, m in zip(run_dirs, metrics, strict=True)]
    summaries = [summarize_metrics(m) for m in metrics]
    config = compare_configs(run_dirs)

    plot_path = None
    if not no_plot:
        from lmforge.runs.plots import plot_loss

        target = out or ws.runs_dir / ".compare" / compare_file_name([d.name for d in run_dirs])
        plot_path = plot_loss([(d.name, m) for d, m in zip(run_dirs, metrics, strict=True)], target)

    if as_json:
        print_json(
            {
                "runs": [{**i.to_dict(), "metrics": s} for i, s in zip(infos, summaries, strict=True)],
                "config_differences": config,
                "plot": str(plot_path) if plot_path else None,
            }
        )
        return

    table = Table(title="Runs", title_justify="left")
    table.add_column("")
    for i in infos:
        table.add_column(escape(i.name), justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("status", [_status(i.status) for i in infos]),
        ("preset", [i.preset or "-" for i in infos]),
        ("data", [escape(i.dataset or "-") for i in infos]),
        ("steps", [_steps(i.step, i.total_steps) for i in infos]),
        ("tokens", [fmt_count(i.tokens) for i in infos]),
        ("last train loss", [_loss_at(s["last_train_loss"], s["last_train_step"]) for s in summaries]),
        ("best val loss", [_loss_at(i.best_val_loss, i.best_step) for i in infos]),
        ("best val ppl", [fmt_ppl(i.best_val_ppl) for i in infos]),
        ("tokens/s (median)", [fmt_count(s["tokens_per_sec_median"]) for s in summaries]),
        ("duration", [fmt_duration(i.duration_s) for i in infos]),
        ("size", [fmt_bytes(i.size_bytes) for i in infos]),
    ]
    for key, values in config.items():
        rows.append((f"[dim]config[/dim] {key}", [escape(_default_text(v)) for v in values]))
    best = _best_index(infos)
    for label, values in rows:
        if label == "best val loss" and best is not None:
            values = [f"[bold green]{v}[/bold green]" if j == best else v for j, v in enumerate(values)]
        table.add_row(label, *values)
    out_console.print(table)
    if not config:
        out_console.print("[dim]The runs' configs are the same (apart from their names).[/dim]")
    if plot_path:
        out_console.print(f"Loss curves: {escape(str(plot_path))}", highlight=False, soft_wrap=True)
    elif not no_plot:
        info(ctx, "No losses logged yet: no plot written.")
    _print_warnings(infos)


def compare_file_name(names: list[str]) -> str:
    """``a-vs-b.png``; a short hash stands in for the names when they would make a long file name."""
    name = "-vs-".join(names)
    if len(name) > 150:
        digest = hashlib.sha1("\0".join(names).encode()).hexdigest()[:8]
        name = f"{names[0]}-vs-{len(names) - 1}-more-{digest}"
    return f"{name}.png"


# ----------------------------------------------------------------------------- rm


def _interactive() -> bool:
    """Whether a confirmation can be asked (a person at a terminal); patched in tests."""
    return sys.stdin.isatty()


@app.command("rm")
def rm_cmd(
    ctx: typer.Context,
    run: str = _run_argument("Run name ('latest' is accepted; the real name is shown before deleting)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
    force: bool = typer.Option(False, "--force", help="Delete even if the run's process is alive."),
) -> None:
    """Delete a run directory with its checkpoints, metrics and plots.

    Asks first (on a terminal); without a terminal, pass --yes. A run that is still
    running is refused unless --force. Only directories under the workspace's runs/
    are ever deleted.

    Examples:

      [bold]lmforge runs rm tiny-wikitext-2-20250101-120000[/bold]

      [bold]lmforge runs rm tiny-wikitext-2-20250101-120000 --yes[/bold]
    """
    from lmforge.runs.listing import remove_run, resolve_run, run_info

    ws = workspace(ctx)
    run_dir = resolve_run(ws, run)
    r = run_info(run_dir)
    if r.status == "running" and not force:
        # checked here too so that nobody is asked to confirm a deletion that will be refused
        raise UsageError(
            f"run {r.name!r} is still running (pid {r.pid})",
            "stop it first (Ctrl-C saves a checkpoint), or pass --force",
        )
    if not yes:
        if not _interactive():
            raise UsageError(
                f"not deleting run {r.name!r} without confirmation (no terminal to ask on)",
                f"pass --yes: lmforge runs rm {r.name} --yes",
            )
        question = (
            f"Delete run {r.name} ({r.status}, {_steps(r.step, r.total_steps)} steps, "
            f"{fmt_bytes(r.size_bytes)}) at {r.path}?"
        )
        if not typer.confirm(question, default=False, err=True):
            err_console.print("Nothing deleted.")
            raise typer.Exit(1)
    freed = remove_run(ws, run_dir, force=force)
    info(ctx, f"Deleted run {escape(r.name)} ({fmt_bytes(freed)} freed).")


# ----------------------------------------------------------------------------- formatting


def fmt_count(n: float | None) -> str:
    """12_345_678 -> '12.3M'."""
    if n is None:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}" if float(n).is_integer() or abs(n) >= 10 else f"{n:.3g}"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


def fmt_time(value: str | None) -> str:
    """An ISO 8601 UTC time as local 'YYYY-MM-DD HH:MM'."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return value


def fmt_loss(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


def fmt_ppl(ppl: float | None) -> str:
    if ppl is None:
        return "-"
    if math.isinf(ppl):
        return "inf"
    return f"{ppl:.2f}" if ppl < 1e5 else f"{ppl:.3g}"


def _loss_at(loss: float | None, step: int | None) -> str:
    if loss is None:
        return "-"
    return fmt_loss(loss) + (f" [dim]@{step}[/dim]" if step is not None else "")


def _steps(step: int | None, total: int | None) -> str:
    if step is None:
        return "-"
    return f"{step:,}/{total:,}" if total else f"{step:,}"


def _status(status: str) -> str:
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/{style}]" if style else status


def _default_text(value: Any) -> str:
    return "(not a config field)" if value is None else repr(value)


def _best_index(infos: list) -> int | None:
    losses = [(i.best_val_loss, j) for j, i in enumerate(infos) if i.best_val_loss is not None]
    return min(losses)[1] if len(losses) > 1 else None


def _fit(
    columns: list[tuple[str, list[str]]], width: int, drop_first: list[str]
) -> list[tuple[str, list[str]]]:
    """Drop columns, in the order of ``drop_first``, until the table fits ``width``."""
    from rich.text import Text

    def needed(cols: list[tuple[str, list[str]]]) -> int:
        return 1 + sum(3 + max(len(h), *(Text.from_markup(c).cell_len for c in cells)) for h, cells in cols)

    columns = list(columns)
    for name in drop_first:
        if needed(columns) <= width:
            break
        columns = [c for c in columns if c[0] != name]
    return columns


def _print_sparklines(metrics) -> None:
    from lmforge.runs.plots import loss_sparklines

    width = max(20, min(80, out_console.width - 36))
    lines = loss_sparklines(metrics, width)
    if not lines:
        return
    out_console.print("Loss against tokens:")
    label_w = max(len(label) for label, *_ in lines)
    for label, first, line, last in lines:
        color = "cyan" if label.startswith("train") else "yellow"
        out_console.print(
            f"  {label:<{label_w}}  {first:7.3f} [{color}]{line}[/{color}] {last:.3f}", highlight=False
        )


def _print_warnings(runs: list) -> None:
    for r in runs:
        name = r["name"] if isinstance(r, dict) else r.name
        for warning in r["warnings"] if isinstance(r, dict) else r.warnings:
            err_console.print(f"[yellow]Warning:[/yellow] {escape(name)}: {escape(warning)}", highlight=False)
