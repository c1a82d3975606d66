"""``lmforge sweep``: a grid of settings times seeds, each a normal run, run one after the other;
the statistics are ``lmforge runs compare --group NAME``."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from lmforge.cli.common import err_console, info, out_console, print_json, state, workspace
from lmforge.cli.config_options import with_config_options
from lmforge.cli.format import print_table


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

      [bold]lmforge runs compare --group recipes --baseline recipe=gpt2[/bold]
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
        setting = ", ".join(f"{k}={v}" for k, v in point.setting)
        info(
            ctx,
            f"[bold]sweep {escape(name)}[/bold] {i}/{n}: {escape(point.run)} ({escape(setting)}, "
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
        setting = ", ".join(f"{k}={v}" for k, v in row["setting"].items())
        table.add_row(escape(row["run"]), escape(setting), str(row["seed"]), row["state"])
    print_table(out_console, table)
