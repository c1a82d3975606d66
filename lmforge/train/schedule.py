"""The learning-rate schedule: linear warmup, then cosine decay to a floor.

Written as a pure function of the optimizer step, so the schedule has no state
of its own to checkpoint: a resumed run recomputes the same value from the
restored step, and raising ``--steps`` on resume simply stretches the decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineSchedule:
    """``lr`` for the update that follows ``step`` completed optimizer steps.

    - warmup: ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``
      (the first update already moves, the last warmup update is at the peak);
    - cosine decay from ``lr`` at ``warmup_steps`` to ``min_lr`` at ``total_steps``;
    - ``min_lr`` afterwards.
    """

    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        if step >= self.total_steps or decay_steps <= 0:
            return self.min_lr
        progress = (step - self.warmup_steps) / decay_steps  # in [0, 1)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.lr - self.min_lr)

    def state_dict(self) -> dict[str, float | int]:
        """What the schedule was at save time (recorded in full checkpoints, for reference)."""
        return {
            "lr": self.lr,
            "min_lr": self.min_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }
