"""Shell completion of run and checkpoint names, and the RUN / CKPT arguments that use it.

Completion runs on every TAB: it reads only directory names and ``meta.json`` files."""

from __future__ import annotations

from typing import Any

import typer

from lmforge.workspace import Workspace

CKPT_HELP = "Checkpoint: best, latest, RUN, RUN:best, RUN:latest, RUN:step-N, or a directory."


def _workspace(ctx: typer.Context) -> Workspace:
    # completion runs before the root callback, so the option is read from the parsed params
    return Workspace.resolve(ctx.find_root().params.get("workspace"))


def complete_run_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for RUN arguments: ``latest`` and the runs of the workspace."""
    names = ["latest", *_workspace(ctx).run_names()]
    return [n for n in names if n.startswith(incomplete)]


def complete_checkpoint_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for CKPT: best, latest, RUN, and RUN:NAME once a run is typed."""
    from lmforge.checkpoint.listing import list_checkpoints

    ws = _workspace(ctx)
    names = ["best", "latest", *ws.run_names()]
    run, sep, _ = incomplete.partition(":")
    if sep and run in ws.run_names():
        names = [f"{run}:latest", *(f"{run}:{c.name}" for c in list_checkpoints(ws.run_dir(run)))]
    return [n for n in names if n.startswith(incomplete)]


def run_argument(help: str, *, optional: bool = False) -> Any:
    """A RUN argument with completion; ``optional`` ones default to None."""
    return typer.Argument(
        None if optional else ..., help=help, autocompletion=complete_run_names, show_default=False
    )


def checkpoint_argument() -> Any:
    """A CKPT argument with completion."""
    return typer.Argument(..., help=CKPT_HELP, autocompletion=complete_checkpoint_names, show_default=False)
