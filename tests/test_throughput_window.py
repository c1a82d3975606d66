"""Tokens/s and MFU count training steps only: evaluation (and checkpoints) pause the meter."""

from __future__ import annotations

import json
import time

from lmforge.train.evaluation import Evaluation
from lmforge.train.trainer import TrainingManager


def test_evaluation_time_is_not_training_time(train_workspace, tiny_train_config, monkeypatch):
    real_loss = Evaluation.loss

    def slow_loss(self):
        time.sleep(1.0)  # far longer than the few training steps around it
        return real_loss(self)

    monkeypatch.setattr(Evaluation, "loss", slow_loss)
    config = tiny_train_config(steps=4, eval_interval=2, log_interval=1, sample_tokens=0, run="window")
    TrainingManager(config, train_workspace).train()
    lines = (train_workspace / "runs" / "window" / "metrics.jsonl").read_text().splitlines()
    train = {r["step"]: r for r in map(json.loads, lines) if r.get("kind") == "train"}
    tokens_per_step = config.tokens_per_step
    # step 3's window holds the evaluation at step 2: counted, it would give under tokens_per_step/s
    assert train[3]["tokens_per_sec"] > 3 * tokens_per_step
