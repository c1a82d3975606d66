"""What a training run is made of, built once its config and hardware are decided: the data
loader, the model with its optimizer and optimizer step, the throughput meter and the
checkpointer (``TrainingManager.__init__`` calls these; what the run is, is decided by
``lmforge.train.setup``).

``make_model_and_step`` seeds the random generators: with the run's seed before the model is
built (the same initial weights on every rank), with a seed of each rank's own after it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lmforge.config import TrainingConfig
from lmforge.data.dataset import TrainLoader, make_dataset
from lmforge.data.store import PreparedDataset
from lmforge.device import TORCH_DTYPES, newton_schulz_dtype, peak_flops, resolve_compile
from lmforge.observe.throughput import ThroughputMeter
from lmforge.train.memory import check_fits
from lmforge.train.optim import MuonAdamW, ParamGroupCounts, build_optimizer
from lmforge.train.parallel import build_train_model
from lmforge.train.rng import derive_seed, seed_everything
from lmforge.train.state import Checkpointer, TrainingState
from lmforge.train.step import TrainStep
from lmforge.workspace import RunDir


def make_train_loader(
    config: TrainingConfig, dataset: PreparedDataset, device: torch.device, rank: int, world_size: int
) -> TrainLoader:
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
        rank=rank,
        world_size=world_size,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
    )


@dataclass(frozen=True)
class ModelAndStep:
    """The model, its optimizer and the step that trains them, with the compile decision."""

    model: nn.Module  # the plain module: what is evaluated, sampled and checkpointed
    optimizer: torch.optim.Optimizer | MuonAdamW
    param_counts: ParamGroupCounts
    train_step: TrainStep
    compiled: bool
    compile_reason: str


def make_model_and_step(
    config: TrainingConfig,
    *,
    strategy: str,
    device: torch.device,
    dtype: str,
    scaler: torch.amp.GradScaler,
    rank: int,
    world_size: int,
    init_from: Path | None,
    on_compile_failure: Callable[[Exception], nn.Module],
    cache_dir: Path | None = None,
) -> ModelAndStep:
    """Refused before anything is allocated when a step cannot fit; then the model (compiled,
    DDP-wrapped or FSDP-sharded), its optimizer and ``TrainStep``. Call on every rank.

    ``on_compile_failure`` is the eager fallback of a single process (FSDP compiles the blocks in
    place and DDP has wrapped the compiled module: there a failed compilation stands).
    """
    t = config.train
    sharded = strategy == "fsdp"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))  # sharing the RAM
    check_fits(config, device, dtype, world_size=world_size, sharded=sharded, local_processes=local)
    compiled, compile_reason = resolve_compile(t.compile, device, dtype, t.steps)
    seed_everything(t.seed)  # the same initial weights on every rank
    model, train_model = build_train_model(
        config.model,
        strategy=strategy,
        device=device,
        compiled=compiled,
        dtype=dtype,
        rank=rank,
        init_from=init_from,
    )
    if rank > 0:
        # dropout masks of their own; rank 0 goes on as a single process would
        seed_everything(derive_seed(t.seed, 0, rank))
    ns_dtype = newton_schulz_dtype(device, cache_dir) if config.optim.optimizer == "muon" else torch.bfloat16
    optimizer, param_counts = build_optimizer(model, config.optim, device, ns_dtype)
    train_step = TrainStep(
        model,
        optimizer,
        scaler,
        train_model=train_model,
        device=device,
        autocast_dtype=TORCH_DTYPES[dtype] if dtype != "fp32" else None,
        max_grad_norm=config.optim.max_grad_norm,
        world_size=world_size,
        sharded=sharded,
        eager_fallback=on_compile_failure if compiled and strategy == "single" else None,
    )
    return ModelAndStep(model, optimizer, param_counts, train_step, compiled, compile_reason)


def make_throughput_meter(
    model: nn.Module, config: TrainingConfig, device: torch.device, dtype: str, world_size: int
) -> ThroughputMeter:
    """Tokens/s and MFU. Tokens/s are counted over all ranks, so MFU is against the peak of all
    their devices."""
    peak = peak_flops(device, dtype)
    return ThroughputMeter(
        model.flops_per_token(config.model.block_size), peak * world_size if peak else None
    )


def make_checkpointer(
    state: TrainingState,
    run: RunDir,
    config: TrainingConfig,
    dataset: PreparedDataset,
    *,
    strategy: str,
    device: torch.device,
) -> Checkpointer:
    """Saves and loads ``state`` in the run's directory, each checkpoint with the run's config,
    tokenizer and dataset as its metadata."""
    return Checkpointer(
        state,
        run,
        {"config": config.to_dict(), "tokenizer": state.tokenizer, "dataset": dataset.name},
        keep_last=config.checkpoint.keep_last,
        sharded=strategy == "fsdp",
        padded_vocab=config.model.padded_vocab_size,
        optim=config.optim,
        device=device,
    )
