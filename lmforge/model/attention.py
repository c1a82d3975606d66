"""Causal self-attention: ``attend`` (the SDPA call both architectures share, with and without a
KV cache) and GPT-2's multi-head attention on it."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.model.kv_cache import KVCache


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past: int,
    dropout_p: float,
    gqa: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of ``q`` (B, nh, T, hs) at positions ``past .. past + T - 1`` over
    ``k, v`` (B, nkv, past + T, hs) on PyTorch's fused SDPA kernels -> (B, nh, T, hs).
    ``gqa``: fewer key/value heads than query heads, each shared by a group of queries.
    ``mask`` (B, 1, T, past + T) bool, True where a query may look: it replaces the causal mask
    and must include it (``document_mask``)."""
    T = q.size(2)
    extra = {"enable_gqa": True} if gqa else {}  # the argument exists from torch 2.5 on; GPT-2 runs on 2.4
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, **extra)
    if past == 0:
        # is_causal lets SDPA pick the Flash / memory-efficient kernels on GPU
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, **extra)
    if T == 1:
        # one new token may look at every cached position: no mask at all
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, **extra)
    # several new tokens after a cached prefix: is_causal would align the mask to the top-left
    # corner, so give the bottom-right-aligned causal mask explicitly
    mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, **extra)


def document_mask(doc_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The block-diagonal causal mask of document masking: (B, 1, T, S) bool from the document
    ids (B, S) of every position so far, the last ``T = new_tokens`` of them the queries'. A
    query at position p sees key s where ``s <= p`` and both lie in the same document.

    A boolean mask costs SDPA its Flash kernel on CUDA; FlexAttention's block mask would skip
    the masked-out tiles instead (faster on long windows of many documents), but this runs
    the same on every device."""
    S = doc_ids.size(1)
    past = S - new_tokens
    causal = torch.ones(new_tokens, S, dtype=torch.bool, device=doc_ids.device).tril(diagonal=past)
    same_doc = doc_ids[:, past:, None] == doc_ids[:, None, :]  # (B, T, S)
    return (same_doc & causal).unsqueeze(1)  # (B, 1, T, S): one mask for every head


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.layer_idx = layer_idx
        self.dropout = config.dropout
        # q, k, v for all heads in one matmul; names follow GPT-2 (and Hugging Face's GPT2Attention)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)

        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.append(self.layer_idx, k, v)  # (B, nh, past + T, hs)

        y = attend(q, k, v, past, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): re-assemble the heads
        return self.resid_dropout(self.c_proj(y))
