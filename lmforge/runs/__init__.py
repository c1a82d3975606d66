"""Runs in the workspace: run records (``run.json``, metrics and samples files), listing and
status, run and checkpoint names as a person says them, comparison, loss plots.

May import ``checkpoint``, ``config`` and the top-level modules; not the trainer or the CLI."""
