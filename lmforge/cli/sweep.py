"""``lmforge sweep``: a grid of settings times seeds, each a normal run, run one after the other;
and the table ``lmforge runs compare --group NAME`` prints of a sweep's settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from lmforge.cli.common import err_console, info, out_console, print_json, state, workspace
from lmforge.cli.config_options import with_config_options
from lmforge.cli.format import print_table

if TYPE_CHECKING:
    from lmforge.runs.group import GroupReport


@with_config_options
def sweep(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The sweep's name: its runs are NAME-<setting>-s<seed>."),
    grid: list[str] = typer.Option(
        None,
        "--grid",
        help="KEY=V1,V2,...: a train option (lr, recipe, preset, block-size, ...) and its values; "
        "repeat for more keys (every combination is run).",
        show_default=False,
    ),
    seeds: str = typer.Option("1", "--seeds", help="Seeds of every setting: 1-5, or 1,2,3."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and what each would do, then exit."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs (and what was done) as JSON."),
    overrides: dict | None = None,
) -> None:
    """Run every combination of --grid values for every seed, as normal runs in one group.

    Runs go one after the other on this machine. Run the same command again to continue an
    interrupted sweep: finished runs are not run again, an interrupted one resumes from its
    newest full checkpoint. Any train option given outside --grid applies to every run.
    Compare the settings with: lmforge runs compare --group NAME [--baseline KEY=VALUE].

    Examples:

      [bold]lmforge sweep recipes --preset tiny --data wikitext-2 --grid recipe=gpt2,modern --seeds 1-5[/bold]

      [bold]lmforge sweep lr --preset tiny --grid lr=5e-4,1e-3,2e-3 --seeds 1-3 --steps 500[/bold]

      [bold]lmforge sweep pmodern --preset tiny --recipe modern --seeds 1-5[/bold]   (no grid: one setting)

      [bold]lmforge runs compare --group recipes --baseline recipe=gpt2[/bold]

      [bold]lmforge runs compare --group pgpt2 --group pmodern --baseline sweep=pgpt2[/bold]
    """
    from lmforge.errors import UsageError
    from lmforge.runs.sweeps import Sweep, parse_grid, parse_seeds
    from lmforge.train.sweep import point_state
    from lmforge.workspace import is_valid_name

    if not is_valid_name(name):
        raise UsageError(
            f"invalid sweep name {name!r}",
            "use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    overrides = dict(overrides or {})
    preset = overrides.pop(("preset",), None)
    for path, flag in ((("run",), "--run"), (("train", "seed"), "--seed")):
        if path in overrides:
            raise UsageError(
                f"{flag} cannot be given to a sweep",
                "each run is named after the sweep and its setting; seeds come from --seeds",
            )
    spec = Sweep(
        name=name,
        grid=parse_grid(grid or []),
        seeds=parse_seeds(seeds),
        preset=preset,
        base={".".join(path): value for path, value in overrides.items()},
    )
    ws = workspace(ctx)
    if dry_run:
        rows = [{**p.to_dict(), "state": point_state(ws, p)} for p in spec.points()]
        if as_json:
            print_json({"sweep": name, "runs": rows})
        else:
            _print_points(rows)
        return

    from lmforge.train.sweep import run_sweep

    def announce(i: int, n: int, point, point_state_: str) -> None:
        what = {"finished": "finished already, skipped", "resume": "resuming", "new": "starting"}
        setting = "".join(f"{k}={v}, " for k, v in point.setting)
        info(
            ctx,
            f"[bold]sweep {escape(name)}[/bold] {i}/{n}: {escape(point.run)} ({escape(setting)}"
            f"seed {point.seed}): {what[point_state_]}",
        )

    from lmforge.cli.train import _reporter

    result = run_sweep(ws, spec, reporter=_reporter(ctx), on_point=announce)
    if as_json:
        print_json(
            {
                "sweep": name,
                "trained": result.trained,
                "skipped": result.skipped,
                "stopped_at": result.stopped_at,
                "exit_code": result.exit_code,
            }
        )
    if result.exit_code:
        err_console.print(
            f"Sweep {escape(name)} stopped at {escape(result.stopped_at or '?')}: run the same command "
            "again to continue it.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(result.exit_code)
    if not as_json and not state(ctx).quiet:
        out_console.print(
            f"Sweep {escape(name)} done: {len(result.trained)} run(s) trained, {len(result.skipped)} already "
            f"finished. Compare: lmforge runs compare --group {escape(name)}",
            highlight=False,
            soft_wrap=True,
        )


def _print_points(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Sweep runs", title_justify="left")
    for column in ("run", "setting", "seed", "state"):
        table.add_column(column)
    for row in rows:
        setting = ", ".join(f"{k}={v}" for k, v in row["setting"].items()) or "-"
        table.add_row(escape(row["run"]), escape(setting), str(row["seed"]), row["state"])
    print_table(out_console, table)


def compare_group(
    ctx: typer.Context,
    names: list[str],
    baseline: list[str],
    target_loss: float | None,
    out: Path | None,
    force: bool,
    no_plot: bool,
    as_json: bool,
    as_markdown: bool = False,
) -> None:
    """``runs compare --group``: one row per setting of one or more sweeps, and one plot of mean
    curves."""
    from lmforge.errors import UsageError
    from lmforge.runs.compare import COMPARE_DIR
    from lmforge.runs.group import groups_report, mean_curve
    from lmforge.runs.plots import plot_group

    if as_json and as_markdown:
        raise UsageError("--json and --markdown cannot be combined", "choose one output format")
    ws = workspace(ctx)
    report = groups_report(ws, names, baseline=baseline, target_loss=target_loss)
    name = ", ".join(names)
    plot_path = None
    if not no_plot:
        target_file = out or ws.runs_dir / COMPARE_DIR / f"group-{'-'.join(names)}.png"
        if out is not None and (out.exists() or out.is_symlink()) and not force:
            raise UsageError(
                f"--out {out} already exists", "pass --force to replace it, or choose another --out"
            )
        plot_path = plot_group(
            [(s.label, mean_curve(s.curves)) for s in report.settings],
            target_file,
            title=f"sweep{'s' if len(names) > 1 else ''} {name}: validation loss, mean and range over seeds",
            target=report.target_loss,
        )
    if as_json:
        print_json({**report.to_dict(), "plot": str(plot_path) if plot_path else None})
        return
    header, rows = group_table_rows(report)
    title = f"Sweep{'s' if len(names) > 1 else ''} {name} (mean ± 95% interval over seeds)"
    if as_markdown:
        # plain text for a README or a paper: no Rich markup, no wrapping, the plot path as a comment
        pairs = zip(report.settings, rows, strict=True)
        rows = [[f"{r[0]} (baseline)", *r[1:]] if s.is_baseline else r for s, r in pairs]
        lines = [f"{title}:", "", markdown_table(header, rows)]
        if plot_path:
            lines += ["", f"<!-- loss curves: {plot_path} -->"]
        print("\n".join(lines))
        _warn_unfinished(report)
        return
    table = Table(title=escape(title), title_justify="left")
    for i, column in enumerate(header):
        table.add_column(escape(column), justify="left" if i == 0 else "right")
    for s, row in zip(report.settings, rows, strict=True):
        label = escape(row[0]) + (" [dim](baseline)[/dim]" if s.is_baseline else "")
        table.add_row(label, *(escape(cell) for cell in row[1:]))
    print_table(out_console, table)
    if plot_path:
        out_console.print(f"Loss curves: {escape(str(plot_path))}", highlight=False, soft_wrap=True)
    _warn_unfinished(report)


def _warn_unfinished(report: GroupReport) -> None:
    """On stderr, under either table: settings whose unfinished runs are left out of the figures."""
    unfinished = [s.label for s in report.settings if s.finished < len(s.runs)]
    if unfinished:
        err_console.print(
            f"[yellow]warning:[/yellow] {len(unfinished)} setting(s) have unfinished runs (left out of the "
            f"figures): continue with the sweep's own command",
            highlight=False,
            soft_wrap=True,
        )


def _interval(value: Any, fmt: str = "{:.4f}") -> str:
    """``6.7480 ± 0.0200``; the mean alone with one seed; ``-`` when there is none."""
    if value is None:
        return "-"
    text = fmt.format(value.mean)
    return text if value.half_width is None else f"{text} ± {fmt.format(value.half_width)}"


def group_table_rows(report: GroupReport) -> tuple[list[str], list[list[str]]]:
    """The columns and rows (plain text) of ``runs compare --group``'s table: one row per setting."""
    header = ["setting", "seeds", "val @25%", "val @50%", "val @75%", "final val loss"]
    if report.target_loss is not None:
        header.append(f"tokens to {report.target_loss:.4f}")
    if report.baseline is not None:
        header.append("p (Welch)")
    rows = []
    for s in report.settings:
        row = [s.label, f"{s.finished}/{len(s.runs)}"]
        row += [_interval(s.loss_at[f]) for f in (0.25, 0.5, 0.75)]
        row.append(_interval(s.final_loss))
        if report.target_loss is not None:
            tokens = "-"
            if s.tokens_to_target is not None:
                tokens = _interval(s.tokens_to_target, "{:,.0f}")
                base_budget = report.baseline.budget_tokens if report.baseline else s.budget_tokens
                if base_budget:
                    tokens += f" ({s.tokens_to_target.mean / base_budget:.0%})"
                if s.reached_target < s.finished:
                    tokens += f" [{s.reached_target}/{s.finished} reached]"
            row.append(tokens)
        if report.baseline is not None:
            row.append("-" if s.p_value is None else f"{s.p_value:.3g}")
        rows.append(row)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; ``|`` inside a cell is escaped."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join([line(header), "| " + " | ".join(align) + " |", *map(line, rows)])
