"""Ctrl-C and SIGTERM during a run: finish the step, save, stop; a second one aborts.

Python runs a signal handler only between bytecodes of the main thread, so while that
thread is inside one long backward pass (tens of seconds for GPT-2 small on a CPU) the
handler waits, and so would any message it printed. The C-level handler writes the
signal's number to a wakeup fd at once, though (``signal.set_wakeup_fd``): a watcher
thread reads it and announces the signal while the step is still running.

Imports nothing from lmforge.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

_WAKE = 0  # no signal has number 0: the byte that tells the watcher to end


class AbortedBySignal(KeyboardInterrupt):
    """The second SIGINT/SIGTERM of a run: it stops at once, saving nothing."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals(
    request_stop: Callable[[int], None],
    stopping: Callable[[], bool],
    announce: Callable[[int, bool], None] | None = None,
) -> Iterator[None]:
    """For the duration of the block, SIGINT/SIGTERM call ``request_stop(signum)`` (the loop
    then saves a full checkpoint and stops after the current step); a second signal (or one
    once ``stopping()`` is true) raises ``AbortedBySignal`` (no checkpoint). ``announce(signum,
    first)`` is called from a watcher thread as each signal arrives. The previous handlers
    come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only; nothing to install here
        return
    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {s: signal.getsignal(s) for s in signals}

    watcher = _Watcher(announce)
    aborted = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal aborted
        if aborted:
            return  # the watcher's nudge after a second signal that was handled already
        # Two signals before the main thread gets to Python run this handler once: the
        # watcher's count tells them apart.
        if stopping() or watcher.seen >= 2:
            aborted = True
            raise AbortedBySignal(signum)  # the second one: stop now, without a checkpoint
        # only a flag: printing from here could re-enter a write of the main thread's
        request_stop(signum)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        watcher.close()
        for s, h in previous.items():
            signal.signal(s, h)


def announce_signal(warn: Callable[[str], None]) -> Callable[[int, bool], None]:
    """``stop_on_signals``' ``announce``: says what the signal does the moment it arrives (from the
    watcher's thread), not after the step."""

    def announce(signum: int, first: bool) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if first:
            again = "Ctrl-C" if signum == signal.SIGINT else name
            warn(
                f"{name}: stopping after this step (a full checkpoint will be saved) — {again} again "
                "to abort without saving"
            )
        else:
            warn(f"{name} again: aborting now, without saving a checkpoint")

    return announce


class _Watcher:
    """A thread that reads the signal numbers the wakeup fd receives, announces them, and makes
    sure a second one reaches the handler (``interrupt_main``) even if it arrived together with
    the first."""

    def __init__(self, announce: Callable[[int, bool], None] | None) -> None:
        self.announce = announce
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)  # set_wakeup_fd requires it
        self.previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.seen = 0
        self.thread = threading.Thread(target=self._run, name="lmforge-signals", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self.read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum == _WAKE:
                    return
                if signum in (signal.SIGINT, signal.SIGTERM):
                    self.seen += 1
                    if self.announce is not None:
                        with contextlib.suppress(Exception):  # a message must never kill the run
                            self.announce(signum, self.seen == 1)
                    if self.seen == 2:
                        _thread.interrupt_main(signum)

    def close(self) -> None:
        signal.set_wakeup_fd(self.previous_fd)
        with contextlib.suppress(OSError):
            os.write(self.write_fd, bytes([_WAKE]))
        self.thread.join(timeout=1.0)
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
