"""The bad-step policy: after each optimizer step, what the loop does next.

``Recovery.decide`` is told how a step went and answers with a ``Decision``: go on, skip
the step (nothing was updated; the next batches try the same step number again), roll
back to a full checkpoint, or stop. A non-finite step is recorded (``bad_step`` in
``metrics.jsonl``, a warning) and counted; after ``max_bad_steps`` of them in a row the run
rolls back to its newest full checkpoint (weights, optimizer, RNG; the data moves on past
the bad batches, as PaLM did for loss spikes), at most ``MAX_ROLLBACKS`` times; without a
checkpoint to go back to, or past that, it stops. fp16 loss-scale overflows are the scaler
finding its level: skipped, not counted.

The policy only decides; the loop writes the records and loads the checkpoint.
May import ``lmforge.train.step`` (the outcome it judges) and ``units``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmforge.train.step import StepOutcome
from lmforge.units import plural

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


@dataclass(frozen=True)
class Decision:
    """What the loop does after a step, with the record and warning that go with it."""

    action: Literal["continue", "skip", "roll_back", "stop"]
    checkpoint: Path | None = None  # roll_back: the full checkpoint to load
    record: dict[str, Any] | None = None  # a line for metrics.jsonl
    warning: str | None = None  # for the reporter
    error: str | None = None  # stop: why (raised with DIVERGED_HINT)


class Recovery:
    """Counts bad steps in ``counts`` (the run's, saved in full checkpoints) and decides."""

    def __init__(self, max_bad_steps: int, counts: BadSteps | None = None) -> None:
        self.max_bad_steps = max_bad_steps
        self.counts = counts if counts is not None else BadSteps()

    def decide(self, out: StepOutcome, step: int, tokens: int, latest_full: Path | None) -> Decision:
        """After an attempt at step ``step + 1`` (``step`` and ``tokens`` completed so far);
        ``latest_full``: the run's newest full checkpoint (needed for a bad step only)."""
        if out.status == "ok":
            self.counts.consecutive = 0
            return Decision("continue")
        if out.status == "overflow":
            return Decision("skip")  # fp16 loss scaling finding its level: normal, not a bad step
        c = self.counts
        c.consecutive += 1
        c.total += 1
        attempted = step + 1
        loss, grad_norm = out.loss.item(), out.grad_norm.item()
        record = {
            "kind": "bad_step",
            "step": attempted,
            "loss": loss,
            "grad_norm": grad_norm,
            "consecutive": c.consecutive,
            "tokens": tokens,
            "time": time.time(),
        }
        warning = (
            f"step {attempted}: non-finite loss ({loss}) or gradient norm ({grad_norm}); "
            f"step skipped, nothing updated ({c.consecutive}/{self.max_bad_steps} in a row)"
        )
        if c.consecutive < self.max_bad_steps:
            return Decision("skip", record=record, warning=warning)
        what = (
            f"training diverged: {plural(c.consecutive, 'step')} in a row had a non-finite loss or gradient "
            f"(at step {attempted})"
        )
        if latest_full is None:
            error = f"{what}, and there is no full checkpoint to roll back to"
            return Decision("stop", record=record, warning=warning, error=error)
        if c.rollbacks >= MAX_ROLLBACKS:
            error = f"{what}, after {plural(c.rollbacks, 'rollback')} to {latest_full}"
            return Decision("stop", record=record, warning=warning, error=error)
        c.rollbacks += 1
        c.consecutive = 0
        return Decision("roll_back", checkpoint=latest_full, record=record, warning=warning)

    def rolled_back(self, checkpoint: Path, from_step: int, step: int, tokens: int) -> Decision:
        """The record and warning of a rollback to ``checkpoint`` (now at ``step``), once loaded."""
        record = {
            "kind": "rollback",
            "step": step,
            "from_step": from_step,
            "checkpoint": str(checkpoint),
            "tokens": tokens,
            "time": time.time(),
        }
        warning = (
            f"rolled back to {checkpoint} (step {step}); the data moves on past the bad batches "
            f"(rollback {self.counts.rollbacks}/{MAX_ROLLBACKS})"
        )
        return Decision("continue", record=record, warning=warning)
