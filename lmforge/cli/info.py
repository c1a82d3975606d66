"""``lmforge info``: what this installation can do."""

from __future__ import annotations

import platform

import typer
from rich.markup import escape
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
    for key, value in _rows(facts):
        table.add_row(f"[bold]{escape(key)}[/bold]", escape(value))
    out_console.print(table)


def _rows(facts: dict) -> list[tuple[str, str]]:
    """The facts as a person reads them: words for keys, yes/no, one row per tokenizer."""
    rows = []
    for key, value in facts.items():
        label = key.replace("_", " ")
        if isinstance(value, dict):
            rows += [(f"{label.rstrip('s')} {name}", str(v)) for name, v in value.items()]
        elif isinstance(value, bool):
            rows.append((label, "yes" if value else "no"))
        else:
            rows.append((label, "-" if value is None else str(value)))
    return rows


def _tokenizer_status(ws) -> dict[str, str]:
    from lmforge.data.tokenizer import tokenizer_status

    return tokenizer_status(ws)
