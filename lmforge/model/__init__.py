"""The network only: GPT-2 (``gpt``) and its parts (``attention``, ``mlp``, ``blocks``, ``kv_cache``).

May import ``lmforge.config`` (the ``ModelConfig`` dataclass) and torch; nothing from training,
checkpoints, the CLI or W&B."""

from lmforge.model.gpt import GPT

__all__ = ["GPT"]
