"""The worker's lease: renewed from a thread of its own, on a connection of its own.

The same thread watches the batch in flight (its deadline, its job's status, the stop grace:
worker/deadline.py), so a batch that hangs cannot keep a lease alive forever.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from tidegate.worker import store
from tidegate.worker.db import first_line

if TYPE_CHECKING:
    from tidegate.worker.deadline import BatchWatch
    from tidegate.worker.runner import Worker

log = logging.getLogger("tidegate.worker.runner")


class Heartbeat:
    """Renews the worker's lease from its own thread and connection.

    It touches only the worker's row in tidegate_workers, never a slice, so a
    long batch holding its slice's row lock never blocks the renewal.
    """

    def __init__(self, worker: Worker, lease_seconds: float, watch: BatchWatch) -> None:
        self.worker = worker
        self.interval = max(0.2, lease_seconds / 4)
        self.watch = watch
        self._stopping = False
        self._beats = 0
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Register synchronously (retrying through an outage), then renew from a thread."""
        delay = 0.5
        while not self.worker.stop.is_set() and not self._beat():
            self.worker.stop.wait(delay)
            delay = min(delay * 2, 10.0)
        self._thread.start()

    def try_start(self) -> bool:
        """Register once, without waiting through an outage (a pool over several targets serves the others
        meanwhile); renew from a thread if that worked."""
        if not self._beat():
            return False
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stopping = True
        self.watch.wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _beat(self) -> bool:
        w = self.worker
        try:
            with w.engine.begin() as conn:
                if not store.heartbeat(conn, w.id):  # first beat, or reaped after a long outage
                    store.register_worker(conn, w.id, w.config.pool, socket.gethostname(), os.getpid(),
                                          w.config.lease_seconds)
                self._beats += 1
                if self._beats % 50 == 0:
                    store.reap_workers(conn)
            return True
        except Exception as err:  # keep beating; the lease may lapse, the fence keeps data safe
            log.warning("worker %s: heartbeat failed: %s", w.id, first_line(err))
            return False

    def _run(self) -> None:
        watch = self.watch
        next_beat = time.monotonic() + self.interval
        while not self._stopping:
            now = time.monotonic()
            due = min(next_beat, watch.next_tick(now) or next_beat)
            watch.wake.wait(max(0.0, due - now))
            watch.wake.clear()
            if self._stopping:
                return
            try:
                watch.tick()
            except Exception as err:  # the next tick tries again
                log.warning("worker %s: batch watch failed: %s", self.worker.id, first_line(err))
            if watch.abandoned:
                return  # a wedged batch: the lease must lapse (worker/deadline.py)
            if time.monotonic() >= next_beat:
                self._beat()
                next_beat = time.monotonic() + self.interval
