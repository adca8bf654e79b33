"""SIGTERM and SIGINT handled on a thread of their own, so a handler can never deadlock.

A Python signal handler runs in the main thread between two bytecodes, maybe while that
thread holds a lock the handler then needs. ``threading.Event.set()`` takes the event's
lock, which is not reentrant, and the main thread holds that lock for an instant every time
it enters or leaves ``Event.wait``. A worker idling in 50 ms waits does that twenty times a
second, and a SIGTERM that landed in that instant hung it for good (once in about thirty
pool shutdowns under load, in CI).

So the Python-level handler does nothing. The C-level handler writes the signal's number to
a pipe (``signal.set_wakeup_fd``), and a watcher thread reads the pipe and runs the callback
like any other code.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _nothing(_signum: int, _frame: object) -> None:
    """A Python handler must be installed, or the signal's default action would kill the process."""


def hold() -> None:
    """Hold SIGTERM and SIGINT pending until ``on_signals`` is in place: a pool that forks its first
    workers before its watcher thread may start (no thread may exist at a fork) was killed by the
    signal's default action when a stop request came in that gap. The mask is inherited by forked and
    spawned children alike; their own ``on_signals`` releases it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def on_signals(callback: Callable[[int], None]) -> None:
    """Call ``callback(signum)`` from a watcher thread whenever SIGTERM or SIGINT arrives, for the rest
    of the process's life. Call it from the main thread. A signal held (``hold``) until now is
    delivered as this returns."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _nothing)

    def watch() -> None:
        while True:
            for signum in os.read(read_fd, 64):
                if signum in STOP_SIGNALS:
                    try:
                        callback(signum)
                    except Exception:  # keep watching: the next signal must still be heard
                        log.exception("signal handler for %s failed", signal.Signals(signum).name)

    threading.Thread(target=watch, name="signals", daemon=True).start()  # inherits a held mask: fine,
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # the main thread takes the signals
