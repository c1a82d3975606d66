"""``EvalOptions``: how a model is scored, one value passed from ``evaluate_checkpoint`` down to
the batches of both protocols, and the one-line errors for option values that cannot work.

Light (no torch): the CLI checks options with it before a model is loaded. Imports only
``lmforge.errors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmforge.errors import UsageError

if TYPE_CHECKING:
    import torch

DEFAULT_SPLITS = ("validation", "test")
DEFAULT_BATCH_SIZE = 8
PROTOCOLS = ("stream", "harness")


@dataclass(frozen=True)
class EvalOptions:
    """How a model is scored, passed unchanged from ``evaluate_checkpoint`` down to the batches:
    the windows, the batch, where and in what precision, and this process's share of the work.
    The defaults are ``lmforge eval``'s."""

    block_size: int | None = None  # window length; None: the model's context
    stride: int | None = None  # step between windows; None: half the window
    batch_size: int = DEFAULT_BATCH_SIZE  # windows (or requests) per forward pass
    max_tokens: int | None = None  # score only the first N targets of a split; None: all
    device: torch.device | str | None = None  # None: the model's own ("auto" where a checkpoint is loaded)
    dtype: str = "fp32"  # autocast: fp32, bf16 or fp16 ("auto" where a checkpoint is loaded)
    rank: int = 0  # this process's share of the windows: rank, rank + world_size, ...
    world_size: int = 1

    def window(self, context: int) -> tuple[int, int]:
        """``(block_size, stride)`` for a model with ``context`` positions, defaults filled in
        and checked (one-line errors)."""
        block_size = context if self.block_size is None else self.block_size
        stride = max(1, block_size // 2) if self.stride is None else self.stride
        check_window(block_size, stride, self.batch_size, context)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        return block_size, stride


def check_window(block_size: int, stride: int, batch_size: int, context: int) -> None:
    """The one-line errors for window options that cannot work."""
    if block_size < 1:
        raise UsageError(f"--block-size must be >= 1, got {block_size}")
    if block_size > context:
        raise UsageError(
            f"--block-size {block_size} is larger than the model's context of {context} tokens",
            f"use --block-size {context} or less",
        )
    if not 1 <= stride <= block_size:
        raise UsageError(
            f"--stride must be between 1 and the block size ({block_size}), got {stride}",
            f"--stride {block_size} gives non-overlapping windows, --stride {max(1, block_size // 2)} "
            "gives every token at least half a block of context",
        )
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")


def check_protocol(protocol: str, options: EvalOptions) -> None:
    """The one-line errors for an unknown protocol, or stream-only options under harness."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown --protocol {protocol!r}", f"choose from {', '.join(PROTOCOLS)}")
    if protocol == "harness":
        stream_only = {
            "--block-size": options.block_size,
            "--stride": options.stride,
            "--max-tokens": options.max_tokens,
        }
        given = [flag for flag, value in stream_only.items() if value is not None]
        if given:
            raise UsageError(
                f"{', '.join(given)} apply to --protocol stream only",
                "the harness protocol scores whole documents in disjoint windows of the model's context",
            )
