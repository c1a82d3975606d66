"""Evaluation and text generation with a trained model.

- ``options``: ``EvalOptions`` (windows, batch, device, dtype, rank) and the checks of its values;
- ``evaluate``: sliding-window perplexity of a token stream, word perplexity and bits per byte
  of a prepared split (``--protocol stream``), ``evaluate_checkpoint`` for ``lmforge eval``;
- ``harness``: lm-eval-harness's WikiText task (``--protocol harness``) and the scoring of
  (context, continuation) pairs under it and the adapter;
- ``generate``: sampling with a KV cache, streamed as whole characters, and
  ``load_for_generation`` for ``lmforge generate``;
- ``tasks`` and ``lm_eval_adapter``: lm-eval-harness tasks on a checkpoint (``eval --tasks``).

Functions that load a checkpoint take its resolved directory: the CLI turns names such as
``best`` or ``RUN:step-N`` into paths (``lmforge.runs.names``). Progress goes through a
callback the caller passes; nothing here prints.

May import ``model``, ``data``, ``checkpoint``, ``runs.evals`` (where task results are saved)
and the top-level modules (``distributed``, ``device``, ``errors``, ``fileio``, ``units``,
``workspace``); not ``runs.names``, training, observation or the CLI.
"""
