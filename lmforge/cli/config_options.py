"""Every ``TrainingConfig`` field as a command-line option, generated from the
dataclasses so that no default or help text is written twice."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import typer
from rich.markup import escape

from lmforge.cli.complete import complete_dataset_names, complete_presets, complete_recipes
from lmforge.config import ConfigField, config_fields
from lmforge.errors import UsageError

PANELS = {
    "model": "Model",
    "data": "Data",
    "optim": "Optimizer",
    "train": "Training",
    "checkpoint": "Checkpoints",
    "logging": "Logging",
}

# the fields whose values are names shell completion can list
_COMPLETERS: dict[tuple[str, ...], Callable[..., list[str]]] = {
    ("preset",): complete_presets,
    ("recipe",): complete_recipes,
    ("data", "name"): complete_dataset_names,
}


def _param_name(f: ConfigField) -> str:
    return "cfg__" + "__".join(f.path)


def _negative_name(f: ConfigField) -> str:
    return "cfgno__" + "__".join(f.path)


def _show(value: Any, is_bool: bool) -> str:
    if value is None:
        return "none"
    if is_bool:
        return "on" if value else "off"
    return str(value)


@functools.cache
def _preset_configs() -> dict[str, Any]:
    from lmforge.presets import PRESETS, resolve_config

    return {name: resolve_config(preset=name) for name in PRESETS}


def _default_text(f: ConfigField) -> str:
    """The default as a run gets it: GPT-2's (the default preset), and the other presets'
    values where they differ (``tiny`` brings its own size and training settings)."""
    if f.path == ("preset",):
        return _show(f.default, False)
    values = {}
    for name, config in _preset_configs().items():
        value = config
        for part in f.path:
            value = getattr(value, part)
        values[name] = value
    base = values.get("gpt2", f.default)
    others = {name: v for name, v in values.items() if v != base}
    text = _show(base, f.type is bool)
    if len(others) > 2:
        return f"{text} (gpt2), set by --preset"
    return "; ".join([text, *(f"{name}: {_show(v, f.type is bool)}" for name, v in others.items())])


def _parameters(f: ConfigField) -> list[inspect.Parameter]:
    """The option for ``f``; a boolean also gets a hidden ``--no-FLAG`` (shown in the help
    text rather than in a column of its own, which squeezed every panel at 80 columns)."""
    panel = PANELS.get(f.path[0], "Run") if len(f.path) > 1 else "Run"
    help_text = f.help + (f" (--no-{f.flag}: off)" if f.type is bool else "")
    option = typer.Option(
        None,
        f"--{f.flag}",
        help=f"{help_text} {escape(f'[default: {_default_text(f)}]')}",
        show_default=False,
        rich_help_panel=panel,
        autocompletion=_COMPLETERS.get(f.path),
    )
    annotation = bool | None if f.type is bool else f.type
    params = [
        inspect.Parameter(
            _param_name(f), inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
        )
    ]
    if f.type is bool:
        negative = typer.Option(None, f"--no-{f.flag}", hidden=True, rich_help_panel=panel)
        params.append(
            inspect.Parameter(
                _negative_name(f), inspect.Parameter.KEYWORD_ONLY, default=negative, annotation=bool | None
            )
        )
    return params


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
    extra = [p for f in fields for p in _parameters(f)]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        overrides = {}
        for f in fields:
            value = kwargs.pop(_param_name(f), None)
            if f.type is bool and kwargs.pop(_negative_name(f), None):
                if value:
                    raise UsageError(f"--{f.flag} and --no-{f.flag} both given", "keep one of them")
                value = False
            if value is not None:
                overrides[f.path] = value
        return func(*args, overrides=overrides, **kwargs)

    params = own + extra
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
