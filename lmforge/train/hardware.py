"""Where and how a training process computes: ``Hardware``, decided once per run.

The device (one GPU per process under torchrun), the precision and the parallel strategy
(``single``, ``ddp``, ``fsdp``), with this process's rank among ``world_size``. Everything
the training path asks about them (the autocast context, whether the model is sharded, the
torch dtype, how a batch reaches the device) is asked here.

May import ``lmforge.device``, ``config`` and ``errors``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lmforge.config import TrainingConfig
from lmforge.device import TORCH_DTYPES
from lmforge.errors import UsageError

Strategy = Literal["single", "ddp", "fsdp"]


@dataclass(frozen=True)
class Hardware:
    """The device, precision and strategy of one training process."""

    device: torch.device
    dtype: str  # "fp32", "bf16" or "fp16"
    strategy: Strategy = "single"
    rank: int = 0
    world_size: int = 1
    dtype_reason: str = ""  # why this precision (shown at start)

    @classmethod
    def resolve(
        cls,
        config: TrainingConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        cache_dir: Path | None = None,
    ) -> Hardware:
        """The run's ``--device``, ``--dtype`` and ``--strategy`` made concrete for this process.
        ``cache_dir`` keeps the CPU's bf16 measurement between runs."""
        from lmforge.device import resolve_device, resolve_precision

        t = config.train
        device = resolve_device(t.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        dtype, why = resolve_precision(t.dtype, device, cache_dir)
        strategy = t.strategy if world_size > 1 else "single"
        if strategy == "fsdp" and dtype == "fp16":
            raise UsageError(
                "--strategy fsdp does not support --dtype fp16 (its loss scaler sees only local shards)",
                "use --dtype bf16 (or fp32), or --strategy ddp",
            )
        return cls(device, dtype, strategy, rank, world_size, why)

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def sharded(self) -> bool:
        """FSDP: each rank holds a shard of every parameter, gradient and optimizer state."""
        return self.strategy == "fsdp"

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and reports."""
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's mixed precision (none in fp32)."""
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.torch_dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """``x``, contiguous, on its way to the device (pinned and asynchronous to a GPU). The
        loader's batches are views of one (B, T + 1) gather: pinned as they are, each would go
        through a pageable contiguous copy first."""
        x = x.contiguous()
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)
