"""The training batches, one optimizer step at a time, fetched a step ahead.

``StepBatches.next()`` gives the ``grad_accum`` micro-batches of a step, on their way to the
device. ``prefetch()`` fetches and starts copying the next step's while the device still
works on the current one: ``TrainStep.update`` calls it just before its once-per-step host
sync, so the GPU does not idle at the step boundary while the host reads the data.

The data position a checkpoint saves (``state_dict``) is that of the step being taken, not
of the prefetched batches: a resumed run fetches them again, and stays bitwise equal to an
uninterrupted one.

May import ``lmforge.train.step`` (the ``Batch`` type).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lmforge.train.step import Batch


class StepBatches:
    """Steps of ``grad_accum`` micro-batches from ``loader`` (a ``TrainLoader``), each tensor
    sent with ``to_device``. Stands in for the loader in ``TrainingState``."""

    def __init__(
        self, loader: Any, grad_accum: int, to_device: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.loader, self.grad_accum, self.to_device = loader, grad_accum, to_device
        self._ahead: list[Batch] | None = None  # the next step's, fetched by prefetch()
        self._position: dict | None = None  # the loader's position before them

    def next(self) -> list[Batch]:
        """The next step's micro-batches (the prefetched ones when there are)."""
        if self._ahead is None:
            return self._fetch()
        batches, self._ahead, self._position = self._ahead, None, None
        return batches

    def prefetch(self) -> None:
        """Fetch the next step's micro-batches now (once)."""
        if self._ahead is None:
            self._position = self.loader.state_dict()
            self._ahead = self._fetch()

    def _fetch(self) -> list[Batch]:
        return [
            (self.to_device(x), self.to_device(y))
            for x, y in (next(self.loader) for _ in range(self.grad_accum))
        ]

    # the loader's checkpoint interface, as of the step being taken

    def state_dict(self) -> dict:
        return dict(self._position) if self._ahead is not None else self.loader.state_dict()

    def position_from(self, state: dict, saved_world_size: int) -> dict:
        return self.loader.position_from(state, saved_world_size)

    def load_state_dict(self, state: dict) -> None:
        self._ahead, self._position = None, None  # fetched from the old position
        self.loader.load_state_dict(state)
