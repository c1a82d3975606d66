"""The modern architecture (``--arch modern``), top to bottom: the 2025 levers on GPT-2's skeleton.

What changes from ``gpt.py`` and why (modded-nanogpt's records, nanochat):

- no learned positions: rotary embeddings turn q and k by their position, so attention
  scores depend on relative offsets and the KV cache stores already-turned keys;
- RMSNorm without a learnable gain, after the embedding, before each sub-block and at the
  end (a gain in front of a linear layer is redundant with that layer's weights);
- QK-norm: RMSNorm on each head's q and k after the rotation (Hugging Face's
  ``NanoChatAttention`` order), so attention logits stay bounded by ``sqrt(head_dim)``;
- ReLU² in the MLP; no biases anywhere;
- an untied LM head, and output projections that start at zero (each block starts as the
  identity; the head starts predicting uniformly);
- a tanh soft-cap on the logits (``c * tanh(logits / c)``), against runaway logits;
- optional grouped-query attention: ``n_kv_head`` key/value heads shared by the query heads;
- optional document masking: attention stays within the documents of a window (an end-of-text
  token starts the next one), in training, evaluation and generation alike.

Parameter names follow nanochat (``transformer.h.0.attn.c_q.weight``); ``lmforge.interop.nanochat``
maps them to Hugging Face's ``NanoChatForCausalLM``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.model.attention import attend, document_mask
from lmforge.model.blocks import context_start, flops_per_token, run_blocks
from lmforge.model.head import head_output
from lmforge.model.kv_cache import KVCache, new_kv_cache

ROPE_THETA = 10_000.0  # the rotary base of RoFormer, Llama 2 and NanoChatConfig's default


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, without a gain; in fp32 under autocast, as Hugging Face
    computes it (the mean of squares of bf16 values loses precision)."""
    return F.rms_norm(x.float(), (x.size(-1),), eps=eps).type_as(x)


class Rotary(nn.Module):
    """cos/sin tables of the rotary embedding for every position up to ``block_size``.

    Layout as in NanoChat (and Hugging Face's ``rotate_half``): a head's first half of
    dimensions pairs with its second half, ``(x1, x2) -> (x1 cos + x2 sin, x2 cos - x1 sin)``.
    The tables are buffers derived from the config, never stored (``persistent=False``), and
    never made inside ``forward``: a table made on first use in a compiled region is a side
    effect the compiler guards on, and the next call would recompile. They are made at init
    (on the CPU even under a ``torch.device("meta")`` build, whose loading fills only the
    stored tensors) and made again wherever the model moves (``to_empty`` of a sharded model
    would leave them uninitialised).
    """

    def __init__(self, head_dim: int, block_size: int) -> None:
        super().__init__()
        self.head_dim, self.block_size = head_dim, block_size
        cos, sin = self._tables(torch.device("cpu"))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.head_dim
        inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
        pos = torch.arange(self.block_size, dtype=torch.float32, device=device)
        freqs = torch.outer(pos, inv_freq)  # (block_size, hs / 2)
        return freqs.cos(), freqs.sin()

    def _apply(self, fn, recurse: bool = True):  # nn.Module._apply: every move, cast or to_empty
        super()._apply(fn, recurse)
        cos, sin = self._tables(self.cos.device)
        self.cos, self.sin = cos.to(self.cos.dtype), sin.to(self.sin.dtype)
        return self

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """``x`` (B, nh, T, hs) at positions ``start .. start + T - 1``, turned."""
        T = x.size(2)
        cos = self.cos[start : start + T].to(x.dtype)  # (T, hs / 2)
        sin = self.sin[start : start + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class ModernAttention(nn.Module):
    def __init__(self, config: ModelConfig, rotary: Rotary, layer_idx: int = 0) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.kv_heads
        self.head_dim = config.n_embd // config.n_head
        self.layer_idx = layer_idx
        self.qk_norm = config.qk_norm
        self.eps = config.layer_norm_epsilon
        self.dropout = config.dropout
        self.rotary = rotary  # one for all layers
        kv = self.n_kv_head * self.head_dim
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, kv, bias=False)
        self.c_v = nn.Linear(config.n_embd, kv, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, kv_cache: KVCache | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, T, C = x.size()
        hs = self.head_dim
        q = self.c_q(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.c_k(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.c_v(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)

        past = kv_cache.length if kv_cache is not None else 0
        q, k = self.rotary(q, past), self.rotary(k, past)
        if self.qk_norm:
            q, k = rms_norm(q, self.eps), rms_norm(k, self.eps)
        if kv_cache is not None:
            k, v = kv_cache.append(self.layer_idx, k, v)  # (B, nkv, past + T, hs)

        dropout_p = self.dropout if self.training else 0.0
        y = attend(q, k, v, past, dropout_p, gqa=self.n_kv_head != self.n_head, mask=attn_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class ReluSquaredMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.relu(self.c_fc(x)).square()))  # (B, T, 4C) inside


class ModernBlock(nn.Module):
    def __init__(self, config: ModelConfig, rotary: Rotary, layer_idx: int = 0) -> None:
        super().__init__()
        self.eps = config.layer_norm_epsilon
        self.attn = ModernAttention(config, rotary, layer_idx)
        self.mlp = ReluSquaredMLP(config)

    def forward(
        self, x: torch.Tensor, kv_cache: KVCache | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(rms_norm(x, self.eps), kv_cache, attn_mask)
        x = x + self.mlp(rms_norm(x, self.eps))
        return x


class ModernGPT(nn.Module):
    """The same interface as ``GPT`` (forward, ``new_kv_cache``, ``get_num_params``,
    ``flops_per_token``), so training, evaluation and generation use either."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.rotary = Rotary(config.n_embd // config.n_head, config.block_size)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([ModernBlock(config, self.rotary, i) for i in range(config.n_layer)]),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if not self.transformer.wte.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat's initialisation: embeddings normal(0, 1) (they are normalised at once),
        input projections with std 1/sqrt(fan_in) (shrunk for wide-in-narrow-out matrices),
        and zero for every output projection and the head, so each block starts as the
        identity and the first prediction is uniform."""
        V = self.config.vocab_size
        wte = self.transformer.wte.weight
        nn.init.normal_(wte[:V], mean=0.0, std=1.0)
        wte[V:].zero_()  # padded rows start (and stay) at 0
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name == "lm_head.weight":
                nn.init.zeros_(p)
            elif p.dim() == 2 and p is not wte:
                fan_out, fan_in = p.shape
                nn.init.normal_(p, mean=0.0, std=min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in))

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count without the padded rows. There are no position embeddings, so
        ``non_embedding`` changes nothing (``GPT`` leaves its position embeddings out there)."""
        n = sum(p.numel() for p in self.parameters())
        return n - 2 * (self.config.padded_vocab_size - self.config.vocab_size) * self.config.n_embd

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        loss_reduction: str = "mean",
        with_argmax: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """As ``GPT.forward``: logits (B, T, vocab), with ``targets`` the mean loss, or with
        ``loss_reduction="none"`` the per-token losses; all of the soft-capped logits."""
        context_start(kv_cache, idx.size(1), self.config.block_size)
        mask = self.document_mask(idx, kv_cache) if self.config.document_masking else None
        eps = self.config.layer_norm_epsilon
        x = self.transformer.drop(rms_norm(self.transformer.wte(idx), eps))  # (B, T, C)
        recompute = self.config.gradient_checkpointing and self.training
        x = run_blocks(self.transformer.h, x, kv_cache, recompute, attn_mask=mask)
        x = rms_norm(x, eps)
        return head_output(
            x, self.lm_head.weight, self.config, targets, kv_cache, loss_reduction, with_argmax
        )

    def document_mask(self, idx: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        """The attention mask (B, 1, T, past + T) of document masking, once per forward: an
        end-of-text token starts a document (it is that document's BOS), and no token sees one
        before it. Document ids count the end-of-text tokens so far, the cached ones included."""
        eot = self.config.eot_token
        if eot < 0:
            raise ConfigError(
                "--document-masking needs the end-of-text token id, and model.eot_token is not set",
                "set ModelConfig(eot_token=...) to the tokenizer's (a run takes its dataset's)",
            )
        starts = idx == eot  # (B, T)
        doc_ids = starts.long().cumsum(1) if kv_cache is None else kv_cache.document_ids(starts)
        return document_mask(doc_ids, idx.size(1))

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` tokens (``kv_heads`` each)."""
        return new_kv_cache(self.config, batch_size, max_len, self.transformer.wte.weight)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: the embedding lookup is no matmul; the untied head is."""
        matmul_params = self.get_num_params() - self.config.vocab_size * self.config.n_embd
        return flops_per_token(self.config, matmul_params, seq_len)
