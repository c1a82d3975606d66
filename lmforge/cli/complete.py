"""Shell completion of run, checkpoint, dataset, preset and recipe names, and the RUN / CKPT
arguments that use it; commands attach the completers to their options with
``autocompletion=``.

Completion runs on every TAB: it reads only directory names and ``meta.json`` files, and a
workspace it cannot read completes nothing rather than printing an error into the shell."""

from __future__ import annotations

from typing import Any

import typer

from lmforge.errors import LmforgeError
from lmforge.workspace import Workspace

CKPT_HELP = "Checkpoint: best, latest, RUN, RUN:best, RUN:latest, RUN:step-N, or a directory."


def _workspace(ctx: typer.Context) -> Workspace | None:
    # completion runs before the root callback, so the option is read from the parsed params
    try:
        return Workspace.resolve(ctx.find_root().params.get("workspace"))
    except LmforgeError:  # e.g. LMFORGE_HOME is a file: the command itself will say so
        return None


def _matching(names: list[str], incomplete: str) -> list[str]:
    return [n for n in names if n.startswith(incomplete)]


def complete_run_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for RUN arguments: ``latest`` and the runs of the workspace."""
    ws = _workspace(ctx)
    return _matching(["latest", *(ws.run_names() if ws else [])], incomplete)


def complete_checkpoint_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for CKPT: best, latest, RUN, and RUN:NAME once a run is typed."""
    from lmforge.checkpoint.listing import list_checkpoints

    ws = _workspace(ctx)
    runs = ws.run_names() if ws else []
    names = ["best", "latest", *runs]
    run, sep, _ = incomplete.partition(":")
    if sep and ws and run in runs:
        names = [f"{run}:latest", *(f"{run}:{c.name}" for c in list_checkpoints(ws.run_dir(run)))]
    return _matching(names, incomplete)


def complete_dataset_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for datasets: the prepared ones of the workspace."""
    ws = _workspace(ctx)
    return _matching(ws.dataset_names() if ws else [], incomplete)


def complete_presets(incomplete: str) -> list[str]:
    """Shell completion for ``--preset``."""
    from lmforge.presets import PRESETS

    return _matching(list(PRESETS), incomplete)


def complete_recipes(incomplete: str) -> list[str]:
    """Shell completion for ``--recipe``."""
    from lmforge.presets import RECIPES

    return _matching(list(RECIPES), incomplete)


def run_argument(help: str, *, optional: bool = False) -> Any:
    """A RUN argument with completion; ``optional`` ones default to None."""
    return typer.Argument(
        None if optional else ..., help=help, autocompletion=complete_run_names, show_default=False
    )


def checkpoint_argument() -> Any:
    """A CKPT argument with completion."""
    return typer.Argument(..., help=CKPT_HELP, autocompletion=complete_checkpoint_names, show_default=False)
