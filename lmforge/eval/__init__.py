"""Evaluation and text generation with a trained model.

- ``evaluate``: sliding-window perplexity of a token stream, word perplexity and
  bits per byte of a prepared split, ``evaluate_checkpoint`` for ``lmforge eval``.
- ``generate``: sampling with a KV cache, streamed as whole characters, and
  ``load_for_generation`` for ``lmforge generate``.

May import ``model``, ``data``, ``checkpoint``, ``runs.names`` (checkpoint names) and the
top-level modules (``distributed``, ``device``, ``errors``, ``units``, ``workspace``);
not training, observation or the CLI.
"""
