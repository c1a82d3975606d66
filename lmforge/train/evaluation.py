"""Evaluation during training: the validation loss at every ``--eval-interval``, its
records (``metrics.jsonl``, W&B, the reporter) and a text sample.

Several processes: each rank scores its share of the validation windows and the mean
is reduced. An FSDP model's forward is a collective, so every rank also generates the
sample (the same text, from the same seed), for a fixed number of tokens.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from lmforge import distributed as dist
from lmforge.config import TrainingConfig
from lmforge.errors import LmforgeError
from lmforge.observe.reporting import EvalStats, Reporter
from lmforge.train.run_files import RunFiles
from lmforge.train.state import Progress


class Evaluation:
    """Scores ``model`` on ``val_tokens`` and records the result in ``progress`` and ``files``;
    ``generate(prompt, max_tokens, **options)`` makes the samples."""

    def __init__(
        self,
        model: nn.Module,
        val_tokens,
        config: TrainingConfig,
        *,
        device: torch.device,
        dtype: str,
        rank: int,
        world_size: int,
        strategy: str,
        compiled: bool,
        progress: Progress,
        files: RunFiles,
        reporter: Reporter,
        generate: Callable[..., str],
    ) -> None:
        self.model, self.val_tokens, self.config = model, val_tokens, config
        self.device, self.dtype, self.rank, self.world_size = device, dtype, rank, world_size
        self.fsdp = strategy == "fsdp"
        self.compiled = compiled
        self.progress, self.files, self.reporter = progress, files, reporter
        self.generate = generate
        self.samples_ok = config.logging.sample_tokens > 0

    def eager(self) -> contextlib.AbstractContextManager:
        # FSDP compiles the blocks themselves, which evaluation and samples share (see dist.eager)
        return dist.eager() if self.fsdp and self.compiled else contextlib.nullcontext()

    def loss(self) -> float:
        """Mean validation loss (``eval_tokens`` targets, or the whole split)."""
        from lmforge.eval.evaluate import evaluate_tokens
        from lmforge.eval.options import EvalOptions

        c = self.config
        block = c.model.block_size
        with self.eager():
            result = evaluate_tokens(
                self.model,
                self.val_tokens,
                EvalOptions(
                    block_size=block,
                    stride=min(c.window_stride, block),
                    batch_size=c.train.batch_size,
                    max_tokens=c.train.eval_tokens or None,
                    device=self.device,
                    dtype=self.dtype,
                    rank=self.rank,
                    world_size=self.world_size,
                ),
            )
        dist.reshard(self.model)
        return result.loss

    def record(self, val_loss: float) -> bool:
        """Record ``val_loss`` at the current step; True when it is the best so far."""
        p = self.progress
        improved = p.add_eval(val_loss)
        val_ppl = math.exp(min(val_loss, 700.0))
        self.files.metric(
            {"kind": "eval", "step": p.step, "val_loss": val_loss, "val_ppl": val_ppl}
            | {"tokens": p.tokens, "time": time.time()}
        )
        self.files.logger.log({"val/loss": val_loss, "val/ppl": val_ppl}, step=p.step)
        best = p.best_val_loss if p.best_val_loss is not None else val_loss
        self.reporter.evaluation(
            EvalStats(p.step, val_loss, val_ppl, best, p.best_step or p.step, improved, p.evals_since_best)
        )
        return improved

    def sample(self) -> None:
        """A text sample from the prompt (recorded and reported); turned off for the rest of the
        run, with a warning, if the tokenizer cannot be loaded."""
        if not self.samples_ok or not (self.rank == 0 or self.fsdp):
            return
        prompt, step = self.config.logging.sample_prompt, self.progress.step
        try:
            # a seed of its own: samples never touch the training RNG (exact resume)
            with self.eager():
                text = self.generate(
                    prompt,
                    self.config.logging.sample_tokens,
                    seed=self.config.train.seed + step,
                    # not stopping at end-of-text, which could differ by a bit between ranks
                    **({"stop_at_eot": False} if self.fsdp else {}),
                )
        except LmforgeError as exc:
            self.samples_ok = False
            self.reporter.warning(f"text samples are off: {exc}")
            return
        finally:
            dist.reshard(self.model)
        self.files.sample(prompt, text)
        self.reporter.sample(step, prompt, text)
