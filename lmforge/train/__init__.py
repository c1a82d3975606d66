"""Training: the loop (``trainer``), one optimizer step (``step``), what a full checkpoint holds
(``state``), bad steps and rollback (``recovery``), the rules for new, resumed and initialised runs
(``setup``), the run's files and W&B (``run_files``), periodic evaluation and samples
(``evaluation``), the dry-run plan (``plan``), and the optimizer, schedule, RNG and signal helpers.

May import ``model``, ``data``, ``checkpoint``, ``eval``, ``runs``, ``observe`` and the top-level
modules; never the CLI."""
