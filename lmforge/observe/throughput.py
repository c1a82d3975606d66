"""Tokens per second and model FLOPs utilisation over the steps of a logging window."""

from __future__ import annotations

import time


class ThroughputMeter:
    """Tokens/s and MFU over the steps since the last reading (litgpt's monitor, in small).

    The loop calls ``step(tokens)`` after each optimizer step and ``read()`` at logging
    steps; the first reading after a (re)start excludes nothing, so it also holds
    compilation and warm-up time.
    """

    def __init__(self, flops_per_token: float, peak_flops: float | None) -> None:
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._t0 = time.perf_counter()
        self._tokens = 0

    def reset(self) -> None:
        self._t0 = time.perf_counter()
        self._tokens = 0

    def step(self, tokens: int) -> None:
        self._tokens += tokens

    def read(self) -> tuple[float, float | None]:
        """``(tokens_per_sec, mfu or None)`` since the last read, then start a new window."""
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        tps = self._tokens / elapsed
        mfu = self.flops_per_token * tps / self.peak_flops if self.peak_flops else None
        self.reset()
        return tps, mfu
