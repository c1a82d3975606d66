"""The learning-rate schedules: linear warmup, then cosine decay to a floor (``cosine``), or
warmup, a constant plateau and a linear decay over the last part of the run (``wsd``).

Written as pure functions of the optimizer step, so a schedule has no state of its own to
checkpoint: a resumed run recomputes the same value from the restored step. Raising
``--steps`` on resume stretches a cosine decay, which changes the learning rate of steps
already taken (``resume_warning`` says so); with ``wsd`` it only moves the decay later, so a
run resumed before its decay began continues the plateau as if it had been planned longer
(warmup-stable-decay: Hu et al. 2024, MiniCPM; the schedule modded-nanogpt and nanochat use).

May import ``config`` only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lmforge.config import OptimizerConfig


def _warmup(lr: float, step: int, warmup_steps: int) -> float:
    # the first update already moves, the last warmup update is at the peak
    return lr * (step + 1) / warmup_steps


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
            return _warmup(self.lr, step, self.warmup_steps)
        decay_steps = self.total_steps - self.warmup_steps
        if step >= self.total_steps or decay_steps <= 0:
            return self.min_lr
        progress = (step - self.warmup_steps) / decay_steps  # in [0, 1)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.lr - self.min_lr)

    def state_dict(self) -> dict[str, Any]:
        """What the schedule was at save time (recorded in full checkpoints, for reference)."""
        return {"kind": "cosine", **dataclasses.asdict(self)}

    def resume_warning(self, saved: dict[str, Any] | None, step: int) -> str | None:
        """A warning when resuming at ``step`` changes the lr of steps already taken."""
        old = (saved or {}).get("total_steps")
        if old is None or old == self.total_steps or step <= self.warmup_steps:
            return None
        before = CosineSchedule(self.lr, self.min_lr, self.warmup_steps, old)
        return (
            f"--steps {self.total_steps:,} (was {old:,}) stretches the cosine decay the first "
            f"{step:,} steps were trained on: the lr jumps from {before(step):.3g} to {self(step):.3g}; "
            "--schedule wsd keeps a plateau that a longer run continues"
        )


@dataclass(frozen=True)
class WSDSchedule:
    """Warmup-stable-decay: ``lr`` for the update that follows ``step`` completed steps.

    - warmup as in ``CosineSchedule``;
    - ``lr`` until ``decay_start = total_steps - round(decay_fraction * total_steps)``;
    - linear decay from ``lr`` to ``min_lr`` at ``total_steps``; ``min_lr`` afterwards.
    """

    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    decay_fraction: float

    @property
    def decay_start(self) -> int:
        return max(self.total_steps - round(self.decay_fraction * self.total_steps), self.warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(self.lr, step, self.warmup_steps)
        start = self.decay_start
        if step < start:
            return self.lr
        if step >= self.total_steps:
            return self.min_lr
        progress = (step - start) / (self.total_steps - start)  # in [0, 1)
        return self.lr + progress * (self.min_lr - self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "wsd", **dataclasses.asdict(self)}

    def resume_warning(self, saved: dict[str, Any] | None, step: int) -> str | None:
        """A warning only when the decay had begun: before it, a new --steps moves the plateau's end."""
        old = (saved or {}).get("total_steps")
        if old is None or old == self.total_steps:
            return None
        before = WSDSchedule(self.lr, self.min_lr, self.warmup_steps, old, self.decay_fraction)
        if step <= before.decay_start and step <= self.decay_start:
            return None
        return (
            f"--steps {self.total_steps:,} (was {old:,}) on a run whose decay had begun at step "
            f"{before.decay_start:,}: the lr jumps from {before(step):.3g} to {self(step):.3g}"
        )


def build_schedule(config: OptimizerConfig, total_steps: int) -> CosineSchedule | WSDSchedule:
    """The schedule ``--schedule`` names, for a run of ``total_steps`` optimizer steps."""
    if config.schedule == "wsd":
        return WSDSchedule(config.lr, config.min_lr, config.warmup_steps, total_steps, config.decay_fraction)
    return CosineSchedule(config.lr, config.min_lr, config.warmup_steps, total_steps)
