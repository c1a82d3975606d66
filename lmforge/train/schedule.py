"""The learning-rate schedules: linear warmup, then cosine decay to a floor (``cosine``), or
warmup, a constant plateau and a linear decay over the last part of the run (``wsd``).

Written as pure functions of the optimizer step, so a schedule has no state of its own to
checkpoint: a resumed run recomputes the same value from the restored step. Raising
``--steps`` on resume stretches a cosine decay, which changes the learning rate of steps
already taken (``resume_warning`` says so); with ``wsd`` it only moves the decay later, so a
run resumed before its decay began continues the plateau as if it had been planned longer
(warmup-stable-decay: Hu et al. 2024, MiniCPM; the schedule modded-nanogpt and nanochat use).
Any other change on resume (the schedule, its lr, warmup or decay fraction) is warned about
whenever it changes the lr of a step taken or to come, naming the schedule the run was saved with.

May import ``config`` and ``units``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lmforge.config import OptimizerConfig
from lmforge.units import plural


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

    def describe(self) -> str:
        lrs = f"lr {self.lr:.3g} -> {self.min_lr:.3g}"
        return f"cosine ({lrs}, warmup {self.warmup_steps:,}, {self.total_steps:,} steps)"

    def resume_warning(self, saved: dict[str, Any] | None, step: int) -> str | None:
        """A warning when resuming at ``step`` changes the lr of steps already taken, or to come."""
        return resume_warning(self, saved, step)

    def _longer_warning(self, before: CosineSchedule, step: int) -> str | None:
        """Only ``--steps`` changed: the decay stretches, which changes the past after the warmup."""
        if step <= self.warmup_steps:
            return None
        return (
            f"--steps {self.total_steps:,} (was {before.total_steps:,}) stretches the cosine decay the "
            f"first {plural(step, 'step')} were trained on: the lr jumps from {before(step):.3g} to "
            f"{self(step):.3g}; "
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

    def describe(self) -> str:
        return (
            f"wsd (lr {self.lr:.3g} -> {self.min_lr:.3g}, warmup {self.warmup_steps:,}, decay over the "
            f"last {self.decay_fraction:.0%} of {self.total_steps:,} steps, from step {self.decay_start:,})"
        )

    def resume_warning(self, saved: dict[str, Any] | None, step: int) -> str | None:
        """A warning when resuming at ``step`` changes the lr of steps already taken, or to come."""
        return resume_warning(self, saved, step)

    def _longer_warning(self, before: WSDSchedule, step: int) -> str | None:
        """Only ``--steps`` changed: before the decay began that moves the plateau's end (no warning)."""
        if step <= before.decay_start and step <= self.decay_start:
            return None
        return (
            f"--steps {self.total_steps:,} (was {before.total_steps:,}) on a run whose decay had begun at "
            f"step {before.decay_start:,}: the lr jumps from {before(step):.3g} to {self(step):.3g}"
        )


Schedule = CosineSchedule | WSDSchedule


def from_state(saved: dict[str, Any] | None) -> Schedule | None:
    """The schedule a checkpoint recorded (``state_dict()``), or None when it cannot be told."""
    kinds = {"cosine": CosineSchedule, "wsd": WSDSchedule}
    kind = kinds.get((saved or {}).get("kind", "cosine"))
    if kind is None:
        return None
    try:
        return kind(**{k: v for k, v in (saved or {}).items() if k != "kind"})
    except TypeError:  # missing or unknown fields
        return None


def resume_warning(current: Schedule, saved: dict[str, Any] | None, step: int) -> str | None:
    """What changes when a run saved with the schedule ``saved`` resumes at ``step`` on
    ``current``: the lr of steps already taken, or of the steps to come; None when neither."""
    before = from_state(saved)
    if before is None or before == current:
        return None
    if (
        type(before) is type(current)
        and dataclasses.replace(before, total_steps=current.total_steps) == current
    ):
        return current._longer_warning(before, step)  # only --steps: a longer run, by the schedule's rule
    past = next((s for s in range(step) if before(s) != current(s)), None)
    end = max(before.total_steps, current.total_steps) + 1
    future = next((s for s in range(step, end) if before(s) != current(s)), None)
    if past is None and future is None:
        return None
    what = (
        f"the steps from {past + 1:,} on were trained on other learning rates, and the lr jumps from "
        f"{before(step):.3g} to {current(step):.3g}"
        if past is not None
        else f"the learning rates change from step {future + 1:,} on "
        f"({before(future):.3g} -> {current(future):.3g})"
    )
    return (
        f"the run was trained on {before.describe()}; resuming at step {step:,} on "
        f"{current.describe()}: {what}"
    )


def build_schedule(config: OptimizerConfig, total_steps: int) -> CosineSchedule | WSDSchedule:
    """The schedule ``--schedule`` names, for a run of ``total_steps`` optimizer steps."""
    if config.schedule == "wsd":
        return WSDSchedule(config.lr, config.min_lr, config.warmup_steps, total_steps, config.decay_fraction)
    return CosineSchedule(config.lr, config.min_lr, config.warmup_steps, total_steps)
