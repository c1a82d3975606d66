"""Runs in the workspace: run records written by the trainer (``record``), reading metrics
back (``metrics``), listing, status and removal (``listing``), comparison with defaults and
between runs (``compare``), run and checkpoint names as a person says them (``names``), a
run's checkpoints as the ``ckpt`` commands see them (``checkpoints``), the task evaluations
saved beside them (``evals``), loss plots (``plots``).

May import ``checkpoint``, ``config``, ``eval.tasks`` (the saved results; light) and the
top-level modules; not the trainer, the CLI or torch (the ``ckpt`` and ``runs`` readers start
without it)."""
