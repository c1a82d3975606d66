"""Evaluation during training: the validation loss and a text sample of the model being
trained, computed when the loop asks (it records them).

Several processes: each rank scores its share of the validation windows and the mean
is reduced. An FSDP model's forward is a collective, so every rank also generates the
sample (the same text, from the same seed), for a fixed number of tokens.

May import ``eval``, ``data`` and ``distributed``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch.nn as nn

from lmforge import distributed as dist
from lmforge.config import TrainingConfig
from lmforge.data.store import PreparedDataset
from lmforge.errors import LmforgeError
from lmforge.train.hardware import Hardware
from lmforge.workspace import Workspace


class Evaluation:
    """Scores ``model`` on ``dataset``'s validation split and samples text with its tokenizer
    (loaded on first use). ``compiled``: the model's blocks are compiled (FSDP runs them eagerly
    here)."""

    def __init__(
        self,
        model: nn.Module,
        dataset: PreparedDataset,
        config: TrainingConfig,
        hardware: Hardware,
        *,
        compiled: bool,
        workspace: Workspace,
    ) -> None:
        self.model, self.config, self.hw = model, config, hardware
        self.val_tokens = dataset.tokens("validation")
        self.tokenizer_identity, self.workspace = dict(dataset.tokenizer_identity), workspace
        self.compiled = compiled
        self.samples_on = config.logging.sample_tokens > 0
        self._tokenizer = None

    def eager(self) -> contextlib.AbstractContextManager:
        # FSDP compiles the blocks themselves, which evaluation and samples share (see dist.eager)
        return dist.eager() if self.hw.sharded and self.compiled else contextlib.nullcontext()

    def loss(self) -> float:
        """Mean validation loss (``eval_tokens`` targets, or the whole split)."""
        return self._loss(self.config.train.eval_tokens or None)

    def probe(self) -> None:
        """One evaluation batch per rank, scored and thrown away: run after the first training
        step (litgpt runs one before it; after it, the optimizer state, which the first step
        allocates, is there too, as at every evaluation), so that evaluation's memory, on top of
        the model's and the optimizer's, fails in the first seconds rather than at the first
        ``eval_interval``. It draws no random numbers (eval mode, no dropout): the run's losses
        stay the same."""
        c = self.config
        block = c.model.block_size
        windows = c.train.batch_size * self.hw.world_size
        self._loss(block + (windows - 1) * min(c.window_stride, block))

    def _loss(self, max_tokens: int | None) -> float:
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
                    max_tokens=max_tokens,
                    device=self.hw.device,
                    dtype=self.hw.dtype,
                    rank=self.hw.rank,
                    world_size=self.hw.world_size,
                ),
            )
        dist.reshard(self.model)
        return result.loss

    @property
    def tokenizer(self):
        """The dataset's tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            from lmforge.data.tokenizer import tokenizer_from_identity

            self._tokenizer = tokenizer_from_identity(self.tokenizer_identity, workspace=self.workspace)
        return self._tokenizer

    def generate(self, prompt: str, max_tokens: int = 50, **kwargs: Any) -> str:
        """A completion of ``prompt`` (``lmforge.eval.generate.generate``'s options as keyword
        arguments: temperature, top_k, top_p, greedy, seed ...)."""
        from lmforge.eval.generate import generate

        kwargs.setdefault("dtype", self.hw.dtype)
        return generate(self.model, self.tokenizer, prompt, max_tokens=max_tokens, **kwargs)[0]

    def sample(self, step: int) -> str | None:
        """The text sample of ``step`` from the configured prompt; None when samples are off or
        this rank does not make them. A tokenizer that cannot be loaded turns samples off for
        the rest of the run (the ``LmforgeError`` says why)."""
        if not self.samples_on or not (self.hw.is_main or self.hw.sharded):
            return None
        logging = self.config.logging
        try:
            # a seed of its own: samples never touch the training RNG (exact resume)
            with self.eager():
                return self.generate(
                    logging.sample_prompt,
                    logging.sample_tokens,
                    seed=self.config.train.seed + step,
                    # not stopping at end-of-text, which could differ by a bit between ranks
                    **({"stop_at_eot": False} if self.hw.sharded else {}),
                )
        except LmforgeError:
            self.samples_on = False
            raise
        finally:
            dist.reshard(self.model)
