"""What a training run is made of, built once its config and hardware are decided: the data
loader, the model with its optimizer and optimizer step, and the throughput meter
(``TrainingManager.__init__`` calls these; what the run is, is decided by
``lmforge.train.run_spec``).

``make_model_and_step`` seeds the random generators: with the run's seed before the model is
built (the same initial weights on every rank), with a seed of each rank's own after it.

May import ``data``, ``device``, ``observe.throughput`` and the train modules of the parts it builds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lmforge.config import TrainingConfig
from lmforge.data.dataset import TrainLoader, make_dataset
from lmforge.data.store import PreparedDataset
from lmforge.device import newton_schulz_dtype, peak_flops, resolve_compile
from lmforge.observe.throughput import ThroughputMeter
from lmforge.train.hardware import Hardware
from lmforge.train.memory import check_fits
from lmforge.train.optim import MuonAdamW, ParamGroupCounts, build_optimizer
from lmforge.train.parallel import build_train_model
from lmforge.train.rng import derive_seed, seed_everything
from lmforge.train.step import TrainStep


def make_train_loader(config: TrainingConfig, dataset: PreparedDataset, hw: Hardware) -> TrainLoader:
    """This rank's slice of every global batch of the training split."""
    t = config.train
    train_set = make_dataset(
        dataset.tokens("train"),
        config.model.block_size,
        config.window_stride,
        config.data.sampling,
        t.seed,
        split="train",
    )
    return TrainLoader(
        train_set,
        t.batch_size,
        seed=t.seed,
        rank=hw.rank,
        world_size=hw.world_size,
        num_workers=config.data.num_workers,
        pin_memory=hw.device.type == "cuda",
    )


@dataclass(frozen=True)
class ModelAndStep:
    """The model, its optimizer and the step that trains them, with the compile decision."""

    model: nn.Module  # the plain module: what is evaluated, sampled and checkpointed
    optimizer: torch.optim.Optimizer | MuonAdamW
    param_counts: ParamGroupCounts
    step: TrainStep
    compiled: bool
    compile_reason: str


def make_model_and_step(
    config: TrainingConfig,
    hw: Hardware,
    *,
    init_from: Path | None = None,
    cache_dir: Path | None = None,
) -> ModelAndStep:
    """Refused before anything is allocated when a step cannot fit; then the model (compiled,
    DDP-wrapped or FSDP-sharded), its optimizer and ``TrainStep``. Call on every rank.

    A single process falls back to the eager model when compilation fails (FSDP compiles the
    blocks in place and DDP has wrapped the compiled module: there a failed compilation stands).
    """
    t = config.train
    local = int(os.environ.get("LOCAL_WORLD_SIZE", hw.world_size))  # sharing the RAM
    check_fits(
        config, hw.device, hw.dtype, world_size=hw.world_size, sharded=hw.sharded, local_processes=local
    )
    compiled, compile_reason = resolve_compile(t.compile, hw.device, hw.dtype, t.steps)
    seed_everything(t.seed)  # the same initial weights on every rank
    model, train_model = build_train_model(config.model, hw, compiled=compiled, init_from=init_from)
    if hw.rank > 0:
        # dropout masks of their own; rank 0 goes on as a single process would
        seed_everything(derive_seed(t.seed, 0, hw.rank))
    ns_dtype = (
        newton_schulz_dtype(hw.device, cache_dir) if config.optim.optimizer == "muon" else torch.bfloat16
    )
    optimizer, param_counts = build_optimizer(model, config.optim, hw.device, ns_dtype)
    # fp16 needs loss scaling against underflowing gradients; bf16 has fp32's range and does not
    scaler = torch.amp.GradScaler(hw.device.type, enabled=hw.dtype == "fp16")
    step = TrainStep(
        model,
        optimizer,
        scaler,
        train_model=train_model,
        hardware=hw,
        max_grad_norm=config.optim.max_grad_norm,
        fall_back_to_eager=compiled and hw.strategy == "single",
    )
    return ModelAndStep(model, optimizer, param_counts, step, compiled, compile_reason)


def make_throughput_meter(model: nn.Module, config: TrainingConfig, hw: Hardware) -> ThroughputMeter:
    """Tokens/s and MFU. Tokens/s are counted over all ranks, so MFU is against the peak of all
    their devices."""
    peak = peak_flops(hw.device, hw.dtype)
    return ThroughputMeter(
        model.flops_per_token(config.model.block_size), peak * hw.world_size if peak else None
    )
