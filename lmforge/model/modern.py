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

Three levers that connect the blocks, each off by default (issue 26):

- ``--value-embeds``: a token table per layer whose row for each input token is added to the
  attention values, times a gate per key/value head (``2 * sigmoid`` of a zero-initialised linear
  of the block input's first channels, so it starts at exactly 1 and can close or double). The
  tables sit on alternating layers ending with the last, as nanochat's (its layout serves any
  depth; modded-nanogpt's first-and-last-three is tuned to 12 layers and shares tables between
  them). They start like ``c_v``'s weights rather than at zero: a zero table would leave its gate
  without a gradient until the table had grown;
- ``--residual-lambdas``: before each block ``x = resid_lambda * x + x0_lambda * x0``, with ``x0``
  the normalised embedding. ``resid_lambda`` starts at 1 (the plain residual stream) and
  ``x0_lambda`` as nanochat's, from 0.2 at the first block to 0.05 at the last: early layers
  take more of the embedding back;
- ``--unet-skips``: the output of block ``j`` of the first half is added, times a learnable
  ``skip_weights[j]``, to the input of its mirror block ``n_layer - 1 - j`` (an odd middle
  block gets none). The weights start at 1, as in the modded-nanogpt record that measured
  the lever (-7.5% tokens).

Parameter names follow nanochat (``transformer.h.0.attn.c_q.weight``); ``lmforge.interop.nanochat``
maps them to Hugging Face's ``NanoChatForCausalLM``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.model.attention import attend, document_mask
from lmforge.model.blocks import context_start, flops_per_token
from lmforge.model.head import head_output
from lmforge.model.kv_cache import KVCache, new_kv_cache

ROPE_THETA = 10_000.0  # the rotary base of RoFormer, Llama 2 and NanoChatConfig's default
VE_GATE_CHANNELS = 12  # the block input's first channels that decide the value-embedding gate (nanochat)
X0_LAMBDA_FIRST, X0_LAMBDA_LAST = 0.2, 0.05  # --residual-lambdas: x0's initial share, first to last block


def has_value_embeds(config: ModelConfig, layer_idx: int) -> bool:
    """Whether layer ``layer_idx`` has a value-embedding table: alternating layers, the last included."""
    return config.value_embeds and layer_idx % 2 == (config.n_layer - 1) % 2


def input_std(fan_out: int, fan_in: int) -> float:
    """nanochat's std of an input projection: 1/sqrt(fan_in), shrunk for wide-in-narrow-out matrices."""
    return min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in)


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
        self.ve_gate = None  # --value-embeds on this layer: one gate per key/value head
        if has_value_embeds(config, layer_idx):
            self.ve_gate = nn.Linear(min(VE_GATE_CHANNELS, config.n_embd), self.n_kv_head, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        kv_cache: KVCache | None = None,
        ve: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.size()
        hs = self.head_dim
        q = self.c_q(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.c_k(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.c_v(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if ve is not None:  # the value embeddings (B, T, nkv * hs) of these tokens, gated per head
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate.in_features]))  # (B, T, nkv)
            ve = ve.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
            v = v + (gate.transpose(1, 2).unsqueeze(-1) * ve).to(v.dtype)

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
        self,
        x: torch.Tensor,
        kv_cache: KVCache | None = None,
        ve: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(rms_norm(x, self.eps), kv_cache, ve, attn_mask)
        x = x + self.mlp(rms_norm(x, self.eps))
        return x


class ModernGPT(nn.Module):
    """The same interface as ``GPT`` (forward, ``new_kv_cache``, ``get_num_params``,
    ``flops_per_token``), so training, evaluation and generation use either."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.rotary = Rotary(config.n_embd // config.n_head, config.block_size)
        kv_dim = config.kv_heads * (config.n_embd // config.n_head)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([ModernBlock(config, self.rotary, i) for i in range(config.n_layer)]),
                # --value-embeds: a (padded vocab, kv_dim) table per layer that has one, by layer
                value_embeds=nn.ModuleDict(
                    {
                        str(i): nn.Embedding(config.padded_vocab_size, kv_dim)
                        for i in range(config.n_layer)
                        if has_value_embeds(config, i)
                    }
                ),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # per-block scalars (nanochat's names); their values are set in init_weights, which also
        # runs after a build on the meta device
        if config.residual_lambdas:
            self.resid_lambdas = nn.Parameter(torch.empty(config.n_layer))
            self.x0_lambdas = nn.Parameter(torch.empty(config.n_layer))
        if config.unet_skips:
            self.skip_weights = nn.Parameter(torch.empty(config.n_layer // 2))  # [j]: block j -> n_layer-1-j
        if not self.transformer.wte.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat's initialisation: embeddings normal(0, 1) (they are normalised at once),
        input projections with std 1/sqrt(fan_in) (shrunk for wide-in-narrow-out matrices),
        and zero for every output projection and the head, so each block starts as the
        identity and the first prediction is uniform. The levers' parameters (module
        docstring): value-embedding tables like ``c_v``, their gates at zero (gate 1), the
        residual lambdas at 1, the x0 lambdas from 0.2 down to 0.05, the skip weights at 1."""
        c = self.config
        V = c.vocab_size
        wte = self.transformer.wte.weight
        tables = [t.weight for t in self.transformer.value_embeds.values()]
        nn.init.normal_(wte[:V], mean=0.0, std=1.0)
        wte[V:].zero_()  # padded rows start (and stay) at 0
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "ve_gate.weight")) or name == "lm_head.weight":
                nn.init.zeros_(p)
            elif p.dim() == 2 and p is not wte and not any(p is t for t in tables):
                nn.init.normal_(p, mean=0.0, std=input_std(*p.shape))
        kv_dim = c.kv_heads * (c.n_embd // c.n_head)
        for table in tables:
            nn.init.normal_(table[:V], mean=0.0, std=input_std(kv_dim, c.n_embd))  # as c_v
            table[V:].zero_()
        if c.residual_lambdas:
            self.resid_lambdas.fill_(1.0)
            depth = torch.arange(c.n_layer, dtype=torch.float32) / max(c.n_layer - 1, 1)
            self.x0_lambdas.copy_(X0_LAMBDA_FIRST + (X0_LAMBDA_LAST - X0_LAMBDA_FIRST) * depth)
        if c.unet_skips:
            self.skip_weights.fill_(1.0)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count without the padded rows. There are no position embeddings, so
        ``non_embedding`` changes nothing (``GPT`` leaves its position embeddings out there)."""
        c = self.config
        n = sum(p.numel() for p in self.parameters())
        row_width = 2 * c.n_embd + sum(t.embedding_dim for t in self.transformer.value_embeds.values())
        return n - (c.padded_vocab_size - c.vocab_size) * row_width

    def lookup_params(self) -> int:
        """Parameters read by token id, not multiplied: the real rows of the token embedding and
        of the value-embedding tables."""
        tables = self.transformer.value_embeds.values()
        return self.config.vocab_size * (self.config.n_embd + sum(t.embedding_dim for t in tables))

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
        x = self.run_blocks(idx, x, kv_cache, mask)
        x = rms_norm(x, eps)
        return head_output(
            x, self.lm_head.weight, self.config, targets, kv_cache, loss_reduction, with_argmax
        )

    def run_blocks(
        self,
        idx: torch.Tensor,
        x: torch.Tensor,
        kv_cache: KVCache | None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` (B, T, C), the normalised embedding of ``idx``, through every block, with what
        the levers add between them; with every lever off, ``blocks.run_blocks``. Gradient
        checkpointing (in training) keeps only each block's input and value embeddings. A value
        embedding is a lookup of the tokens at the new positions, so with a KV cache the cached
        values already hold theirs."""
        c = self.config
        recompute = c.gradient_checkpointing and self.training and kv_cache is None
        x0 = x  # (B, T, C), mixed back in before each block by --residual-lambdas
        n_skips = c.n_layer // 2 if c.unet_skips else 0
        skips = []  # --unet-skips: the first n_skips blocks' outputs, the last one on top
        tables = self.transformer.value_embeds  # --value-embeds, by layer
        for i, block in enumerate(self.transformer.h):
            if i >= c.n_layer - n_skips:
                x = x + self.skip_weights[c.n_layer - 1 - i] * skips.pop()
            if c.residual_lambdas:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = tables[str(i)](idx) if str(i) in tables else None  # (B, T, kv_dim)
            if recompute:
                x = checkpoint(block, x, None, ve, attn_mask, use_reentrant=False)
            else:
                x = block(x, kv_cache, ve, attn_mask)
            if i < n_skips:
                skips.append(x)
        if kv_cache is not None:
            kv_cache.advance(x.size(1))
        return x

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
        """Training FLOPs per token: the embedding lookups are no matmuls; the untied head is."""
        matmul_params = self.get_num_params() - self.lookup_params()
        return flops_per_token(self.config, matmul_params, seq_len)
