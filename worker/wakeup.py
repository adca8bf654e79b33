"""Idle workers of one pool wake as soon as a sibling makes work claimable.

Without it an idle worker sleeps its whole poll interval (0.5-1 s by default) after a
sibling plans a job with several slices, cuts a slice for more concurrency, or finishes
the last slice of a drain: the second slice of a job starts up to a second late and a
draining pool exits up to a second after its work is done. LISTEN/NOTIFY would do this
across hosts but breaks behind PgBouncer in transaction mode, so the pool's processes
share a counter in shared memory instead; workers in other pools still poll.

No lock: a worker may be SIGKILLed at any instruction, and a process-shared lock or
condition variable it held (or was counted as waiting on) would hang its siblings for
good. A notifier bumps the counter; an idle worker reads it every 50 ms. Two notifiers
racing may lose one increment, never the change, and a change is all a waiter looks for.
The counter is read before a worker looks for work, which closes the race where a sibling
notifies between that look and the wait.
"""

from __future__ import annotations

import threading
import time
from typing import Any

WAIT_SLICE = 0.05  # seconds between looks at the counter


class _Counter:
    def __init__(self) -> None:
        self.value = 0


class Wakeup:
    """``seen()`` before looking for work, ``wait(seen, ...)`` when none was found, ``notify()`` after
    committing something a sibling could claim. ``ctx``: a multiprocessing context, for a pool of
    processes (the object is then passed to each worker as a Process argument); None: threads."""

    def __init__(self, ctx: Any = None) -> None:
        self._gen: Any = _Counter() if ctx is None else ctx.RawValue("Q", 0)

    def seen(self) -> int:
        return int(self._gen.value)

    def notify(self) -> None:
        self._gen.value = (self._gen.value + 1) % 2**64

    def wait(self, seen: int, timeout: float, stop: threading.Event) -> bool:
        """Sleep until a notify after ``seen``, ``stop``, or ``timeout``; True if notified."""
        deadline = time.monotonic() + timeout
        while self._gen.value == seen:
            left = deadline - time.monotonic()
            if left <= 0 or stop.wait(min(left, WAIT_SLICE)):
                return False
        return True
