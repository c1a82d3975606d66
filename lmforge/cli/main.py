"""The ``lmforge`` command: the root options, the command groups, and the one
place where library errors become a red line on stderr and an exit code."""

from __future__ import annotations

import typer
from rich.markup import escape
from typer.core import TyperGroup

from lmforge import __version__
from lmforge.cli import ckpt as ckpt_cli
from lmforge.cli import data as data_cli
from lmforge.cli import eval as eval_cmd
from lmforge.cli import generate as generate_cmd
from lmforge.cli import info as info_cmd
from lmforge.cli import runs as runs_cli
from lmforge.cli import sweep as sweep_cmd
from lmforge.cli import tokenizer as tokenizer_cli
from lmforge.cli import train as train_cmd
from lmforge.cli.argv import ClickUsageError, hoist_root_options, render_usage_error
from lmforge.cli.common import AppState, err_console
from lmforge.cli.help_style import polish
from lmforge.errors import LmforgeError


class ErrorRenderingGroup(TyperGroup):
    """The root group: turns an ``LmforgeError`` raised anywhere below into one
    rendered message and its exit code, so that the console script and
    ``CliRunner`` behave the same."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_root_options(self, ctx, args))

    def make_context(self, info_name, args, parent=None, **extra):
        if parent is None:
            polish(self)
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except ClickUsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except LmforgeError as exc:
            verbose = isinstance(ctx.obj, AppState) and ctx.obj.verbose
            render_error(exc, traceback=verbose)
            raise typer.Exit(exc.exit_code) from None
        except ClickUsageError as exc:
            _usage_error(exc)


def _usage_error(exc: Exception):
    """A mistake in the command line: one line and a hint like every other error, exit 2.
    A group called without a command still shows its help (Click's NoArgsIsHelpError)."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        raise exc
    render_usage_error(exc)
    raise typer.Exit(2) from None


app = typer.Typer(
    name="lmforge",
    cls=ErrorRenderingGroup,
    help="Pretrain GPT-2-style language models from scratch.\n\n"
    "Typical session:\n\n"
    "  lmforge data prepare wikitext-103\n\n"
    "  lmforge train --steps 300000\n\n"
    "  lmforge eval best\n\n"
    '  lmforge generate best --temperature 0.8 "The history of"',
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lmforge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    workspace: str = typer.Option(
        None,
        "--workspace",
        envvar="LMFORGE_HOME",
        help="Workspace directory for datasets, runs and tokenizers "
        "(default: the per-user data directory, e.g. ~/.local/share/lmforge).",
        show_default=False,
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More output; tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only results and errors."),
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    ctx.obj = AppState(workspace_path=workspace, verbose=verbose, quiet=quiet)


# In the order of a session: set up, data, train, evaluate, sample, manage.
app.command("info")(info_cmd.info)
app.add_typer(tokenizer_cli.app, name="tokenizer")
app.add_typer(data_cli.app, name="data")
app.command("train")(train_cmd.train)
app.command("eval")(eval_cmd.eval_command)
app.command("generate")(generate_cmd.generate_command)
app.add_typer(ckpt_cli.app, name="ckpt")
app.add_typer(runs_cli.app, name="runs")
app.command("sweep")(sweep_cmd.sweep)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``lmforge`` and ``python -m lmforge``)."""
    app(args=argv, prog_name="lmforge")


def render_error(exc: LmforgeError, traceback: bool = False) -> None:
    """One red line naming what went wrong, then the hint; a traceback only with ``-v``."""
    if traceback:
        err_console.print_exception(show_locals=False)
    err_console.print(f"[bold red]Error:[/bold red] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[dim]Hint:[/dim] {escape(exc.hint)}", highlight=False, soft_wrap=True)
