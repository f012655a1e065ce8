"""Stop cleanly on SIGTERM, SIGHUP and SIGINT: what ``timeout``, a scheduler, a closed terminal
and Ctrl-C send.

Python's default SIGTERM and SIGHUP end the process at once, so ``finally`` blocks do not run
and a run's ``run.lock`` stays behind; its SIGINT raises ``KeyboardInterrupt``, which prints a
traceback. Inside ``stop_on_signals()`` each of the three raises ``Stopped`` instead: every
``finally`` runs (the lock goes, a checkpoint being written is left whole or not at all), the
state saved at the last finished task or epoch is what a rerun resumes from, and the command
prints one line and exits with 128 + the signal's number, as a shell reports a process killed
by it. A second signal while stopping acts as it would without this (an immediate end).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Stopped(BaseException):
    """Raised in the main thread when a stop signal arrives (a ``BaseException``, as
    ``KeyboardInterrupt``, so that ``except Exception`` handlers do not swallow it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextmanager
def stop_on_signals(signums: tuple[int, ...] = SIGNALS) -> Iterator[None]:
    """Within the block, the signals raise ``Stopped``; the former handlers are back afterwards
    (and from the first signal on). Outside the main thread (where Python cannot set handlers)
    it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signums}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    def stop(signum: int, frame: FrameType | None) -> None:
        restore()
        raise Stopped(signum)

    for s in signums:
        signal.signal(s, stop)
    try:
        yield
    finally:
        restore()
