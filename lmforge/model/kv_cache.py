"""The keys and values of past positions, so generation runs each new token through the model once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lmforge.config import ModelConfig


class KVCache:
    """Keys and values of the positions seen so far, for every layer.

    Generation feeds the prompt once and then one token at a time; each step
    appends its keys/values here instead of recomputing the whole prefix.
    Buffers are allocated once at ``max_len`` so appending never reallocates.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions already stored (the same for every layer after a full forward)
        self.doc_ids: torch.Tensor | None = None  # (B, max_len): document masking's ids, on first use

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` of shape (B, nh, T, hs) after the past; return past + new."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were needed")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def document_ids(self, starts: torch.Tensor) -> torch.Tensor:
        """Document ids (B, past + T) of the cached positions and the new ones, where ``starts``
        (B, T) marks the new tokens that begin a document: the count goes on from the last cached
        position's, so a decode step masks what a full forward over the whole sequence would."""
        past, end = self.length, self.length + starts.size(1)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were needed")
        if self.doc_ids is None:
            self.doc_ids = torch.zeros(starts.size(0), self.max_len, dtype=torch.long, device=starts.device)
        before = self.doc_ids[:, past - 1 : past] if past else 0  # (B, 1): the last cached document
        self.doc_ids[:, past:end] = before + starts.long().cumsum(1)
        return self.doc_ids[:, :end]

    def advance(self, n: int) -> None:
        """Called by the model once all layers have appended ``n`` positions."""
        self.length += n


def new_kv_cache(config: ModelConfig, batch_size: int, max_len: int | None, weight: torch.Tensor) -> KVCache:
    """An empty cache for ``batch_size`` sequences of up to ``max_len`` tokens (the context by
    default), on ``weight``'s device, in the dtype the keys and values are computed in: the
    autocast dtype under autocast (an fp32 cache would double its memory and make every
    attention step read fp32 keys), else ``weight``'s."""
    device = weight.device
    dtype = weight.dtype
    if device.type in ("cuda", "cpu") and torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    head_dim = config.n_embd // config.n_head
    return KVCache(
        config.n_layer, batch_size, config.kv_heads, max_len or config.block_size, head_dim, device, dtype
    )
