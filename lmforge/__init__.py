"""lmforge: pretrain GPT-2-style language models from scratch.

The seed's API::

    from lmforge import TrainingConfig, TrainingManager
    trainer = TrainingManager(TrainingConfig())
    trainer.train()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["TrainingConfig", "TrainingManager", "__version__"]

if TYPE_CHECKING:
    from lmforge.config import TrainingConfig
    from lmforge.train.trainer import TrainingManager

# Imported on first use, so that `import lmforge` and `lmforge --help` do not load torch.
_LAZY = {"TrainingConfig": "lmforge.config", "TrainingManager": "lmforge.train.trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
