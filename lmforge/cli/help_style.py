"""Help that reads clean at 80 columns, applied once to the built command tree.

Typer's own rendering writes a type after every option, ``<bool>`` for flags that
take no value, and braces around arguments in usage lines (``{name}``,
``{CKPT...}...``). Here a flag shows no type, an argument reads as its upper-case
name (``NAME``, ``[PROMPT]``, ``CKPT...``) in the usage line, the Arguments panel
and the error that names it.
"""

from __future__ import annotations

import types
from typing import Any


def _argument_usage(param: Any, ctx: Any) -> list[str]:
    name = param.metavar or param.name.upper()
    if param.nargs != 1 and not name.endswith("..."):
        name += "..."
    if not param.required and not name.startswith("["):
        name = f"[{name}]"
    return [name]


def _quiet_flag(option: Any) -> Any:
    if option is not None and option.metavar is None:
        option.metavar = ""  # a flag takes no value: no "<bool>" beside it
    return option


def polish(command: Any) -> None:
    """Set the display of every parameter under ``command`` (a Click command or group)."""
    if not getattr(command, "_lmforge_polished", False):
        # -h/--help is made on demand, per command
        make_help = command.get_help_option
        command.get_help_option = lambda ctx: _quiet_flag(make_help(ctx))
        command._lmforge_polished = True
    for param in getattr(command, "params", []):
        kind = getattr(param, "param_type_name", "")
        if kind == "option" and getattr(param, "is_flag", False):
            _quiet_flag(param)
        elif kind == "argument":
            if param.metavar is None:
                param.metavar = param.name.upper()
            # an instance attribute: Typer builds these objects and offers no hook for the usage line
            param.get_usage_pieces = types.MethodType(_argument_usage, param)
    for sub in getattr(command, "commands", {}).values():
        polish(sub)
