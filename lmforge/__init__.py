"""lmforge: pretrain GPT-2-style language models from scratch.

The seed's API::

    from lmforge import TrainingConfig, TrainingManager
    trainer = TrainingManager(TrainingConfig())
    trainer.train()
"""

from __future__ import annotations

__version__ = "0.1.0"
