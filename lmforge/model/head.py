"""The LM head's tail that both architectures share: after the final norm, the hidden states
(B, T, C) become the mean loss, per-token losses, or logits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lmforge.model.loss import linear_cross_entropy, token_losses

if TYPE_CHECKING:
    from lmforge.config import ModelConfig
    from lmforge.model.kv_cache import KVCache

LOSS_REDUCTIONS = ("mean", "none")


def head_output(
    x: torch.Tensor,
    weight: torch.Tensor,
    config: ModelConfig,
    targets: torch.Tensor | None = None,
    kv_cache: KVCache | None = None,
    loss_reduction: str = "mean",
    with_argmax: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(logits, loss)`` of the models' ``forward`` from the final hidden states ``x`` (B, T, C)
    and the head's ``weight`` (padded vocab, C); the arguments are ``forward``'s.

    - ``targets`` (B, T), ``loss_reduction="mean"``: ``(None, mean cross-entropy)`` over the
      targets that are not -1, without the (B, T, vocab) logits (training);
    - ``loss_reduction="none"``: ``(argmax or None, losses (B, T))``, fp32, 0 where the target is
      -1; only the positions with a target go through the head, forward only (evaluation).
      ``with_argmax`` adds (B, T) bools: whether each target is the most likely token;
    - no targets: ``(logits (B, T, vocab), None)`` over the real vocabulary; with a
      ``kv_cache`` (generation) the last position's only, (B, 1, vocab).
    With ``config.logit_softcap`` c every logit is ``c * tanh(logit / c)``."""
    vocab_size, softcap = config.vocab_size, config.logit_softcap
    if loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
    if targets is not None:
        if loss_reduction == "none":
            losses, argmax = token_losses(x, weight, targets, vocab_size, softcap, with_argmax)
            return argmax, losses
        # chunk by chunk, without the (B, T, vocab) logits and their copies (see model.loss)
        return None, linear_cross_entropy(x, weight, targets, vocab_size, softcap=softcap)
    if kv_cache is not None:
        x = x[:, [-1], :]  # (B, 1, C): the last position is all sampling needs
    logits = F.linear(x, weight)  # (B, T, padded vocab)
    if logits.size(-1) != vocab_size:
        logits = logits[..., :vocab_size]  # the padded ids are never predicted
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.contiguous(), None
