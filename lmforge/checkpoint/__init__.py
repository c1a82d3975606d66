"""Checkpoints on disk: the format, saving and loading (``store``), listing, and the
keep-last / prune policy.

May import ``config``, ``errors``, ``fileio`` and ``workspace``; not the trainer or the CLI."""
