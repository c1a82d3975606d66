"""How the trainer tells the outside world what it is doing, without printing.

The training loop calls a ``Reporter``; the CLI picks one (a Rich live view on a
terminal, plain lines otherwise, see ``lmforge.observe.dashboard``), a notebook or a
test may pass its own. Every method has a no-op default, so a reporter
implements only what it shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepStats:
    """Training metrics at a logging step."""

    step: int
    total_steps: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_sec: float
    mfu: float | None
    tokens: int
    eta_s: float | None
    elapsed_s: float


@dataclass(frozen=True)
class EvalStats:
    """A validation result, with the best so far."""

    step: int
    val_loss: float
    val_ppl: float
    best_val_loss: float
    best_step: int
    improved: bool
    evals_without_improvement: int


@dataclass
class TrainResult:
    """What ``TrainingManager.train()`` returns (and the CLI's summary table shows)."""

    run: str
    run_dir: Path
    status: str  # "finished" | "interrupted" (a full checkpoint saved)
    stop_reason: str  # "steps" | "early_stopping" | "signal"
    step: int
    total_steps: int
    tokens: int
    elapsed_s: float
    tokens_per_sec: float
    last_loss: float | None
    last_val_loss: float | None
    best_val_loss: float | None
    best_step: int | None
    bad_steps: int
    checkpoint: Path | None
    signal: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0, or 128 + the signal number for a run stopped by SIGINT/SIGTERM (130/143), as shells do."""
        return 128 + self.signal if self.signal else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["checkpoint"] = str(self.checkpoint) if self.checkpoint else None
        d["exit_code"] = self.exit_code
        return d


class Reporter:
    """Progress events of a training run; all no-ops here."""

    def start(self, info: dict[str, Any]) -> None:
        """Once, before the first step: run name and directory, device, sizes, resume point."""

    def step(self, stats: StepStats) -> None:
        """At every logging step."""

    def micro_batch(self, step: int, total_steps: int, done: int, of: int) -> None:
        """After each micro-batch of optimizer step ``step`` (``done`` of ``of``): progress between
        logging steps, and within a step that takes minutes."""

    def evaluation(self, stats: EvalStats) -> None:
        """After each validation."""

    def sample(self, step: int, prompt: str, text: str) -> None:
        """A text sample made at an evaluation."""

    def checkpoint(self, kind: str, path: Path, step: int) -> None:
        """A checkpoint was written."""

    def warning(self, message: str) -> None:
        """Something the user should know (a skipped step, a fallback)."""

    def end(self, result: TrainResult) -> None:
        """After the last step and the final checkpoint."""

    def close(self) -> None:
        """Always called last, also after an error: release the terminal."""
