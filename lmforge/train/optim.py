"""AdamW with two parameter groups: weight decay on matrices only.

Decaying biases, LayerNorm gains and embeddings toward zero does not regularize
anything useful and hurts (GPT-2/3, nanoGPT): only the weight matrices of the
Linear layers are decayed. The tied LM head is the token embedding, so it is
counted once, in the no-decay group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from lmforge.config import OptimizerConfig


@dataclass(frozen=True)
class ParamGroupCounts:
    """How many tensors and parameters each group holds (reported at start)."""

    decay_tensors: int
    decay_params: int
    no_decay_tensors: int
    no_decay_params: int

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def param_groups(model: nn.Module, weight_decay: float) -> tuple[list[dict[str, object]], ParamGroupCounts]:
    """Split the trainable parameters into a decay group (weights of Linear layers)
    and a no-decay group (biases, LayerNorm, embeddings)."""
    decay_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and not _is_tied_head(model, m)
    }
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    # named_parameters() yields a tied tensor once, so lm_head/wte is not counted twice
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if id(p) in decay_ids else no_decay).append(p)
    counts = ParamGroupCounts(
        decay_tensors=len(decay),
        decay_params=sum(p.numel() for p in decay),
        no_decay_tensors=len(no_decay),
        no_decay_params=sum(p.numel() for p in no_decay),
    )
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return groups, counts


def _is_tied_head(model: nn.Module, module: nn.Linear) -> bool:
    wte = getattr(getattr(model, "transformer", None), "wte", None)
    return wte is not None and module.weight is wte.weight


def build_optimizer(
    model: nn.Module, config: OptimizerConfig, device: torch.device
) -> tuple[torch.optim.AdamW, ParamGroupCounts]:
    """AdamW over ``param_groups``; the fused kernel on CUDA (one launch for all tensors)."""
    groups, counts = param_groups(model, config.weight_decay)
    optimizer = torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=device.type == "cuda" or None,
    )
    return optimizer, counts


def set_hyperparameters(
    optimizer: torch.optim.Optimizer, config: OptimizerConfig, device: torch.device
) -> None:
    """Apply ``config``'s betas, eps and weight decay to an optimizer whose state was loaded
    from a checkpoint: the saved hyperparameters come along with it, the current config's win
    (a resumed run may change --weight-decay)."""
    for group, decay in zip(optimizer.param_groups, (config.weight_decay, 0.0), strict=True):
        group.update(betas=(config.beta1, config.beta2), eps=config.eps, weight_decay=decay)
        group["fused"] = device.type == "cuda" or None
