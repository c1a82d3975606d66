"""Will a training step fit? Its memory, computed from the shapes before the model is built,
and a run refused when it cannot fit (rather than an allocation error, or a first step that
swaps for minutes). Per process, a step needs

- the training state: fp32 weights, gradients and AdamW's two moments (16 bytes a
  parameter; a 1/world_size share of each under FSDP, which shards all four, the
  gradients included between the micro-batches of ``--grad-accum``: each is reduce-scattered,
  see ``distributed.set_grad_sync``), plus autocast's 16-bit copies of the weights during a step;
- the activations autograd keeps for backward, for one micro-batch: about 34
  bytes per token and width in each block at 16 bits (Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models", section 4.1,
  without the s² attention scores that fused SDPA kernels never store), twice that
  in fp32; with gradient checkpointing each block keeps its input only; on the CPU
  with attention dropout, SDPA's math kernel also keeps the (B, heads, T, T) scores;
- the loss's buffers: the gradient of the hidden states, the fp32 gradient of the
  head's weight, and one chunk of logits (``model.loss`` never makes all of them).

Allocator caching and fragmentation come on top, so a run is refused only when this
alone exceeds what the device has free.

May import ``model`` (shapes on the meta device, the loss's chunk sizes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lmforge.config import TrainingConfig
from lmforge.errors import LmforgeError
from lmforge.model.loss import CHUNK_ELEMENTS, DEFAULT_CHUNK_ELEMENTS
from lmforge.units import format_bytes

# Bytes saved for backward per token and unit of width in one block at 16-bit activations
# (Korthikanti et al. 2022, eq. 2 without the 5as/h attention-score term).
ACTIVATION_BYTES_16BIT = 34
# Working copies of one chunk of fp32 logits inside the loss (the logits, turned into their
# gradient in place, and its cast); measured on a CPU.
LOSS_CHUNK_COPIES = 2
# Bytes kept per attention score per activation byte when SDPA falls back to its math kernel
# (the CPU, with attention dropout): softmax output, dropout mask and output (~12 measured in fp32).
SCORE_BYTES_PER_ACT_BYTE = 3

ACTIVATIONS_HINT = (
    "lower --batch-size (raise --grad-accum to keep the tokens per step) or --block-size, "
    "or turn on --gradient-checkpointing"
)


@dataclass(frozen=True)
class StepMemory:
    """Bytes one process needs for a training step, by part."""

    state: int  # weights, gradients, AdamW moments (this rank's shards under FSDP), autocast copies
    activations: int  # kept for backward, one micro-batch
    loss: int  # the chunked loss's buffers
    vocab_share: float  # of ``state``, the share of the token embedding (and an untied head)

    @property
    def total(self) -> int:
        return self.state + self.activations + self.loss

    def hint(self) -> str:
        """What to lower: the flag behind the largest part."""
        if self.state >= self.activations + self.loss:
            if self.vocab_share > 0.5:
                return "lower --vocab-size"
            return "choose a smaller --preset (or lower --n-layer / --n-embd), or train with --strategy fsdp"
        if self.loss > self.activations:
            return "lower --vocab-size"
        return ACTIVATIONS_HINT


def build_on_meta(config: TrainingConfig) -> nn.Module:
    """The model on the meta device: exact shapes and counts, no memory, no init cost."""
    from lmforge.model import build_model

    with torch.device("meta"):
        return build_model(config.model)


def step_memory(
    config: TrainingConfig,
    dtype: str,
    world_size: int = 1,
    sharded: bool = False,
    device_type: str = "cuda",
    model: nn.Module | None = None,
) -> StepMemory:
    """The ``StepMemory`` of ``config`` at ``dtype`` (fp32/bf16/fp16) on a ``device_type``
    device, from the shapes of ``model`` (built on the meta device when not given: no memory)."""
    model = model if model is not None else build_on_meta(config)
    m = config.model
    C, L, T, B = m.n_embd, m.n_layer, m.block_size, config.train.batch_size
    V, rows = m.vocab_size, m.padded_vocab_size
    params = sum(p.numel() for p in model.parameters())  # a tied head is counted once
    vocab_params = sum(p.numel() for p in model.parameters() if p.size(0) == rows and p.dim() == 2)
    act_bytes = 2 if dtype in ("bf16", "fp16") else 4
    state = 16 * params // (world_size if sharded else 1)
    if act_bytes == 2:
        state += 2 * params  # autocast keeps a 16-bit copy of each weight for the step
    per_token = ACTIVATION_BYTES_16BIT * C * act_bytes // 2
    if m.gradient_checkpointing:
        activations = B * T * (L * C * act_bytes + per_token)  # block inputs, one block recomputed
    else:
        activations = B * T * L * per_token
    activations += 4 * B * T * C * act_bytes  # embeddings, final norm, the head's input
    if device_type == "cpu" and m.dropout > 0:
        # no fused kernel on the CPU takes attention dropout: the (B, heads, T, T) scores are kept
        blocks = 1 if m.gradient_checkpointing else L
        activations += blocks * B * m.n_head * T * T * SCORE_BYTES_PER_ACT_BYTE * act_bytes
    chunk_rows = max(1, CHUNK_ELEMENTS.get(device_type, DEFAULT_CHUNK_ELEMENTS) // V)
    loss = B * T * C * act_bytes + 4 * rows * C + LOSS_CHUNK_COPIES * 4 * min(chunk_rows, B * T) * V
    return StepMemory(state, activations, loss, vocab_params / params)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this process on ``device``, or None when it cannot be told (then
    nothing is refused). CPU: ``MemAvailable``, capped by a cgroup (container) limit."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    free = _meminfo_available()
    limit = _cgroup_free()
    if free is None:
        return limit
    return min(free, limit) if limit is not None else free


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_free() -> int | None:
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


def check_fits(
    config: TrainingConfig,
    device: torch.device,
    dtype: str,
    *,
    world_size: int = 1,
    sharded: bool = False,
    local_processes: int = 1,
) -> StepMemory:
    """Raise when a training step of ``config`` cannot fit on ``device``; return its ``StepMemory``.
    ``local_processes``: processes sharing this machine's RAM (CPU runs under torchrun)."""
    need = step_memory(config, dtype, world_size, sharded, device.type)
    free = available_bytes(device)
    share = local_processes if device.type == "cpu" else 1
    if free is not None and need.total * share > free:
        each = " per process" if share > 1 else ""
        raise LmforgeError(
            f"this run does not fit: a training step needs about {format_bytes(need.total)}{each} "
            f"(weights, gradients and AdamW {format_bytes(need.state)}, activations "
            f"{format_bytes(need.activations)} for --batch-size {config.train.batch_size} x "
            f"--block-size {config.model.block_size}, loss {format_bytes(need.loss)}), and the "
            f"{device.type} has {format_bytes(free)} free",
            need.hint(),
        )
    return need
