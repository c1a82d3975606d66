"""Watching a run: the reporter interface and its terminal views, the throughput meter
(tokens/s, MFU), and the W&B logger (imported lazily).

May import ``config`` and the top-level modules only."""
