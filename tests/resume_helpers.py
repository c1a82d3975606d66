"""What the bitwise-resume tests share: a run stopped at a step (as a signal would stop it), the
same run resumed from its full checkpoint, and the curves a run wrote to ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge import TrainingManager
from lmforge.config import TrainingConfig
from lmforge.observe.reporting import Reporter
from lmforge.train.run_spec import resume_config


class StopAtStep(Reporter):
    """Asks its manager to stop (save a full checkpoint, end) after step ``step``."""

    def __init__(self, step: int) -> None:
        self.stop_step, self.manager = step, None

    def step(self, stats) -> None:
        if stats.step == self.stop_step:
            self.manager.request_stop()


def train_until(config: TrainingConfig, workspace: Path, step: int) -> TrainingManager:
    """Train ``config`` and stop after ``step``; the manager, for a look at what it built."""
    stopper = StopAtStep(step)
    manager = TrainingManager(config, workspace, reporter=stopper)
    stopper.manager = manager
    assert manager.train().step == step
    return manager


def resume_to_end(workspace: Path, run: str, changes: dict | None = None, reporter: Reporter | None = None):
    """Continue ``run`` from its newest full checkpoint with the options it was started with."""
    config = resume_config(workspace / "runs" / run, changes or {})
    return TrainingManager(config, workspace, resume=run, reporter=reporter or Reporter()).train()


def curve(workspace: Path, run: str, kind: str, key: str) -> list[tuple[int, float]]:
    """``(step, record[key])`` of every ``kind`` record ("train", "eval") of ``run``."""
    lines = (workspace / "runs" / run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r[key]) for r in map(json.loads, lines) if r["kind"] == kind]


def assert_same_curves(workspace: Path, run: str, reference: str) -> None:
    """The training losses and validation losses of two runs are bitwise equal."""
    assert curve(workspace, run, "train", "loss") == curve(workspace, reference, "train", "loss")
    assert curve(workspace, run, "eval", "val_loss") == curve(workspace, reference, "eval", "val_loss")
