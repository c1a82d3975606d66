"""Presets and recipes as code, and the layering of a run's config sources.

``PRESETS`` chooses a model's size (and brings its training defaults, ``PRESET_TRAINING``);
``RECIPES`` chooses architecture, optimizer and schedule together. ``resolve_config`` layers
defaults < the preset's training defaults < recipe < ``--config`` file < ``--preset`` size <
options, the one place where that order is written down.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lmforge.config import ModelConfig, OptimizerConfig, TrainingConfig, with_overrides
from lmforge.errors import ConfigError
from lmforge.tomlfile import load_toml

# Presets as code. Sizes are GPT-2's; `tiny` trains usefully on a laptop CPU in minutes.
PRESETS: dict[str, ModelConfig] = {
    "gpt2": ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # 124M
    "gpt2-medium": ModelConfig(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # 350M
    "gpt2-large": ModelConfig(n_layer=36, n_head=20, n_embd=1280, block_size=1024),  # 774M
    "gpt2-xl": ModelConfig(n_layer=48, n_head=25, n_embd=1600, block_size=1024),  # 1558M
    "tiny": ModelConfig(
        n_layer=4, n_head=4, n_embd=256, block_size=256, dropout=0.0
    ),  # 16M, mostly embeddings
}


# Training defaults that fit a preset, under a file's values and the options (defaults < preset
# < file < options). GPT-2's sizes keep the seed's (the dataclass defaults); `tiny` gets the
# settings of a CPU run that learns visibly in minutes: one micro-batch per step, a short warmup,
# a higher lr for the small model, frequent quick evaluations.
PRESET_TRAINING: dict[str, dict[tuple[str, ...], Any]] = {
    "tiny": {
        ("train", "steps"): 200,
        ("train", "batch_size"): 4,
        ("train", "grad_accum"): 1,
        ("train", "eval_interval"): 50,
        ("train", "eval_tokens"): 8192,
        ("optim", "lr"): 1e-3,
        ("optim", "min_lr"): 1e-4,
        ("optim", "warmup_steps"): 20,
    },
}


# What a preset decides: the size. Everything else (dropout, bias, vocabulary, padding,
# gradient checkpointing) is the user's, so a preset never resets a value given in a file.
PRESET_SIZE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size")


# Recipes as code: what `--recipe` sets (architecture, optimizer, schedule), by config path. Every
# recipe names the same fields, so switching recipe leaves none of the other's values behind;
# `--preset` still chooses the size, and any single option beats the recipe (to ablate one lever).
# The modern values start from modded-nanogpt (Muon lr 0.02-0.05, momentum 0.95 after a warmup)
# and nanochat (AdamW: embeddings ~50x the head's lr, no weight decay), tuned on `tiny`
# (README, "Recipes"; benchmarks/recipes.py).
_RECIPE_MODERN: dict[tuple[str, ...], Any] = {
    ("model", "arch"): "modern",
    ("model", "bias"): False,
    ("model", "qk_norm"): True,
    ("model", "logit_softcap"): 15.0,
    ("model", "value_embeds"): True,  # issue 26's protocol: README, "Levers"
    ("optim", "optimizer"): "muon",
    ("optim", "schedule"): "wsd",
    ("optim", "lr"): 0.02,
    ("optim", "embed_lr"): 0.2,
    ("optim", "head_lr"): 0.004,
    ("optim", "min_lr"): 0.0,
    # a linear decay from the warmup's end (issue 26's protocol: lower loss all along the run, README
    # "Levers"); --decay-fraction 0.2 gives back the plateau a longer resume continues
    ("optim", "decay_fraction"): 1.0,
    ("optim", "weight_decay"): 0.0,
}
_DEFAULT_SECTIONS = {"model": ModelConfig(), "optim": OptimizerConfig()}
RECIPES: dict[str, dict[tuple[str, ...], Any]] = {
    "gpt2": {path: getattr(_DEFAULT_SECTIONS[path[0]], path[1]) for path in _RECIPE_MODERN},
    "modern": _RECIPE_MODERN,
}


def _check_recipe(recipe: str) -> dict[tuple[str, ...], Any]:
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}", f"choose one of: {', '.join(RECIPES)}")
    return RECIPES[recipe]


def apply_recipe(config: TrainingConfig, recipe: str) -> TrainingConfig:
    """Return ``config`` with the values of ``recipe`` (and ``recipe`` recorded)."""
    return with_overrides(config, {("recipe",): recipe, **_check_recipe(recipe)})


def _check_preset(preset: str) -> ModelConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}", f"choose one of: {', '.join(PRESETS)}")
    return PRESETS[preset]


def apply_preset(config: TrainingConfig, preset: str) -> TrainingConfig:
    """Return ``config`` with the size of ``preset`` (layers, heads, width, context); every other
    model field keeps the value ``config`` has."""
    base = _check_preset(preset)
    size = {name: getattr(base, name) for name in PRESET_SIZE_FIELDS}
    return dataclasses.replace(config, preset=preset, model=dataclasses.replace(config.model, **size))


def resolve_config(
    config_file: str | Path | None = None,
    preset: str | None = None,
    overrides: dict[tuple[str, ...], Any] | None = None,
    *,
    base_preset: str = "gpt2",
    base_recipe: str = "gpt2",
) -> TrainingConfig:
    """Layer the sources of a run's config: defaults < the preset's training defaults
    (``PRESET_TRAINING``) < recipe < TOML file < preset < overrides.

    The preset (``--preset``, else the file's own ``preset`` key, else gpt2) gives the model
    values the file's start from; ``--preset`` then sets the size (layers, heads, width,
    context) over the file's, and never any other model value the file gave;
    ``overrides`` (``{("optim", "lr"): 3e-4}``, from the other options) win. The recipe works
    like the preset: ``--recipe`` (``overrides[("recipe",)]``) beats the file's recipe values,
    a file's own ``recipe`` key is the base its values go on top of. ``base_preset`` and
    ``base_recipe`` are what neither names (``--init-from``: the checkpoint's).
    """
    data = _without_own_run_name(load_toml(config_file), config_file) if config_file else {}
    overrides = dict(overrides or {})
    recipe = overrides.pop(("recipe",), None)
    file_preset = data.get("preset", base_preset)
    # the preset's whole model (its dropout too) is the base the file's values go on top of
    base = preset or (file_preset if isinstance(file_preset, str) else base_preset)
    config = dataclasses.replace(TrainingConfig(), preset=base, model=_check_preset(base))
    if base in PRESET_TRAINING:
        config = with_overrides(config, PRESET_TRAINING[base])  # under the recipe, file and options
    # the gpt2 recipe's values are the base's own (its preset's lr, say), not the bare defaults
    gpt2_values = {path: _get(config, path) for path in RECIPES["gpt2"]}
    file_recipe = data.get("recipe", base_recipe)
    under = recipe or (file_recipe if isinstance(file_recipe, str) else base_recipe)
    if under != "gpt2":
        config = apply_recipe(config, under)
    if data:
        merged = config.to_dict()
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
        if preset:
            merged["preset"] = preset
        config = TrainingConfig.from_dict(merged, source=str(config_file))
    if preset:
        config = apply_preset(config, preset)  # --preset's size beats the file's
    if recipe:
        # --recipe beats the file's recipe values; applied with the options, so that an option
        # the new recipe needs (--n-kv-head 0 back to GPT-2) is checked together with it
        values = gpt2_values if recipe == "gpt2" else _check_recipe(recipe)
        overrides = {("recipe",): recipe, **values, **overrides}
    if overrides:
        config = with_overrides(config, overrides)
    return config


def _without_own_run_name(data: dict[str, Any], config_file: str | Path) -> dict[str, Any]:
    """``data`` without its ``run`` key when ``config_file`` is a run's own ``config.toml``:
    passed back with ``--config`` it means "a new run like that one", and its name (an
    existing run's) would only be refused. Any other file's ``run`` is kept."""
    from lmforge.workspace import RunDir

    path = Path(config_file)
    run = RunDir(path.resolve().parent)
    if path.name == RunDir.CONFIG_FILE and data.get("run") == run.name and run.run_file.is_file():
        return {k: v for k, v in data.items() if k != "run"}
    return data


def _get(config: TrainingConfig, path: tuple[str, ...]) -> Any:
    node: Any = config
    for key in path:
        node = getattr(node, key)
    return node
