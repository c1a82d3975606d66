"""``lmforge runs``: list, inspect, compare and delete training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from lmforge.cli.common import JSON_OPTION, err_console, info, out_console, print_json, workspace
from lmforge.cli.complete import complete_run_names, run_argument
from lmforge.cli.format import (
    fit_columns,
    fmt_loss,
    fmt_loss_at,
    fmt_ppl,
    fmt_status,
    fmt_steps,
    fmt_time,
    print_table,
    table_width,
)
from lmforge.units import format_bytes, format_count, format_duration

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
        ("status", [fmt_status(r.status) for r in runs]),
        ("preset", [r.preset or "-" for r in runs]),
        ("data", [escape(r.dataset or "-") for r in runs]),
        ("steps", [fmt_steps(r.step, r.total_steps) for r in runs]),
        ("tokens", [format_count(r.tokens) for r in runs]),
        ("best val loss", [fmt_loss_at(r.best_val_loss, r.best_step) for r in runs]),
        ("val ppl", [fmt_ppl(r.best_val_ppl) for r in runs]),
        ("started", [fmt_time(r.started_at) for r in runs]),
        ("duration", [format_duration(r.duration_s) for r in runs]),
        ("size", [format_bytes(r.size_bytes) for r in runs]),
    ]
    columns = fit_columns(
        columns, table_width(out_console), drop_first=["started", "preset", "data", "size", "duration"]
    )
    table = Table(title=f"Runs in {escape(str(ws.runs_dir))}", title_justify="left")
    for header, _ in columns:
        left = header in ("run", "status", "preset", "data", "started")
        table.add_column(header, justify="left" if left else "right", no_wrap=header != "run")
    for i in range(len(runs)):
        table.add_row(*(cells[i] for _, cells in columns))
    print_table(out_console, table)
    _print_warnings(runs)


# ----------------------------------------------------------------------------- show


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    run: str = run_argument("Run name, or 'latest' (the newest run)."),
    as_json: bool = JSON_OPTION,
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip the loss-curve PNG and sparkline."),
) -> None:
    """One run: config changes, metrics, checkpoints, task evaluations and loss curves.

    Prints the run's status, its config's differences from its preset's defaults, a
    metrics summary (last train loss, best validation loss and perplexity, tokens,
    median tokens/s), its checkpoints, the task results that [bold]lmforge eval --tasks[/bold]
    saved beside them (newest first), and the loss curves as a terminal sparkline;
    the same curves (train and validation loss against tokens) are written to
    runs/RUN/plots/loss.png.

    Examples:

      [bold]lmforge runs show latest[/bold]

      [bold]lmforge runs show tiny-wikitext-2-20250101-120000 --json[/bold]
    """
    from lmforge.runs.listing import run_details
    from lmforge.runs.metrics import read_metrics
    from lmforge.runs.names import resolve_run
    from lmforge.runs.plots import plot_run
    from lmforge.workspace import RunDir

    run_dir = resolve_run(workspace(ctx), run)
    metrics = read_metrics(RunDir(run_dir).metrics_file)
    details = run_details(run_dir, metrics)
    plot_path = None if no_plot else plot_run(run_dir, metrics)
    if as_json:
        print_json({**details, "plot": str(plot_path) if plot_path else None})
        return

    r, m = details["run"], details["metrics"]
    out_console.print(f"[bold]{escape(r['name'])}[/bold]  {fmt_status(r['status'])}")
    head = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    rows = [
        ("path", escape(r["path"])),
        ("preset", r["preset"] or "-"),
        ("data", escape(r["dataset"] or "-")),
        ("started", fmt_time(r["started_at"])),
        ("duration", format_duration(r["duration_s"])),
        ("size", format_bytes(r["size_bytes"])),
    ]
    if r["error"]:
        rows.append(("error", f"[red]{escape(str(r['error']))}[/red]"))
    for key, value in rows:
        head.add_row(f"[dim]{key}[/dim]", value)
    print_table(out_console, head)

    diff = details["config_diff"]
    if diff:
        table = Table(title=f"Config: differences from preset {r['preset'] or 'gpt2'}", title_justify="left")
        table.add_column("key")
        table.add_column("value")
        table.add_column("preset default", style="dim")
        for c in diff:
            table.add_row(c["key"], escape(repr(c["value"])), escape(_default_text(c["default"])))
        print_table(out_console, table)
    else:
        out_console.print(f"Config: the defaults of preset {r['preset'] or 'gpt2'}")

    table = Table(title="Metrics", title_justify="left", show_header=False)
    table.add_column("metric", style="dim")
    table.add_column("value", justify="right")
    table.add_row("steps", fmt_steps(r["step"], r["total_steps"]))
    table.add_row("tokens", format_count(r["tokens"]))
    table.add_row("last train loss", fmt_loss_at(m["last_train_loss"], m["last_train_step"]))
    table.add_row("best val loss", fmt_loss_at(r["best_val_loss"], r["best_step"]))
    table.add_row("best val perplexity", fmt_ppl(r["best_val_ppl"]))
    table.add_row("evaluations", str(m["evaluations"]))
    table.add_row("tokens/s (median)", format_count(m["tokens_per_sec_median"]))
    if m["bad_steps"]:
        table.add_row("skipped bad steps", f"[yellow]{m['bad_steps']}[/yellow]")
    print_table(out_console, table)

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
                format_count(c["tokens"]),
                fmt_loss(c["val_loss"]),
                format_bytes(c["size_bytes"]),
                fmt_time(c["created_at"]),
            )
        print_table(out_console, table)
    else:
        out_console.print("Checkpoints: none")
    if details["evals"]:
        print_table(out_console, _evals_table(details["evals"]))

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
        None, help="Two or more run names.", autocompletion=complete_run_names, show_default=False
    ),
    group: list[str] = typer.Option(
        None,
        "--group",
        help="A sweep's name: its settings with means and 95% intervals over seeds; repeat it to "
        "compare the settings of several sweeps (labelled sweep=NAME).",
        show_default=False,
    ),
    baseline: list[str] = typer.Option(
        None,
        "--baseline",
        help="With --group: the setting the others are tested against (KEY=VALUE, repeat for more keys; "
        "sweep=NAME with several --group); its final mean loss is the target unless --target-loss.",
        show_default=False,
    ),
    target_loss: float = typer.Option(
        None,
        "--target-loss",
        help="With --group: the loss whose tokens-to-reach is reported.",
        show_default=False,
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Where to write the PNG (default: <workspace>/runs/.compare/<a>-vs-<b>.png).",
        show_default=False,
        dir_okay=False,
    ),
    as_json: bool = JSON_OPTION,
    as_markdown: bool = typer.Option(
        False, "--markdown", help="With --group: print the table as Markdown (for a README or a paper)."
    ),
    no_plot: bool = typer.Option(False, "--no-plot", help="Skip the PNG."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
) -> None:
    """Runs side by side: one table and one loss plot.

    The table holds each run's status, steps, tokens, losses and speed, and the config
    values that differ between the runs. The plot (train and validation loss against
    tokens, one color per run) is written to runs/.compare/A-vs-B.png in the
    workspace, or to --out.

    Examples:

      [bold]lmforge runs compare RUN_A RUN_B[/bold]

      [bold]lmforge runs compare RUN_A RUN_B RUN_C --out lr-sweep.png[/bold]

      [bold]lmforge runs compare --group recipes --baseline recipe=gpt2[/bold]   (a sweep: means,
      95% intervals over seeds, tokens to the baseline's final loss, Welch p-values)

      [bold]lmforge runs compare --group pgpt2 --group pmodern --baseline sweep=pgpt2[/bold]   (several
      sweeps: one setting per sweep and grid value)

      [bold]lmforge runs compare --group recipes --baseline recipe=gpt2 --markdown --no-plot[/bold]   (the
      same table as Markdown, for a README)
    """
    from lmforge.errors import UsageError
    from lmforge.runs.compare import compare_runs

    if group:
        if runs:
            raise UsageError("--group and run names cannot be combined", "compare a sweep, or name runs")
        from lmforge.cli.sweep import compare_group

        compare_group(ctx, group, baseline or [], target_loss, out, force, no_plot, as_json, as_markdown)
        return
    if baseline or target_loss is not None or as_markdown:
        raise UsageError(
            "--baseline, --target-loss and --markdown need --group", "name a sweep: --group NAME"
        )
    if out is not None and not no_plot and (out.exists() or out.is_symlink()) and not force:
        raise UsageError(f"--out {out} already exists", "pass --force to replace it, or choose another --out")
    comparison = compare_runs(workspace(ctx), runs, plot=not no_plot, out=out)
    if as_json:
        print_json(comparison.to_dict())
        return
    infos, summaries, config = comparison.infos, comparison.summaries, comparison.config
    plot_path = comparison.plot

    table = Table(title="Runs", title_justify="left")
    table.add_column("")
    for i in infos:
        table.add_column(escape(i.name), justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("status", [fmt_status(i.status) for i in infos]),
        ("preset", [i.preset or "-" for i in infos]),
        ("data", [escape(i.dataset or "-") for i in infos]),
        ("steps", [fmt_steps(i.step, i.total_steps) for i in infos]),
        ("tokens", [format_count(i.tokens) for i in infos]),
        ("last train loss", [fmt_loss_at(s["last_train_loss"], s["last_train_step"]) for s in summaries]),
        ("best val loss", [fmt_loss_at(i.best_val_loss, i.best_step) for i in infos]),
        ("best val ppl", [fmt_ppl(i.best_val_ppl) for i in infos]),
        ("tokens/s (median)", [format_count(s["tokens_per_sec_median"]) for s in summaries]),
        ("duration", [format_duration(i.duration_s) for i in infos]),
        ("size", [format_bytes(i.size_bytes) for i in infos]),
    ]
    for key, values in config.items():
        rows.append((f"[dim]config[/dim] {key}", [escape(_default_text(v)) for v in values]))
    best = _best_index(infos)
    for label, values in rows:
        if label == "best val loss" and best is not None:
            values = [f"[bold green]{v}[/bold green]" if j == best else v for j, v in enumerate(values)]
        table.add_row(label, *values)
    print_table(out_console, table)
    if not config:
        out_console.print("[dim]The runs' configs are the same (apart from their names).[/dim]")
    if plot_path:
        out_console.print(f"Loss curves: {escape(str(plot_path))}", highlight=False, soft_wrap=True)
    elif not no_plot:
        info(ctx, "No losses logged yet: no plot written.")
    _print_warnings(infos)


# ----------------------------------------------------------------------------- rm


@app.command("rm")
def rm_cmd(
    ctx: typer.Context,
    run: str = run_argument("Run name ('latest' is accepted; the real name is shown before deleting)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
    force: bool = typer.Option(False, "--force", help="Delete even if the run's process is alive."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show which run would be deleted and its size; delete nothing."
    ),
) -> None:
    """Delete a run directory with its checkpoints, metrics and plots.

    Asks first (on a terminal); without a terminal, pass --yes. A run that is still
    running is refused unless --force. Only directories under the workspace's runs/
    are ever deleted. --dry-run shows what would be deleted (the real name of 'latest').

    Examples:

      [bold]lmforge runs rm latest --dry-run[/bold]

      [bold]lmforge runs rm tiny-wikitext-2-20250101-120000[/bold]

      [bold]lmforge runs rm tiny-wikitext-2-20250101-120000 --yes[/bold]
    """
    from lmforge.runs.listing import check_removable, remove_run, run_info
    from lmforge.runs.names import resolve_run

    ws = workspace(ctx)
    run_dir = resolve_run(ws, run)
    r = run_info(run_dir)
    # before asking, so that nobody is asked to confirm a deletion that will be refused
    check_removable(r, force=force)
    what = (
        f"run {r.name} ({r.status}, {fmt_steps(r.step, r.total_steps)} steps, {format_bytes(r.size_bytes)})"
    )
    if dry_run:
        out_console.print(
            f"Would delete {escape(what)} at {escape(str(r.path))}", highlight=False, soft_wrap=True
        )
        info(ctx, "Nothing deleted (--dry-run).")
        return
    if not yes:
        from lmforge.cli.common import confirm_deletion

        confirm_deletion(
            f"Delete {what} at {r.path}?",
            refusal=f"not deleting run {r.name!r} without confirmation (no terminal to ask on)",
            hint=f"pass --yes: lmforge runs rm {r.name} --yes",
        )
    freed = remove_run(ws, run_dir, force=force)
    info(ctx, f"Deleted run {escape(r.name)} ({format_bytes(freed)} freed).")


# ----------------------------------------------------------------------------- helpers


def _default_text(value: Any) -> str:
    return "(not a config field)" if value is None else repr(value)


def _best_index(infos: list) -> int | None:
    losses = [(i.best_val_loss, j) for j, i in enumerate(infos) if i.best_val_loss is not None]
    return min(losses)[1] if len(losses) > 1 else None


# metrics per saved file in the table; `ckpt show RUN:CKPT` and --json hold them all
HEADLINE_METRICS = 3


def _evals_table(evals: list[dict[str, Any]]) -> Table:
    """One row per saved ``eval --tasks`` file: checkpoint, task(s), metrics, when."""
    table = Table(title="Task evaluations (lmforge eval --tasks)", title_justify="left")
    table.add_column("checkpoint", no_wrap=True)
    table.add_column("task")
    table.add_column("metrics")
    table.add_column("saved", no_wrap=True)
    for e in evals:
        table.add_row(
            escape(e["checkpoint"]),
            escape(", ".join(e["tasks"]) or "-"),
            escape(_headline(e["rows"], several_tasks=len(e["tasks"]) > 1)),
            fmt_time(e["created"]),
        )
    return table


def _headline(rows: list[dict[str, Any]], *, several_tasks: bool) -> str:
    """``acc 0.6250 ±0.0312, acc_norm 0.6000 ±0.0310``: the first metrics of a saved file."""
    parts = []
    for row in rows[:HEADLINE_METRICS]:
        name = str(row.get("metric"))
        if row.get("filter") not in (None, "none"):  # lm-eval's default filter says nothing
            name += f" ({row['filter']})"
        if several_tasks:
            name = f"{row.get('task')} {name}"
        value, stderr = row.get("value"), row.get("stderr")
        text = f"{name} {value:.4f}" if _is_number(value) else f"{name} -"
        parts.append(text + (f" ±{stderr:.4f}" if _is_number(stderr) else ""))
    if len(rows) > HEADLINE_METRICS:
        parts.append(f"+{len(rows) - HEADLINE_METRICS} more")
    return ", ".join(parts) or "-"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
