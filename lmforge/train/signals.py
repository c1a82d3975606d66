"""Ctrl-C and SIGTERM during a run: finish the step, save, stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def stop_on_signals(request_stop: Callable[[int], None], stopping: Callable[[], bool]) -> Iterator[None]:
    """For the duration of the block, SIGINT/SIGTERM call ``request_stop(signum)`` (the loop
    then saves a full checkpoint and stops after the current step); a second signal, once
    ``stopping()`` is true, aborts at once. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only; nothing to install here
        return
    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum: int, frame: Any) -> None:
        if stopping():
            raise KeyboardInterrupt  # the second one: stop now, without a checkpoint
        # only a flag: Rich/printing from a signal handler can deadlock, so the loop reports it
        request_stop(signum)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
