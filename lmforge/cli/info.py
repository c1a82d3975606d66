"""``lmforge info``: what this installation can do."""

from __future__ import annotations

import platform

import typer
from rich.table import Table

from lmforge import __version__
from lmforge.cli.common import JSON_OPTION, out_console, print_json, workspace


def info(
    ctx: typer.Context,
    as_json: bool = JSON_OPTION,
) -> None:
    """Print the version, workspace, torch build, devices and tokenizer availability.

    Example: [bold]lmforge info --json[/bold]
    """
    from lmforge.device import describe_devices

    ws = workspace(ctx)
    facts = {
        "lmforge": __version__,
        "python": platform.python_version(),
        "workspace": str(ws.root),
        "workspace_exists": ws.root.is_dir(),
        **describe_devices(),
        "tokenizers": _tokenizer_status(ws),
    }
    if as_json:
        print_json(facts)
        return
    table = Table(show_header=False, box=None)
    for key, value in facts.items():
        table.add_row(f"[bold]{key}[/bold]", str(value))
    out_console.print(table)


def _tokenizer_status(ws) -> dict[str, str]:
    from lmforge.data.tokenizer import tokenizer_status

    return tokenizer_status(ws)
