"""Checkpoints on disk: the format, saving, loading and listing (``store``, with the
keep-last policy ``prunable`` the trainer applies after each save), and the ``ckpt prune``
plan with the one delete helper (``prune``).

May import ``config``, ``errors``, ``fileio``, ``units`` and ``workspace``; not the trainer,
``runs`` or the CLI."""
