"""Tokens per second and model FLOPs utilisation over the training steps of a logging window."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator


class ThroughputMeter:
    """Tokens/s and MFU over the steps since the last reading (litgpt's monitor, in small).

    The loop calls ``step(tokens)`` after each optimizer step and ``read()`` at logging steps.
    Only training time counts: evaluation, checkpoints and samples between steps run inside
    ``with meter.paused():`` (or between ``pause()`` and ``resume()``), or the loop gives each
    step's own duration, ``step(tokens, seconds=...)``, and the window is their sum. The first
    reading after a (re)start excludes nothing else, so it also holds compilation and warm-up.
    """

    def __init__(
        self,
        flops_per_token: float,
        peak_flops: float | None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Start a new window now (running, not paused)."""
        self._t0 = self._clock()
        self._running_s = 0.0  # wall time of the window before the last pause
        self._paused = False
        self._tokens = 0
        self._step_s: float | None = None  # the sum of explicit step durations, when given

    def pause(self) -> None:
        """Stop the clock (before evaluation or a checkpoint); a second pause is a no-op."""
        if not self._paused:
            self._running_s += self._clock() - self._t0
            self._paused = True

    def resume(self) -> None:
        """Restart the clock after ``pause()``; a no-op when running."""
        if self._paused:
            self._t0 = self._clock()
            self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """``with meter.paused(): evaluate()``: the block's time is not training time."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def step(self, tokens: int, seconds: float | None = None) -> None:
        """Count one optimizer step of ``tokens``; ``seconds``: its own duration, when the loop
        measures it (then the window's time is the sum of those, not the wall clock)."""
        self._tokens += tokens
        if seconds is not None:
            self._step_s = (self._step_s or 0.0) + seconds

    def elapsed(self) -> float:
        """The training time of the current window, in seconds."""
        if self._step_s is not None:
            return self._step_s
        return self._running_s + (0.0 if self._paused else self._clock() - self._t0)

    def read(self) -> tuple[float, float | None]:
        """``(tokens_per_sec, mfu or None)`` since the last read, then start a new window."""
        tps = self._tokens / max(self.elapsed(), 1e-9)
        mfu = self.flops_per_token * tps / self.peak_flops if self.peak_flops else None
        was_paused = self._paused
        self.reset()
        if was_paused:
            self.pause()  # read inside paused(): the window starts when training resumes
        return tps, mfu
