"""What every command shares: the workspace from the root options, the two
consoles (messages and progress on stderr, results on stdout so that ``--json``
output parses cleanly), shared options, and the confirmation before a deletion."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console

from lmforge.errors import UsageError
from lmforge.workspace import Workspace

err_console = Console(stderr=True)
out_console = Console()


@dataclass
class AppState:
    """The root options, kept in ``ctx.obj``."""

    workspace_path: str | None = None
    verbose: bool = False
    quiet: bool = False

    @property
    def workspace(self) -> Workspace:
        return Workspace.resolve(self.workspace_path)


# Options several commands share, defined once so their spelling and help never drift.
JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON.")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
DTYPE_OPTION = typer.Option("auto", "--dtype", help="auto, bf16, fp16 or fp32 (autocast).")


def state(ctx: typer.Context) -> AppState:
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):
        root.obj = AppState()
    return root.obj


def workspace(ctx: typer.Context) -> Workspace:
    return state(ctx).workspace


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, no Rich markup."""
    typer.echo(json.dumps(data, indent=2, default=str))


def info(ctx: typer.Context, message: str) -> None:
    """A progress/status message on stderr, silenced by ``--quiet``."""
    if not state(ctx).quiet:
        err_console.print(message)


def interactive() -> bool:
    """Whether a confirmation can be asked (a person at a terminal); patched in tests."""
    return sys.stdin.isatty()


def confirm_deletion(question: str, *, refusal: str, hint: str) -> None:
    """Ask ``question`` on stderr and exit 1 unless the answer is yes. Without a terminal to
    ask on nothing is deleted: a UsageError says ``refusal`` and ``hint`` (pass --yes)."""
    if not interactive():
        raise UsageError(refusal, hint)
    if not typer.confirm(question, default=False, err=True):
        err_console.print("Nothing deleted.")
        raise typer.Exit(1)
