"""Plain progress lines for long work counted in tokens (``eval``, ``eval --tasks``,
``generate``), for when stderr is not a terminal (a log file, nohup, CI), where a Rich bar
draws only its last frame and the work looks like a hang::

    eval best test | started | 140,822 tokens
    eval best test | 61,440/140,822 tokens (43.6%) | 1,020 tok/s | eta 1m 18s
    eval best test | done | 140,822 tokens in 2m 18s | 1,020 tok/s

A line when a part starts, then one at most every ``INTERVAL_S`` seconds while it runs (after
a batch: nothing runs between batches to print one), and one when it ends. ``start(label,
total)`` is the progress factory the library functions take (``lmforge.eval.evaluate``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from lmforge.units import format_duration

# A log never goes longer than this without a line while a part runs (tests set it to 0).
INTERVAL_S = 60.0

RATE_UNITS = {"tokens": "tok/s"}


@dataclass
class _Part:
    label: str
    total: int | None
    unit: str
    started: float
    done: int = 0  # units produced (the rate counts these)
    skipped: int = 0  # units of the total that will not be produced (a sample that ended early)


class ProgressLines:
    """Progress lines on ``stream`` (stderr by default), each starting with ``prefix`` (the
    command). ``edges=False`` leaves out the start and end lines (a single short generation
    needs no frame); ``clock`` is for tests."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        prefix: str = "",
        interval: float | None = None,
        edges: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.prefix = prefix
        self.interval = INTERVAL_S if interval is None else interval
        self.edges = edges
        self.clock = clock
        self.part: _Part | None = None
        self._last_line = clock()

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.finish()
        self.part = None  # no "done" line for work an error stopped

    def start(self, label: str, total: int | None, unit: str = "tokens") -> Callable[[int], None]:
        """Finish the part before (if any) and start one of ``total`` units; the returned
        ``advance(n)`` counts n more units done."""
        self.finish()
        self.part = _Part(label, total, unit, started=self.clock())
        self._last_line = self.part.started
        if self.edges:
            size = "" if total is None else f" | {total:,} {unit}"
            self._write(f"{label} | started{size}")
        return self.advance

    def advance(self, n: int) -> None:
        if self.part is None:
            return
        self.part.done += n
        if self.clock() - self._last_line >= self.interval:
            self._write(self.line())

    def skip_to(self, n: int) -> None:
        """The part has come to unit ``n`` of its total, though fewer were made (a sample that
        stopped early): the rest count as progress for the percentage and the ETA, not for
        the rate."""
        if self.part is not None:
            self.part.skipped += max(0, n - self.part.done - self.part.skipped)

    def relabel(self, label: str) -> None:
        if self.part is not None:
            self.part.label = label

    def finish(self) -> None:
        """The end line of the current part, if one is running."""
        part, self.part = self.part, None
        if part is None or not self.edges:
            return
        elapsed = self.clock() - part.started
        rate = self._rate(part, elapsed)
        self._write(
            f"{part.label} | done | {part.done:,} {part.unit} in {format_duration(elapsed)}"
            + ("" if rate is None else f" | {rate}")
        )

    def line(self) -> str:
        """The running line: units done (of the total), rate and ETA."""
        part = self.part
        assert part is not None
        elapsed = self.clock() - part.started
        progressed = part.done + part.skipped
        if part.total:
            count = f"{progressed:,}/{part.total:,} {part.unit} ({100 * progressed / part.total:.1f}%)"
        else:
            count = f"{part.done:,} {part.unit}"
        rate = self._rate(part, elapsed)
        eta = "n/a"
        if part.total and part.done and elapsed > 0:
            eta = format_duration(max(0, part.total - progressed) * elapsed / part.done)
        return f"{part.label} | {count} | {rate or 'n/a'} | eta {eta}"

    @staticmethod
    def _rate(part: _Part, elapsed: float) -> str | None:
        if elapsed <= 0:
            return None
        return f"{part.done / elapsed:,.0f} {RATE_UNITS.get(part.unit, part.unit + '/s')}"

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(self.prefix + line + "\n")
        stream.flush()
        self._last_line = self.clock()
