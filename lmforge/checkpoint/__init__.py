"""Checkpoints on disk: the format, saving and loading (``store``), which complete
checkpoints a run has (``listing``), and retention: the keep-last policy, the ``ckpt prune``
plan and the one delete helper (``prune``).

May import ``config``, ``errors``, ``fileio``, ``units`` and ``workspace``; not the trainer,
``runs`` or the CLI."""
