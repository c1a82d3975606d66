"""Training: the loop and one optimizer step (``trainer``), the numerics of a step
(``step``), the bad-step policy (``recovery``), what a full checkpoint holds (``state``), what a
run is (``run_spec``: new, resumed, initialised), where it computes (``hardware``), the factory
of its parts (``build``, ``parallel``), its files and W&B (``run_files``), evaluation and
samples (``evaluation``), ``--dry-run``'s report (``dry_run``), a step's memory (``memory``) and
time (``estimate``), and the optimizer, schedule, RNG and signal helpers.

May import ``model``, ``data``, ``checkpoint``, ``eval``, ``runs``, ``observe`` and the top-level
modules; never the CLI."""
