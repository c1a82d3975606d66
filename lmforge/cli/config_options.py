"""Every ``TrainingConfig`` field as a command-line option, generated from the
dataclasses so that no default or help text is written twice."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import typer

from lmforge.config import ConfigField, config_fields

PANELS = {
    "model": "Model",
    "data": "Data",
    "optim": "Optimizer",
    "train": "Training",
    "checkpoint": "Checkpoints",
    "logging": "Logging",
}


def _param_name(f: ConfigField) -> str:
    return "cfg__" + "__".join(f.path)


def _parameter(f: ConfigField) -> inspect.Parameter:
    decls = [f"--{f.flag}/--no-{f.flag}"] if f.type is bool else [f"--{f.flag}"]
    default_text = (
        "none" if f.default is None else str(f.default).lower() if f.type is bool else str(f.default)
    )
    option = typer.Option(
        None,
        *decls,
        help=f.help,
        show_default=default_text,
        rich_help_panel=PANELS.get(f.path[0], "Run") if len(f.path) > 1 else "Run",
    )
    annotation = f.type if f.type is not bool else bool | None
    return inspect.Parameter(
        _param_name(f), inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def with_config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per config field to a Typer command.

    The command receives ``overrides``: ``{("optim", "lr"): 3e-4, ...}`` holding only
    the options given on the command line (``None`` means "not given").
    """
    fields = config_fields()
    own_hints = get_type_hints(func)
    own = [
        p.replace(annotation=own_hints.get(p.name, p.annotation))
        for p in inspect.signature(func).parameters.values()
        if p.name != "overrides"
    ]
    extra = [_parameter(f) for f in fields]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        overrides = {}
        for f in fields:
            value = kwargs.pop(_param_name(f), None)
            if value is not None:
                overrides[f.path] = value
        return func(*args, overrides=overrides, **kwargs)

    params = own + extra
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
