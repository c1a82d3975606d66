"""Bad steps and rollback: what happens after ``TrainStep`` skipped a non-finite step.

A skipped step is recorded (``bad_step`` in ``metrics.jsonl``, a warning) and
counted. After ``max_bad_steps`` of them in a row the run rolls back to its newest
full checkpoint (weights, optimizer, RNG; the data position moves on past the bad
batches, as PaLM did for loss spikes), at most ``MAX_ROLLBACKS`` times; without a
checkpoint to go back to, or past that, it stops with an error. fp16 loss-scale
overflows are the scaler finding its level, not bad steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.train.step import StepOutcome

# Rollbacks to the last full checkpoint before a diverging run is given up.
MAX_ROLLBACKS = 3

DIVERGED_HINT = (
    "lower --lr, raise --warmup-steps or --max-bad-steps, or use --dtype bf16/fp32; "
    "resume from a checkpoint with --resume"
)


@dataclass
class BadSteps:
    """The counters a full checkpoint keeps (``trainer.pt``'s ``bad_steps``)."""

    consecutive: int = 0
    total: int = 0
    rollbacks: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "total": self.total, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """A resumed run keeps its totals (so rollbacks stay bounded) and starts a fresh streak."""
        state = state or {}
        self.consecutive = 0
        self.total, self.rollbacks = int(state.get("total", 0)), int(state.get("rollbacks", 0))


class Recovery:
    """Counts bad steps and rolls back; records go through ``write_metric``, messages ``warn``."""

    def __init__(
        self,
        max_bad_steps: int,
        write_metric: Callable[[dict[str, Any]], None],
        warn: Callable[[str], None],
    ) -> None:
        self.max_bad_steps = max_bad_steps
        self.counts = BadSteps()
        self._write_metric = write_metric
        self._warn = warn

    def step_ok(self) -> None:
        self.counts.consecutive = 0

    def step_skipped(self, out: StepOutcome, step: int, tokens: int) -> bool:
        """Record the skipped attempt after ``step`` completed steps; True when it is time to
        roll back."""
        if out.status == "overflow":
            return False  # fp16 loss scaling finding its level: normal, not a bad step
        attempted = step + 1
        c = self.counts
        c.consecutive += 1
        c.total += 1
        loss, grad_norm = out.loss.item(), out.grad_norm.item()
        self._write_metric(
            {
                "kind": "bad_step",
                "step": attempted,
                "loss": loss,
                "grad_norm": grad_norm,
                "consecutive": c.consecutive,
                "tokens": tokens,
                "time": time.time(),
            }
        )
        self._warn(
            f"step {attempted}: non-finite loss ({loss}) or gradient norm ({grad_norm}); "
            f"step skipped, nothing updated ({c.consecutive}/{self.max_bad_steps} in a row)"
        )
        return c.consecutive >= self.max_bad_steps

    def roll_back(self, latest: Path | None, step: int, restore: Callable[[Path], tuple[int, int]]) -> None:
        """Go back to the full checkpoint ``latest``: ``restore(path)`` loads it and returns the
        (step, tokens) it holds. Raises when there is none, or after ``MAX_ROLLBACKS``."""
        c = self.counts
        what = (
            f"training diverged: {c.consecutive} steps in a row had a non-finite loss or gradient "
            f"(at step {step + 1})"
        )
        if latest is None:
            raise LmforgeError(f"{what}, and there is no full checkpoint to roll back to", DIVERGED_HINT)
        if c.rollbacks >= MAX_ROLLBACKS:
            raise LmforgeError(f"{what}, after {c.rollbacks} rollbacks to {latest}", DIVERGED_HINT)
        new_step, tokens = restore(latest)
        c.rollbacks += 1
        c.consecutive = 0
        self._write_metric(
            {
                "kind": "rollback",
                "step": new_step,
                "from_step": step,
                "checkpoint": str(latest),
                "tokens": tokens,
                "time": time.time(),
            }
        )
        self._warn(
            f"rolled back to {latest} (step {new_step}); the data moves on past the bad batches "
            f"(rollback {c.rollbacks}/{MAX_ROLLBACKS})"
        )
