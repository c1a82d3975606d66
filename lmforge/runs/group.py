"""A sweep's runs summarised per setting: what ``lmforge runs compare --group NAME`` prints.

Per setting (one point of the grid, over its seeds): the final validation loss's mean and 95%
interval, the validation loss at 25/50/75/100% of the token budget, the tokens needed to reach
a target loss, and Welch's t-test of the final loss against a baseline setting. Only finished
runs count towards the final figures; a setting's unfinished runs are reported, not averaged.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import UsageError
from lmforge.runs.listing import run_info
from lmforge.runs.metrics import read_metrics
from lmforge.runs.stats import Interval, first_reach, mean_interval, value_at, welch_p_value
from lmforge.runs.sweeps import Sweep, SweepPoint, point_run_name, read_manifest
from lmforge.workspace import RunDir, Workspace

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class SettingSummary:
    """The figures of one setting of the grid over its seeds."""

    setting: dict[str, Any]
    runs: list[str]
    finished: int
    final_loss: Interval | None
    loss_at: dict[float, Interval | None]
    budget_tokens: int | None  # tokens of a finished run (the budget the fractions refer to)
    tokens_to_target: Interval | None = None
    reached_target: int = 0
    p_value: float | None = None  # Welch's t-test of the final loss against the baseline
    is_baseline: bool = False
    curves: list[list[tuple[float, float]]] = field(default_factory=list, repr=False)
    final_losses: list[float] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.setting.items())

    def to_dict(self) -> dict[str, Any]:
        def interval(i: Interval | None) -> dict[str, Any] | None:
            return i.to_dict() if i else None

        return {
            "setting": self.setting,
            "runs": self.runs,
            "finished": self.finished,
            "final_val_loss": interval(self.final_loss),
            "final_val_losses": self.final_losses,
            "val_loss_at": {f"{int(f * 100)}%": interval(i) for f, i in self.loss_at.items()},
            "budget_tokens": self.budget_tokens,
            "tokens_to_target": interval(self.tokens_to_target),
            "reached_target": self.reached_target,
            "p_value_vs_baseline": self.p_value,
            "baseline": self.is_baseline,
        }


@dataclass
class GroupReport:
    """Every setting of a sweep, the baseline (if any) and the target loss used."""

    sweep: Sweep
    settings: list[SettingSummary]
    target_loss: float | None
    baseline: SettingSummary | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.sweep.name,
            "grid": self.sweep.grid,
            "seeds": self.sweep.seeds,
            "preset": self.sweep.preset,
            "options": self.sweep.base,
            "target_loss": self.target_loss,
            "baseline": self.baseline.setting if self.baseline else None,
            "settings": [s.to_dict() for s in self.settings],
        }


def eval_curve(run_dir: Path) -> list[tuple[float, float]]:
    """The run's validation losses as ``(tokens, loss)`` points, sorted by tokens."""
    records = read_metrics(RunDir(run_dir).metrics_file).eval
    points = {float(r["tokens"]): float(r["val_loss"]) for r in records if r.get("tokens") is not None}
    return sorted(points.items())


def _summarise(workspace: Workspace, setting: tuple[tuple[str, Any], ...], points: list[SweepPoint]):
    curves, finals, budgets, names = [], [], [], []
    for point in points:
        names.append(point.run)
        run_dir = workspace.runs_dir / point.run
        if not run_dir.is_dir():
            continue
        curve = eval_curve(run_dir)
        info = run_info(run_dir, read_metrics(RunDir(run_dir).metrics_file))
        if info.status != "finished" or not curve:
            continue
        curves.append(curve)
        finals.append(curve[-1][1])
        budgets.append(int(curve[-1][0]))
    budget = max(budgets) if budgets else None
    loss_at = {}
    for fraction in FRACTIONS:
        values = [v for c in curves if budget and (v := value_at(c, fraction * budget)) is not None]
        loss_at[fraction] = mean_interval(values)
    return SettingSummary(
        setting=dict(setting),
        runs=names,
        finished=len(curves),
        final_loss=mean_interval(finals),
        loss_at=loss_at,
        budget_tokens=budget,
        curves=curves,
        final_losses=finals,
    )


def parse_baseline(sweep: Sweep, specs: list[str]) -> dict[str, str]:
    """``["recipe=gpt2"]`` -> ``{"recipe": "gpt2"}``, checked against the sweep's grid keys."""
    out: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip().lstrip("-")
        if not sep or key not in sweep.grid:
            raise UsageError(
                f"--baseline {spec!r} does not name a setting of sweep {sweep.name!r}",
                f"use KEY=VALUE with a grid key: {', '.join(sweep.grid)}",
            )
        out[key] = value.strip()
    return out


def _matches(setting: dict[str, Any], wanted: dict[str, str]) -> bool:
    def same(a: Any, b: str) -> bool:
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            try:
                return float(b) == float(a)
            except ValueError:
                return False
        return point_run_name("", (("k", a),), 0) == point_run_name("", (("k", b),), 0)

    return all(same(setting[k], v) for k, v in wanted.items())


def group_report(
    workspace: Workspace, name: str, *, baseline: list[str] | None = None, target_loss: float | None = None
) -> GroupReport:
    """The figures of sweep ``name`` per setting. ``baseline`` (``["recipe=gpt2"]``) picks the
    setting the others are tested against; its final mean is the target unless ``target_loss``."""
    sweep = read_manifest(workspace, name)
    by_setting: dict[tuple, list[SweepPoint]] = {}
    for point in sweep.points():
        by_setting.setdefault(point.setting, []).append(point)
    settings = [_summarise(workspace, s, pts) for s, pts in by_setting.items()]

    base = None
    if baseline:
        wanted = parse_baseline(sweep, baseline)
        matching = [s for s in settings if _matches(s.setting, wanted)]
        if len(matching) != 1:
            raise UsageError(
                f"--baseline {' '.join(baseline)} matches {len(matching)} settings of sweep {name!r}",
                "add a --baseline KEY=VALUE for each grid key that varies: "
                + "; ".join(s.label for s in matching[:4]),
            )
        base = matching[0]
        base.is_baseline = True
        for s in settings:
            if s is not base:
                s.p_value = welch_p_value(s.final_losses, base.final_losses)
        if target_loss is None and base.final_loss is not None:
            target_loss = base.final_loss.mean
    if target_loss is not None:
        for s in settings:
            reached = [t for c in s.curves if (t := first_reach(c, target_loss)) is not None]
            s.reached_target = len(reached)
            s.tokens_to_target = mean_interval(reached)
    return GroupReport(sweep, settings, target_loss, base)


def mean_curve(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float, float, float]]:
    """``(tokens, mean, low, high)`` over the seeds' curves, at the tokens where every curve has
    a value (interpolated between evaluations); low/high are the seeds' minimum and maximum."""
    if not curves:
        return []
    lo = max(c[0][0] for c in curves)
    hi = min(c[-1][0] for c in curves)
    xs = sorted({x for c in curves for x, _ in c if lo <= x <= hi})
    out = []
    for x in xs:
        ys = [y for c in curves if (y := value_at(c, x)) is not None]
        if len(ys) == len(curves):
            out.append((x, statistics.fmean(ys), min(ys), max(ys)))
    return out
