"""``lmforge train``: parse options into a TrainingConfig, then hand it to the trainer."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from lmforge.cli.common import out_console, print_json
from lmforge.cli.config_options import with_config_options
from lmforge.config import resolve_config
from lmforge.errors import LmforgeError


@with_config_options
def train(
    ctx: typer.Context,
    config_file: str = typer.Option(
        None, "--config", help="TOML file with config values.", show_default=False
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and costs, then exit."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: machine-readable JSON."),
    overrides: dict | None = None,
) -> None:
    """Train a GPT-2-style model on a prepared dataset.

    Examples:

      [bold]lmforge train --steps 300000[/bold]   (GPT-2 small on WikiText-103)

      [bold]lmforge train --preset tiny --data wikitext-2 --steps 2000[/bold]   (a CPU run)

      [bold]lmforge train --preset gpt2-medium --dry-run[/bold]   (sizes, FLOPs and memory only)
    """
    preset = (overrides or {}).pop(("preset",), None)
    config = resolve_config(config_file, preset, overrides)
    if dry_run:
        from lmforge.estimate import plan

        report = plan(config)
        if as_json:
            print_json(report)
        else:
            _print_plan(report)
        return
    raise LmforgeError("training is not available in this build yet", "use --dry-run to inspect a config")


def _print_plan(report: dict[str, Any]) -> None:
    from lmforge.config import dumps_toml

    out_console.print(dumps_toml(report["config"]), highlight=False, markup=False)
    table = Table(title="Plan", show_header=False)
    p, m = report["parameters"], report["memory_bytes"]
    rows = [
        ("parameters", f"{p['total']:,}"),
        ("without position embeddings", f"{p['without_position_embeddings']:,}"),
        ("non-embedding", f"{p['non_embedding']:,}"),
        ("tokens per optimizer step", f"{report['tokens_per_step']:,}"),
        ("tokens in total", f"{report['total_tokens']:,}"),
        ("FLOPs per token", f"{report['flops_per_token']:.3e}"),
        ("FLOPs per step", f"{report['flops_per_step']:.3e}"),
        ("memory: weights + grads + AdamW", f"{m['total'] / 2**30:.2f} GiB"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    out_console.print(table)
