"""Where the trained model lives: built, put on its device and wrapped for the strategy.

``build_train_model`` returns two views of one model: the plain ``GPT`` that the
optimizer, evaluation, samples and checkpoints use (no ``_orig_mod.`` or ``module.``
prefixes), and the module the training steps run (compiled, DDP-wrapped, or the
same FSDP-sharded one).

- one process, DDP: the model is built on the CPU (the seed's initial weights, or
  ``--init-from``'s), moved to the device, then wrapped in DDP and compiled *around*
  DDP, so that DDPOptimizer splits the graph at the gradient buckets and the
  all-reduce of one bucket overlaps the backward of the next (compiling the inner
  module would make the whole backward one node that DDP can only follow).
- FSDP: only rank 0 builds the full model, on the CPU; every rank builds it on the
  meta device (shapes, no memory), shards it, allocates its own shards on the device
  and receives them from rank 0 one parameter at a time. No rank ever holds the
  whole model on its device, and the initial weights are exactly those of one process
  with the same seed (rank 0 draws them with the same generator, in the same order),
  which initialising each shard on its own rank could not give.

May import ``model``, ``checkpoint`` (the weights of ``--init-from``) and ``distributed``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from lmforge import distributed as dist
from lmforge.config import ModelConfig
from lmforge.train.hardware import Hardware


def initial_model(config: ModelConfig, init_from: Path | None = None) -> nn.Module:
    """The model before training, on the CPU: the seed's initial weights, or a checkpoint's."""
    from lmforge.checkpoint import store as ckpt
    from lmforge.model import build_model

    model = build_model(config)
    if init_from is not None:
        ckpt.load_weights(model, ckpt.load_state_dict(init_from), where=init_from)
    return model


def build_train_model(
    config: ModelConfig, hw: Hardware, *, compiled: bool, init_from: Path | None = None
) -> tuple[nn.Module, nn.Module]:
    """``(model, train_model)`` for ``hw.strategy`` single / ddp / fsdp (see the module
    docstring). Call on every rank; the caller seeds the generator first (the same seed on every
    rank)."""
    if hw.sharded:
        model = _sharded(config, hw, compiled=compiled, init_from=init_from)
        return model, model
    model = initial_model(config, init_from).to(hw.device)
    wrapped = dist.apply_ddp(model, hw.device) if hw.strategy == "ddp" else model
    return model, dist.apply_compile(wrapped) if compiled else wrapped


def _sharded(config: ModelConfig, hw: Hardware, *, compiled: bool, init_from: Path | None) -> nn.Module:
    from lmforge.model import build_model

    full = initial_model(config, init_from).state_dict() if hw.is_main else {}
    with torch.device("meta"):
        model = build_model(config)
    if compiled:
        dist.apply_compile(model, whole=False)  # each block: the hooks between blocks stay eager
    dist.apply_fsdp(model, mixed_precision=torch.bfloat16 if hw.dtype == "bf16" else None)
    model.to_empty(device=hw.device)  # this rank's shards only, uninitialised until the broadcast
    dist.load_full_model_state(model, full, from_rank0=True)
    return model
