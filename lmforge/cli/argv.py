"""The root options wherever they are typed, and Click's usage errors as one line.

``lmforge data prepare wikitext-2 -q`` is what people type (the README says "``-q``
silences it"); Click only reads a group's options before the command. The root group
moves them to the front before parsing, skipping the values of the command's own
options so that an option value is never taken for ``-q``.
"""

from __future__ import annotations

from typing import Any

import typer

# the root callback's options that may also follow the command: flags, and those taking a value
ROOT_FLAGS = {"-q", "--quiet", "-v", "--verbose"}
ROOT_VALUED = {"--workspace"}

# Typer exports BadParameter but not its base, Click's UsageError ("No such option",
# "Missing argument"): the family of mistakes in the command line itself.
ClickUsageError: type[Exception] = typer.BadParameter.__mro__[1]


def _is_root_flag(arg: str) -> bool:
    # -qv / -vq: short flags written together
    return arg in ROOT_FLAGS or (
        len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and set(arg[1:]) <= {"q", "v"}
    )


def _valued_options(command: Any) -> set[str]:
    """The spellings of ``command``'s options that take a value (their next word is a value)."""
    names: set[str] = set()
    for param in getattr(command, "params", []):
        if getattr(param, "param_type_name", "") == "option" and not getattr(param, "is_flag", False):
            if not getattr(param, "count", False):
                names.update(param.opts)
    return names


def hoist_root_options(group: Any, ctx: typer.Context, args: list[str]) -> list[str]:
    """``args`` with the root options typed after the command moved before it (so that
    ``--workspace`` given twice keeps the later one, as before the command)."""
    i = 0
    while i < len(args) and args[i].startswith("-"):  # the root's own options stay in place
        i += 2 if args[i] in ROOT_VALUED else 1
    front = args[:i]
    rest = args[i:]
    command: Any = group
    moved: list[str] = []
    kept: list[str] = []
    valued: set[str] = set()
    j = 0
    while j < len(rest):
        arg = rest[j]
        if arg == "--":
            kept.extend(rest[j:])
            break
        if arg in valued:  # this option's value follows, whatever it looks like
            kept.extend(rest[j : j + 2])
            j += 2
            continue
        if _is_root_flag(arg):
            moved.append(arg)
        elif arg in ROOT_VALUED and j + 1 < len(rest):
            moved.extend(rest[j : j + 2])
            j += 2
            continue
        elif arg.startswith("--workspace="):
            moved.append(arg)
        else:
            kept.append(arg)
            sub = command.get_command(ctx, arg) if hasattr(command, "get_command") else None
            if sub is not None and not arg.startswith("-"):
                command = sub
                valued = _valued_options(sub)
        j += 1
    return [*front, *moved, *kept]


def render_usage_error(exc: Any) -> None:
    """Click's usage error as lmforge's one red line and a hint, exit code 2."""
    from lmforge.cli.main import render_error
    from lmforge.errors import UsageError

    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "lmforge"
    # Typer checks choices through pydantic, whose wording leaks into Click's message
    message = exc.format_message().replace("Value error, ", "")
    render_error(UsageError(message, f"see `{where} -h`"))
