"""Evaluation (perplexity, word perplexity, bits per byte) and text generation with a KV cache.

May import ``model``, ``data``, ``checkpoint`` and the top-level modules; not training or the CLI."""
