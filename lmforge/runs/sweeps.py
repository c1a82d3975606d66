"""A sweep: a grid of settings times a list of seeds, each point a normal run of the workspace.

This module holds what a sweep *is* — parsing ``--grid KEY=V1,V2`` and ``--seeds 1-5``, the run
each point becomes, and the manifest ``runs/.sweeps/<name>.json`` that lists them — and reads
it back. Running the points is ``lmforge.train.sweep``'s job; their statistics are
``lmforge.runs.group``'s. It imports config, errors, fileio and workspace only.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from lmforge.config import ConfigField, config_fields
from lmforge.errors import NotFoundError, UsageError
from lmforge.fileio import write_text_atomic
from lmforge.workspace import Workspace

SWEEPS_DIR = ".sweeps"  # under runs/, hidden so that it is never listed as a run
MANIFEST_VERSION = 1
# Keys a grid may not vary: the seed has --seeds, and each point's run name is the sweep's.
NOT_IN_GRID = {("train", "seed"): "--seeds", ("run",): "the sweep's NAME"}


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its setting (grid key -> value), its seed and its run name."""

    setting: tuple[tuple[str, Any], ...]
    seed: int
    run: str

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "seed": self.seed, "setting": dict(self.setting)}


@dataclass
class Sweep:
    """A sweep's definition: grid keys in order with their values, the seeds, the preset and the
    options every point shares (``{"optim.lr": 0.001}``: dotted config paths)."""

    name: str
    grid: dict[str, list[Any]]
    seeds: list[int]
    preset: str | None = None
    base: dict[str, Any] = field(default_factory=dict)

    def points(self) -> list[SweepPoint]:
        """Every setting times every seed, settings in grid order and the seeds inside each, so
        that an interrupted sweep has finished whole settings first. No grid: one setting."""
        keys = list(self.grid)
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            setting = tuple(zip(keys, values, strict=True))
            for seed in self.seeds:
                out.append(SweepPoint(setting, seed, point_run_name(self.name, setting, seed)))
        return out

    def point_options(self, point: SweepPoint) -> tuple[str | None, dict[str, Any]]:
        """The preset and the options (dotted config paths) of one point, its seed and run name
        left out: what makes two points of two sweeps the same setting."""
        preset, options = self.preset, dict(self.base)
        for key, value in point.setting:
            if key == "preset":
                preset = value
            else:
                options[".".join(grid_field(key).path)] = value
        return preset, options

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "name": self.name,
            "grid": self.grid,
            "seeds": self.seeds,
            "preset": self.preset,
            "base": self.base,
            "runs": [p.to_dict() for p in self.points()],
        }


def manifest_path(workspace: Workspace, name: str) -> Path:
    return workspace.runs_dir / SWEEPS_DIR / f"{name}.json"


def write_manifest(workspace: Workspace, sweep: Sweep) -> Path:
    """Write the manifest. A sweep of that name may only grow: the same grid keys, preset and
    options, with every seed and grid value it had (more seeds, more values). Any other
    definition is refused: its runs would mix two experiments."""
    path = manifest_path(workspace, sweep.name)
    if path.is_file():
        old = read_manifest(workspace, sweep.name)
        if _definition(old) == _definition(sweep):
            return path
        if not grows(old, sweep):
            raise UsageError(
                f"sweep {sweep.name!r} already exists with another grid, seeds or options",
                f"rerun it with its own options (lmforge runs compare --group {sweep.name} shows them), "
                "adding seeds or grid values to grow it, or name a new sweep",
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(sweep.to_dict(), indent=2) + "\n")
    return path


def _definition(sweep: Sweep) -> str:
    return json.dumps([sweep.grid, sweep.seeds, sweep.preset, sweep.base], sort_keys=True)


def grows(old: Sweep, new: Sweep) -> bool:
    """Whether ``new`` is ``old`` with more seeds or grid values: every run of ``old`` is a run
    of ``new`` with the same options, so its finished runs count as ``new``'s."""

    def values(sweep: Sweep, key: str) -> set[str]:
        return {json.dumps(v) for v in sweep.grid[key]}

    same = json.dumps([old.preset, old.base], sort_keys=True) == json.dumps(
        [new.preset, new.base], sort_keys=True
    )
    return (
        same
        and list(old.grid) == list(new.grid)
        and all(values(old, key) <= values(new, key) for key in old.grid)
        and set(old.seeds) <= set(new.seeds)
    )


def read_manifest(workspace: Workspace, name: str) -> Sweep:
    path = manifest_path(workspace, name)
    if not path.is_file():
        known = sweep_names(workspace)
        raise NotFoundError(
            f"no sweep named {name!r}",
            f"sweeps in this workspace: {', '.join(known)}" if known else "start one with lmforge sweep NAME",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Sweep(
            name=str(data["name"]),
            grid={str(k): list(v) for k, v in data["grid"].items()},
            seeds=[int(s) for s in data["seeds"]],
            preset=data.get("preset"),
            base=dict(data.get("base") or {}),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"sweep manifest {path} is damaged ({exc.__class__.__name__})",
            "rerun the sweep's command to rewrite it",
        ) from None


def sweep_names(workspace: Workspace) -> list[str]:
    folder = workspace.runs_dir / SWEEPS_DIR
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


# ----------------------------------------------------------------------------- parsing


def _fields_by_key() -> dict[str, ConfigField]:
    out: dict[str, ConfigField] = {}
    for f in config_fields():
        out[f.flag] = f
        out[".".join(f.path)] = f
    return out


def grid_field(key: str) -> ConfigField:
    """The config field a grid key names: its flag (``lr``, ``block-size``) or dotted path
    (``optim.lr``)."""
    fields = _fields_by_key()
    f = fields.get(key.strip().lstrip("-"))
    if f is None:
        raise UsageError(
            f"--grid key {key!r} is not a config option",
            "use a train option's name, e.g. --grid lr=5e-4,1e-3 or --grid recipe=gpt2,modern",
        )
    if f.path in NOT_IN_GRID:
        raise UsageError(f"--grid cannot vary {key!r}", f"use {NOT_IN_GRID[f.path]} instead")
    return f


def parse_value(f: ConfigField, text: str, source: str) -> Any:
    """``text`` as a value of field ``f``, as its CLI option would read it."""
    text = text.strip()
    kind = f.type
    choices = get_args(kind)
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in {"on", "off", "true", "false", "1", "0", "yes", "no"}:
                raise ValueError(text)
            return lowered in {"on", "true", "1", "yes"}
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise UsageError(
            f"{source}: {text!r} is not a valid {kind.__name__} for {f.flag}", "give a number"
        ) from None
    if choices and all(isinstance(c, str) for c in choices) and text not in choices:
        raise UsageError(f"{source}: {text!r} is not one of {', '.join(choices)}", f"choose a {f.flag}")
    if not text:
        raise UsageError(f"{source}: an empty value for {f.flag}", "remove the extra comma")
    return text


def parse_grid(specs: list[str]) -> dict[str, list[Any]]:
    """``["recipe=gpt2,modern", "lr=5e-4,1e-3"]`` -> ``{"recipe": ["gpt2", "modern"], "lr": [...]}``
    (keys as the user wrote them, values typed by their config field)."""
    grid: dict[str, list[Any]] = {}
    seen_paths: set[tuple[str, ...]] = set()
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UsageError(f"--grid {spec!r} is not KEY=V1,V2,...", "e.g. --grid lr=5e-4,1e-3,2e-3")
        key = key.strip().lstrip("-")
        if key == "preset":
            parsed = [v.strip() for v in values.split(",")]
            _check_presets(parsed)
        else:
            f = grid_field(key)
            if f.path in seen_paths:
                raise UsageError(f"--grid names {key!r} twice", "give each key once, with all its values")
            seen_paths.add(f.path)
            parsed = [parse_value(f, v, f"--grid {key}") for v in values.split(",")]
        if key in grid:
            raise UsageError(f"--grid names {key!r} twice", "give each key once, with all its values")
        if len(set(map(str, parsed))) != len(parsed):
            raise UsageError(f"--grid {key} repeats a value", "give each value once")
        grid[key] = parsed
    return grid  # empty: one setting (the shared options) over the seeds


def _check_presets(names: list[str]) -> None:
    from lmforge.presets import PRESETS

    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise UsageError(f"--grid preset: unknown preset {unknown[0]!r}", f"choose from {', '.join(PRESETS)}")


def parse_seeds(text: str) -> list[int]:
    """``"1-5"`` -> ``[1, 2, 3, 4, 5]``; ``"1,3,7"`` and mixes such as ``"1-3,10"`` too."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise UsageError(f"--seeds {text!r} is not a list of seeds", "e.g. --seeds 1-5 or --seeds 1,2,3")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} names a seed twice", "give each seed once")
    return seeds


def point_run_name(sweep: str, setting: tuple[tuple[str, Any], ...], seed: int) -> str:
    """``lr-sweep-recipe_modern-lr_0.001-s3``: readable in ``runs list``, and a valid run name."""
    parts = [f"{key}_{_short(value)}" for key, value in setting]
    name = "-".join([sweep, *parts, f"s{seed}"])
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
