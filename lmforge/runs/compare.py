"""Runs against their defaults and against each other: config changes from a preset,
config differences between runs, and the side-by-side comparison ``runs compare`` prints."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import UsageError
from lmforge.runs.listing import RunInfo, run_info
from lmforge.runs.metrics import Metrics, read_metrics, summarize_metrics
from lmforge.runs.record import RunRecord, read_config
from lmforge.workspace import RunDir, Workspace

COMPARE_DIR = ".compare"  # under runs/, hidden so that it is never listed as a run


@dataclass(frozen=True)
class ConfigChange:
    """A config value of a run that differs from its preset's default."""

    key: str  # "optim.lr"
    value: Any
    default: Any  # None when the key is not a known config field

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def changes_from_defaults(run_dir: str | os.PathLike) -> list[ConfigChange]:
    """The values of the run's ``config.toml`` that differ from
    ``resolve_config(preset=<its preset>)``, in file order. The run name is left
    out (every run has its own). A missing config file gives an empty list."""
    from lmforge.presets import PRESETS, resolve_config
    from lmforge.tomlfile import load_toml

    path = RunDir(Path(run_dir)).config_file
    if not path.is_file():
        return []
    data = load_toml(path)
    preset = data.get("preset")
    base = resolve_config(preset=preset if preset in PRESETS else None).to_dict()
    defaults = _flatten(base)
    auto = _auto_values(Path(run_dir))
    changes = []
    for key, value in _flatten(data).items():
        if key == "run":
            continue
        if key not in defaults:
            changes.append(ConfigChange(key, value, None))
        elif defaults[key] != value and value not in auto.get(key, ()):
            changes.append(ConfigChange(key, value, defaults[key]))
    return changes


def _auto_values(run_dir: Path) -> dict[str, tuple[Any, ...]]:
    """What the "auto" defaults that the trainer resolves before writing ``config.toml`` become:
    those values are the default, not a change the user made. The vocabulary padding follows
    the device the run recorded (either choice for runs that recorded none)."""
    from lmforge.config import CUDA_VOCAB_MULTIPLE

    device = str(RunRecord.read(run_dir).get("device_type") or "")
    pads = (CUDA_VOCAB_MULTIPLE,) if device == "cuda" else (1,) if device else (1, CUDA_VOCAB_MULTIPLE)
    return {"model.pad_vocab_multiple": pads}


def compare_configs(run_dirs: list[Path]) -> dict[str, list[Any]]:
    """The config keys whose values differ between runs: ``{"optim.lr": [3e-4, 6e-4]}``
    (``None`` where a run's config lacks the key). The run name is left out."""
    from lmforge.presets import resolve_config

    defaults = _flatten(resolve_config().to_dict())
    flats = [_flatten(read_config(Path(run_dir))) for run_dir in run_dirs]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys and k != "run"]
    out = {}
    for key in keys:
        # a key absent from one file (a None default) reads back as its default
        values = [flat.get(key, defaults.get(key)) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            out[key] = values
    return out


@dataclass
class Comparison:
    """What ``runs compare`` shows: per run its row, metrics and summary, the config keys
    that differ, and the loss plot (None when not drawn or nothing is logged)."""

    infos: list[RunInfo]
    metrics: list[Metrics]
    summaries: list[dict[str, Any]]
    config: dict[str, list[Any]]
    plot: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [{**i.to_dict(), "metrics": s} for i, s in zip(self.infos, self.summaries, strict=True)],
            "config_differences": self.config,
            "plot": str(self.plot) if self.plot else None,
        }


def compare_runs(
    workspace: Workspace, specs: list[str], *, plot: bool = True, out: Path | None = None
) -> Comparison:
    """Two or more runs (names or ``latest``) side by side; the loss plot goes to ``out``,
    by default ``<workspace>/runs/.compare/<a>-vs-<b>.png``."""
    from lmforge.runs.names import resolve_run

    if len(specs) < 2:
        raise UsageError("compare needs at least two runs", "name two or more runs: lmforge runs compare A B")
    run_dirs: list[Path] = []
    for spec in specs:
        path = resolve_run(workspace, spec)
        if path in run_dirs:
            raise UsageError(f"run {path.name!r} is named twice", "compare different runs")
        run_dirs.append(path)
    metrics = [read_metrics(RunDir(d).metrics_file) for d in run_dirs]
    infos = [run_info(d, m) for d, m in zip(run_dirs, metrics, strict=True)]
    plot_path = None
    if plot:
        from lmforge.runs.plots import plot_loss

        target = out or workspace.runs_dir / COMPARE_DIR / compare_file_name([d.name for d in run_dirs])
        plot_path = plot_loss([(d.name, m) for d, m in zip(run_dirs, metrics, strict=True)], target)
    summaries = [summarize_metrics(m) for m in metrics]
    return Comparison(infos, metrics, summaries, compare_configs(run_dirs), plot_path)


def compare_file_name(names: list[str]) -> str:
    """``a-vs-b.png``; a short hash stands in for the names when they would make a long file name."""
    name = "-vs-".join(names)
    if len(name) > 150:
        digest = hashlib.sha1("\0".join(names).encode()).hexdigest()[:8]
        name = f"{names[0]}-vs-{len(names) - 1}-more-{digest}"
    return f"{name}.png"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif value is not None:  # None has no TOML spelling: absent means default
            out[prefix + key] = value
    return out
