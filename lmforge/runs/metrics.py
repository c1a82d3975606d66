"""Reading a run's ``metrics.jsonl`` back: the records by kind, and the numbers a person
looks at first.

Metrics are read robustly: a run that is being written, or was killed mid-write, may end in
a truncated line; such lines are skipped and counted, never fatal. The format of the file is
in ``lmforge.runs.record``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Any

from lmforge.units import is_count, perplexity


@dataclass
class Metrics:
    """The records of ``metrics.jsonl`` by kind, in file order."""

    train: list[dict[str, Any]] = field(default_factory=list)
    eval: list[dict[str, Any]] = field(default_factory=list)
    bad_steps: list[dict[str, Any]] = field(default_factory=list)
    skipped_lines: int = 0  # truncated or corrupt lines that were ignored

    def __bool__(self) -> bool:
        return bool(self.train or self.eval)


def read_metrics(path: str | os.PathLike) -> Metrics:
    """Read a ``metrics.jsonl`` file; a missing file gives empty metrics.

    Lines that do not parse (the truncated last line of a run killed mid-write,
    or a line being written right now) are skipped and counted in
    ``skipped_lines``.
    """
    metrics = Metrics()
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return metrics
    with fh:
        for raw in fh:
            raw = raw.strip()
            if not raw:
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                metrics.skipped_lines += 1
                continue
            if not isinstance(record, dict) or not _counts_ok(record):
                metrics.skipped_lines += 1
                continue
            kind = record.get("kind")
            if kind == "train" and finite(record.get("loss")) is not None:
                metrics.train.append(record)
            elif kind == "eval" and finite(record.get("val_loss")) is not None:
                metrics.eval.append(record)
            elif kind == "bad_step":
                metrics.bad_steps.append(record)
    return metrics


def _counts_ok(record: dict[str, Any]) -> bool:
    # step and tokens are summed and compared as integers; a line with others is damaged
    tokens = record.get("tokens")
    return ("step" not in record or is_count(record["step"])) and (tokens is None or is_count(tokens))


def summarize_metrics(metrics: Metrics) -> dict[str, Any]:
    """The numbers a person looks at first: last train loss, best validation
    loss and perplexity (and the step where it was reached), tokens seen,
    median throughput."""
    last = metrics.train[-1] if metrics.train else None
    best = min(metrics.eval, key=lambda r: r["val_loss"]) if metrics.eval else None
    last_eval = metrics.eval[-1] if metrics.eval else None
    speeds = [s for r in metrics.train if (s := finite(r.get("tokens_per_sec"))) is not None and s > 0]
    records = metrics.train + metrics.eval
    return {
        "last_step": max((int(r.get("step", 0)) for r in records), default=None),
        "tokens": max((int(r.get("tokens") or 0) for r in records), default=None),
        "last_train_loss": last["loss"] if last else None,
        "last_train_step": last.get("step") if last else None,
        "last_lr": last.get("lr") if last else None,
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_ppl": perplexity(best["val_loss"]) if best else None,
        "best_step": best.get("step") if best else None,
        "last_val_loss": last_eval["val_loss"] if last_eval else None,
        "evaluations": len(metrics.eval),
        "tokens_per_sec_median": statistics.median(speeds) if speeds else None,
        "bad_steps": len(metrics.bad_steps),
        "skipped_lines": metrics.skipped_lines,
    }


def train_metrics_at(metrics: Metrics, step: int | None) -> dict[str, Any]:
    """The last logged training loss (and its step and learning rate) at or before ``step``:
    what the run's loss was when a checkpoint of that step was saved. Empty when none."""
    if step is None:
        return {}
    before = [r for r in metrics.train if isinstance(r.get("step"), int) and r["step"] <= step]
    if not before:
        return {}
    last = before[-1]
    return {"train_loss": last.get("loss"), "train_step": last["step"], "lr": last.get("lr")}


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
