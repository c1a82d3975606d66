"""GPT-2, top to bottom: embeddings, n blocks, final LayerNorm, tied LM head.

Parameter names follow GPT-2 and Hugging Face's ``GPT2LMHeadModel``
(``transformer.h.0.attn.c_attn.weight`` ...), so export and import are a
rename-free mapping (HF stores Linear weights transposed, as Conv1D).
The model imports nothing from the trainer, the CLI or W&B.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from lmforge.config import ModelConfig
from lmforge.model.blocks import Block, context_start, flops_per_token, run_blocks
from lmforge.model.head import head_output
from lmforge.model.kv_cache import KVCache, new_kv_cache


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                # padded_vocab_size rows (e.g. 50304 for 50257: tensor-core friendly matmuls);
                # the padded ids never occur in the data and their logits are cut off below
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # weight tying: the output projection is the token embedding (GPT-2, Press & Wolf 2017)
        self.lm_head.weight = self.transformer.wte.weight
        # a model built on the meta device (shapes only: dry runs, checkpoint loading) has no
        # values to initialise, and initialising meta tensors costs seconds of torch imports
        if not self.transformer.wte.weight.is_meta:
            self.init_weights()

    def init_weights(self) -> None:
        """GPT-2 initialisation: normal(0, 0.02), zero biases, and residual projections
        scaled by 1/sqrt(2 * n_layer), since each block adds two residual branches and the
        sum's variance would otherwise grow with depth."""
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        weight = getattr(module, "weight", None)
        if weight is not None and weight is self.transformer.wte.weight:
            # the token embedding (and the head tied to it): padded rows start (and stay) at 0
            V = self.config.vocab_size
            nn.init.normal_(weight[:V], mean=0.0, std=0.02)
            with torch.no_grad():
                weight[V:].zero_()
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. With ``non_embedding`` (the default, as GPT-2 reports it) the
        position embeddings are left out; the token embeddings stay in, since they are
        also the output layer."""
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        n -= (self.config.padded_vocab_size - self.config.vocab_size) * self.config.n_embd  # padding
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        loss_reduction: str = "mean",
        with_argmax: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``idx`` (B, T) token ids -> ``(logits (B, T, vocab), None)``; with ``targets`` (B, T)
        -> ``(None, mean cross-entropy)`` (positions with target -1 are ignored), computed
        without materialising the logits. ``loss_reduction="none"`` (evaluation) gives the
        per-token losses (B, T) instead, putting only the positions with a target through
        the head (``model.head.head_output`` says what ``with_argmax`` adds).

        With a ``kv_cache`` (generation), ``idx`` holds only the new tokens, positions
        continue after the cached ones, and only the last position's logits are made.
        """
        B, T = idx.size()
        past = context_start(kv_cache, T, self.config.block_size)
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        x = run_blocks(self.transformer.h, x, kv_cache, self.config.gradient_checkpointing and self.training)
        x = self.transformer.ln_f(x)
        return head_output(
            x, self.lm_head.weight, self.config, targets, kv_cache, loss_reduction, with_argmax
        )

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` tokens."""
        return new_kv_cache(self.config, batch_size, max_len, self.transformer.wte.weight)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: every non-embedding weight is in a matmul (the token
        embedding too, as the tied head)."""
        return flops_per_token(self.config, self.get_num_params(), seq_len)
