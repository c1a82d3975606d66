"""One pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); and what every
architecture shares around its blocks (the context check, the run through the blocks, the FLOPs
count)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from lmforge.config import ModelConfig
from lmforge.model.attention import CausalSelfAttention
from lmforge.model.kv_cache import KVCache
from lmforge.model.mlp import MLP


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


def context_start(kv_cache: KVCache | None, new_tokens: int, block_size: int) -> int:
    """The position of the first new token (after the cached ones); refuses a sequence longer
    than the context."""
    past = kv_cache.length if kv_cache is not None else 0
    if past + new_tokens > block_size:
        raise ValueError(f"sequence of {past + new_tokens} tokens is longer than the context of {block_size}")
    return past


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    kv_cache: KVCache | None,
    recompute: bool,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x`` through every block; ``recompute`` (gradient checkpointing in training) keeps only
    the blocks' inputs and recomputes their activations in backward. The cache advances once
    every layer has stored the new positions. ``attn_mask``: every block's attention mask
    (document masking), passed only when there is one."""
    extra = {} if attn_mask is None else {"attn_mask": attn_mask}
    for block in blocks:
        if recompute and kv_cache is None:
            x = checkpoint(block, x, use_reentrant=False, **extra)
        else:
            x = block(x, kv_cache, **extra)
    if kv_cache is not None:
        kv_cache.advance(x.size(1))
    return x


def flops_per_token(config: ModelConfig, matmul_params: int, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward): 6 per weight of a matmul (``matmul_params``:
    lookups such as embeddings count none, the head does) plus attention's scores and values
    over ``seq_len`` positions (PaLM appendix B)."""
    t = seq_len or config.block_size
    return 6 * matmul_params + 12 * config.n_layer * config.n_embd * t
