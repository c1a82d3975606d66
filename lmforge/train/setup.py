"""Run names and the config of a resumed run.

A run is a directory ``runs/<name>/``. Names are generated as
``<preset>-<data>-<yyyymmdd-hhmmss>`` unless given; an existing name is only
ever continued with ``--resume``, never overwritten. A resumed run takes its
config from its ``config.toml``; options given with ``--resume`` may change how
it trains (steps, lr, eval and checkpoint intervals, device, dtype...) but not
what it is (the architecture, the tokenizer, the data and its order).
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Any

from lmforge.config import TrainingConfig, apply_preset, with_overrides
from lmforge.errors import ConfigError, UsageError
from lmforge.runs.record import CONFIG_FILE
from lmforge.workspace import Workspace

RESERVED_NAMES = {"latest", "best"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Fields that define what a run is: changing them on --resume would not continue the same run.
# The data fields and batch size fix the order of the batches the data position counts.
FIXED_ON_RESUME: tuple[tuple[str, ...], ...] = (
    ("tokenizer",),
    ("data", "name"),
    ("data", "stride"),
    ("data", "sampling"),
    ("train", "batch_size"),
    ("train", "seed"),
)


def check_run_name(name: str) -> str:
    if name in RESERVED_NAMES or not NAME_PATTERN.match(name) or len(name) > 200:
        raise UsageError(
            f"invalid run name {name!r}",
            "use letters, digits, '.', '_' and '-' (not 'latest' or 'best'), starting with a letter or digit",
        )
    return name


def generate_run_name(
    workspace: Workspace, config: TrainingConfig, now: datetime.datetime | None = None
) -> str:
    """``<preset>-<data>-<yyyymmdd-hhmmss>`` (local time), with ``-2``, ``-3`` ... on a clash."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    data = re.sub(r"[^A-Za-z0-9._-]+", "-", config.data.name).strip("-") or "data"
    base = f"{config.preset}-{data}-{stamp}"
    name, n = base, 1
    while workspace.run_dir(name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def check_new_run(workspace: Workspace, name: str) -> Path:
    """The directory of a new run ``name``; an existing one is refused (nothing is overwritten)."""
    check_run_name(name)
    path = workspace.run_dir(name)
    if path.exists():
        raise UsageError(
            f"run {name!r} already exists in {workspace.runs_dir}",
            f"continue it with `lmforge train --resume {name}`, or pick another --run",
        )
    return path


def check_not_running(run_dir: Path) -> None:
    """Refuse to resume a run that a live process is still training."""
    from lmforge.runs.listing import run_info

    info = run_info(run_dir)
    if info.status == "running" and info.pid != os.getpid():
        raise UsageError(
            f"run {run_dir.name!r} is still being trained by process {info.pid}",
            "stop that process first (Ctrl-C saves a checkpoint), then resume",
        )


def _flat(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any], keys=None) -> list[str]:
    """``["model.n_layer: 4 -> 6", ...]`` for the leaves that differ (optionally only ``keys``)."""
    a, b = _flat(old), _flat(new)
    paths = sorted(set(a) | set(b)) if keys is None else list(keys)
    return [f"{'.'.join(p)}: {a.get(p)!r} -> {b.get(p)!r}" for p in paths if a.get(p) != b.get(p)]


def architecture_diff(old: TrainingConfig, new: TrainingConfig) -> list[str]:
    """Differences in the model's shape (dropout and gradient checkpointing may change)."""
    shape = [("model", k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")]
    shape.append(("model", "layer_norm_epsilon"))
    return config_diff(old.to_dict(), new.to_dict(), shape)


def resume_config(
    run_dir: Path, overrides: dict[tuple[str, ...], Any] | None = None, preset: str | None = None
) -> TrainingConfig:
    """The config of the run in ``run_dir`` with ``preset`` and ``overrides`` applied; refused with
    a readable diff when they would change the architecture, the tokenizer or the data order."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UsageError(
            f"run {run_dir.name!r} has no {CONFIG_FILE}; it cannot be resumed",
            "start a new run, or --init-from one of its checkpoints",
        )
    saved = TrainingConfig.from_toml(path)
    overrides = dict(overrides or {})
    overrides.pop(("run",), None)
    preset = overrides.pop(("preset",), None) or preset
    new = apply_preset(saved, preset) if preset and preset != saved.preset else saved
    new = with_overrides(new, overrides) if overrides else new
    changed = architecture_diff(saved, new) + config_diff(saved.to_dict(), new.to_dict(), FIXED_ON_RESUME)
    if changed:
        raise ConfigError(
            f"cannot resume run {run_dir.name!r} with a different architecture, tokenizer or data: "
            + "; ".join(changed),
            "drop those options to resume, or start a new run from its weights with "
            f"`--init-from {run_dir.name}:latest`",
        )
    new.run = run_dir.name
    return new


ARCHITECTURE_FIELDS = (
    "vocab_size",
    "block_size",
    "n_layer",
    "n_head",
    "n_embd",
    "bias",
    "layer_norm_epsilon",
)


def init_config(
    config: TrainingConfig,
    checkpoint_meta: dict[str, Any],
    overrides: dict[tuple[str, ...], Any] | None = None,
    where: str = "the checkpoint",
) -> TrainingConfig:
    """``config`` for a new run that starts from a checkpoint's weights: the architecture (and,
    unless given in ``overrides``, the preset name, dropout and gradient checkpointing) come from
    the checkpoint. An architecture option that disagrees with it is refused."""
    import dataclasses

    saved = TrainingConfig.from_dict(checkpoint_meta["config"], source=f"{where}/meta.json")
    overrides = overrides or {}
    for name in ARCHITECTURE_FIELDS:
        value = overrides.get(("model", name))
        have = getattr(saved.model, name)
        if value is None or value == have:
            continue
        if name == "block_size" and value > have:
            raise UsageError(
                f"--block-size {value} is larger than the context of {have} tokens of {where}",
                f"use --block-size {have} (the architecture comes from the checkpoint)",
            )
        raise UsageError(
            f"--{name.replace('_', '-')} {value} differs from {where} ({have})",
            "with --init-from the architecture comes from the checkpoint; drop that option",
        )
    model = dataclasses.replace(
        saved.model,
        dropout=overrides.get(("model", "dropout"), saved.model.dropout),
        gradient_checkpointing=overrides.get(
            ("model", "gradient_checkpointing"), saved.model.gradient_checkpointing
        ),
    )
    preset = config.preset if ("preset",) in overrides else saved.preset
    return dataclasses.replace(config, preset=preset, model=model)
