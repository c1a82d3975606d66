"""A sweep's runs summarised per setting: what ``lmforge runs compare --group NAME`` prints
(``--group A --group B``: the settings of several sweeps in one report, ``groups_report``).

Per setting (one point of the grid, over its seeds): the final validation loss's mean and 95%
interval, the validation loss at 25/50/75/100% of the token budget, the tokens needed to reach
a target loss, and Welch's t-test of the final loss against a baseline setting. Only finished
runs count towards the final figures; a setting's unfinished runs are reported, not averaged.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import UsageError
from lmforge.runs.listing import run_info
from lmforge.runs.metrics import read_metrics
from lmforge.runs.record import read_config
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
        return ", ".join(f"{k}={v}" for k, v in self.setting.items()) or "(no grid)"

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
    """Every setting of one or more sweeps, the baseline (if any) and the target loss used."""

    sweeps: list[Sweep]
    settings: list[SettingSummary]
    target_loss: float | None
    baseline: SettingSummary | None

    def to_dict(self) -> dict[str, Any]:
        figures = {
            "target_loss": self.target_loss,
            "baseline": self.baseline.setting if self.baseline else None,
            "settings": [s.to_dict() for s in self.settings],
        }
        if len(self.sweeps) > 1:
            return {"groups": [_sweep_dict(s) for s in self.sweeps], **figures}
        sweep = _sweep_dict(self.sweeps[0])
        return {"group": sweep.pop("name"), **sweep, **figures}


def _sweep_dict(sweep: Sweep) -> dict[str, Any]:
    return {
        "name": sweep.name,
        "grid": sweep.grid,
        "seeds": sweep.seeds,
        "preset": sweep.preset,
        "options": sweep.base,
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
    return _parse_baseline(specs, list(sweep.grid), f"sweep {sweep.name!r}")


def _parse_baseline(specs: list[str], keys: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip().lstrip("-")
        if not sep or key not in keys:
            raise UsageError(
                f"--baseline {spec!r} does not name a setting of {what}",
                f"use KEY=VALUE with a grid key: {', '.join(keys)}" if keys else "the sweep has no grid",
            )
        out[key] = value.strip()
    return out


def _matches(setting: dict[str, Any], wanted: dict[str, str]) -> bool:
    def same(key: str, a: Any, b: str) -> bool:
        if key == SWEEP_KEY:  # a setting merged from two sweeps answers to either name
            return b in str(a).split("+")
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            try:
                return float(b) == float(a)
            except ValueError:
                return False
        return point_run_name("", (("k", a),), 0) == point_run_name("", (("k", b),), 0)

    return all(k in setting and same(k, setting[k], v) for k, v in wanted.items())


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
    wanted = parse_baseline(sweep, baseline) if baseline else None
    return _finish(GroupReport([sweep], settings, target_loss, None), baseline, wanted, f"sweep {name!r}")


def groups_report(
    workspace: Workspace,
    names: list[str],
    *,
    baseline: list[str] | None = None,
    target_loss: float | None = None,
) -> GroupReport:
    """The settings of several sweeps in one report, each labelled by its sweep and its grid
    values (``sweep=pgpt2, lr=0.0015``). Points of two sweeps with the same preset and options
    are one setting (``sweep=a+b``: an lr sweep's best lr and a sweep of more seeds at it), a
    seed found in both counted once. ``baseline`` may name ``sweep=NAME`` and grid keys. The
    sweeps must agree on what makes their losses comparable (``check_comparable``). One name:
    ``group_report``."""
    if len(names) == 1:
        return group_report(workspace, names[0], baseline=baseline, target_loss=target_loss)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"--group {repeated[0]} is given twice", "name each sweep once")
    sweeps = [read_manifest(workspace, n) for n in names]
    check_comparable(workspace, sweeps)
    settings = [_summarise(workspace, s, pts) for s, pts in _merged_settings(sweeps)]
    wanted = None
    if baseline:
        keys = [SWEEP_KEY, *dict.fromkeys(k for s in sweeps for k in s.grid)]
        wanted = _parse_baseline(baseline, keys, f"sweeps {', '.join(names)}")
        if SWEEP_KEY in wanted and wanted[SWEEP_KEY] not in names:
            raise UsageError(
                f"--baseline {SWEEP_KEY}={wanted[SWEEP_KEY]} is not one of the --group sweeps",
                f"choose from {', '.join(names)}",
            )
    report = GroupReport(sweeps, settings, target_loss, None)
    return _finish(report, baseline, wanted, f"sweeps {', '.join(names)}")


SWEEP_KEY = "sweep"  # a setting's key naming its sweep when several are compared


def _merged_settings(sweeps: list[Sweep]) -> list[tuple[tuple[tuple[str, Any], ...], list[SweepPoint]]]:
    """``(setting, points)`` per distinct (preset, options) over the sweeps, in the sweeps' order;
    a setting is ``(("sweep", "a+b"), *grid values)``."""
    merged: dict[str, dict[str, Any]] = {}
    for sweep in sweeps:
        for point in sweep.points():
            identity = json.dumps(sweep.point_options(point), sort_keys=True, default=str)
            entry = merged.setdefault(identity, {"sweeps": [], "values": {}, "points": {}})
            if sweep.name not in entry["sweeps"]:
                entry["sweeps"].append(sweep.name)
            for key, value in point.setting:
                entry["values"].setdefault(key, value)
            # the same options and seed in two sweeps is the same run twice: the first counts
            entry["points"].setdefault(point.seed, point)
    return [
        (((SWEEP_KEY, "+".join(e["sweeps"])), *e["values"].items()), list(e["points"].values()))
        for e in merged.values()
    ]


def _finish(
    report: GroupReport, baseline: list[str] | None, wanted: dict[str, str] | None, what: str
) -> GroupReport:
    """Mark the baseline, test every other setting against it and find the tokens each needs
    to reach the target (the baseline's final mean unless one was given)."""
    settings, target_loss = report.settings, report.target_loss
    if wanted is not None:
        matching = [s for s in settings if _matches(s.setting, wanted)]
        if len(matching) != 1:
            raise UsageError(
                f"--baseline {' '.join(baseline or [])} matches {len(matching)} settings of {what}",
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
        report.baseline = base
    if target_loss is not None:
        for s in settings:
            reached = [t for c in s.curves if (t := first_reach(c, target_loss)) is not None]
            s.reached_target = len(reached)
            s.tokens_to_target = mean_interval(reached)
    report.target_loss = target_loss
    return report


# ----------------------------------------------------------------------------- comparability

# What two sweeps must share for their losses and token counts to be compared: the data and
# tokenizer (another loss), the model's size and context (another problem), the evaluation
# tokens (another estimate). Each with the flag that sets it.
COMPARABLE_FIELDS: dict[tuple[str, ...], str] = {
    ("data", "name"): "--data",
    ("tokenizer",): "--tokenizer",
    ("model", "n_layer"): "--preset (or --n-layer)",
    ("model", "n_head"): "--preset (or --n-head)",
    ("model", "n_embd"): "--preset (or --n-embd)",
    ("model", "block_size"): "--block-size",
    ("train", "eval_tokens"): "--eval-tokens",
}
BUDGET = "token budget"  # the tokens of a finished run: the 25/50/75/100% figures' scale


def sweep_fingerprint(workspace: Workspace, sweep: Sweep) -> dict[str, set[Any]]:
    """The values of ``COMPARABLE_FIELDS`` and the token budget over the sweep's runs that
    exist (from their ``config.toml``; budgets of finished runs only)."""
    values: dict[str, set[Any]] = {}
    for point in sweep.points():
        run_dir = workspace.runs_dir / point.run
        if not run_dir.is_dir():
            continue
        config = read_config(run_dir)
        for path in COMPARABLE_FIELDS:
            value: Any = config
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                values.setdefault(".".join(path), set()).add(value)
        curve = eval_curve(run_dir)
        if curve and run_info(run_dir).status == "finished":
            values.setdefault(BUDGET, set()).add(int(curve[-1][0]))
    return values


def check_comparable(workspace: Workspace, sweeps: list[Sweep]) -> None:
    """Refuse sweeps whose runs differ in a field of ``COMPARABLE_FIELDS`` or in their token
    budget. A field one sweep varies itself (its grid has two values of it) is left to the user:
    the comparison is then about it."""
    prints = [(s.name, sweep_fingerprint(workspace, s)) for s in sweeps]
    fields = [".".join(p) for p in COMPARABLE_FIELDS] + [BUDGET]
    for field_name in fields:
        single = [(name, fp[field_name]) for name, fp in prints if field_name in fp]
        if any(len(v) > 1 for _, v in single):
            continue
        (first, (a,)), *rest = single or [("", {None})]
        for name, (b,) in rest:
            if a != b:
                raise UsageError(
                    f"--group {name} differs from --group {first} in {field_name} ({_show(b)} vs "
                    f"{_show(a)}): their losses are not comparable",
                    f"run the sweeps with the same {_flag(field_name)}",
                )


def _show(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _flag(field_name: str) -> str:
    if field_name == BUDGET:
        return "--steps, --batch-size and --grad-accum (tokens per run)"
    return COMPARABLE_FIELDS[tuple(field_name.split("."))]


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
