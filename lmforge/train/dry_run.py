"""``train --dry-run``'s report: what a run will cost (parameters, tokens, FLOPs, memory),
computed without data or a device.

May import ``model`` and ``lmforge.train.memory``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from lmforge.config import TrainingConfig
from lmforge.train.memory import build_on_meta, step_memory

# fp32 master weights (4) + fp32 gradients (4) + AdamW's two fp32 moments (8)
BYTES_PER_PARAM_TRAINING = 16


def dry_run_report(config: TrainingConfig, world_size: int = 1) -> dict[str, Any]:
    """Parameter counts, tokens per step, FLOPs and memory for ``config``."""
    model = build_on_meta(config)
    n_total = model.get_num_params(non_embedding=False)
    # the real vocabulary's rows only: padded rows (--pad-vocab-multiple) are not parameters that learn
    wpe = getattr(model.transformer, "wpe", None)  # the modern architecture has no position table
    n_positions = wpe.weight.numel() if wpe is not None else 0
    tables = getattr(model.transformer, "value_embeds", {})  # --value-embeds: embeddings too
    row_width = config.model.n_embd + sum(t.embedding_dim for t in tables.values())
    n_non_embedding = n_total - n_positions - config.model.vocab_size * row_width
    tokens_per_step = config.tokens_per_step * world_size
    flops_per_token = model.flops_per_token()
    weights = 4 * n_total
    step = _step_memory(config, world_size, model)
    return {
        "config": config.to_dict(),
        "parameters": {
            "total": n_total,
            "without_position_embeddings": model.get_num_params(non_embedding=True),
            "non_embedding": n_non_embedding,
        },
        "tokens_per_step": tokens_per_step,
        "total_tokens": tokens_per_step * config.train.steps,
        "flops_per_token": flops_per_token,
        "flops_per_step": flops_per_token * tokens_per_step,
        "memory_bytes": {
            "weights": weights,
            "gradients": 4 * n_total,
            "optimizer": 8 * n_total,
            "total": BYTES_PER_PARAM_TRAINING * n_total,
            # one training step of one process (what `train` checks against free memory)
            "activations": step.activations,
            "loss": step.loss,
            "step": step.total,
        },
    }


def _step_memory(config: TrainingConfig, world_size: int, model: nn.Module):
    """The training step's ``StepMemory`` on the device the run would take, at its dtype (fp32
    for ``auto``: the larger activations, so the dry run never says less)."""
    t = config.train
    device_type = t.device.split(":")[0]
    if device_type == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = t.dtype if t.dtype in ("bf16", "fp16") else "fp32"
    sharded = t.strategy == "fsdp" and world_size > 1
    return step_memory(config, dtype, world_size, sharded, device_type, model=model)
