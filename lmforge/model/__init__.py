"""The network only: GPT-2 (``gpt``), the modern architecture (``modern``) and their parts
(``attention``, ``mlp``, ``blocks``, ``kv_cache``, ``loss``).

May import ``lmforge.config`` (the ``ModelConfig`` dataclass) and torch; nothing from training,
checkpoints, the CLI or W&B."""

from __future__ import annotations

import torch.nn as nn

from lmforge.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.model.modern import ModernGPT


def build_model(config: ModelConfig) -> nn.Module:
    """The model ``config.arch`` names: ``GPT`` (GPT-2 exactly) or ``ModernGPT``."""
    return ModernGPT(config) if config.arch == "modern" else GPT(config)


__all__ = ["GPT", "ModernGPT", "build_model"]
