"""The worker's lease: renewed from a thread of its own, on a connection of its own."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from worker import store
from worker.db import first_line

if TYPE_CHECKING:
    from worker.runner import Worker

log = logging.getLogger("worker.runner")


class Heartbeat:
    """Renews the worker's lease from its own thread and connection.

    It touches only the worker's row in tidegate_workers, never a slice, so a
    long batch holding its slice's row lock never blocks the renewal.
    """

    def __init__(self, worker: Worker, lease_seconds: float) -> None:
        self.worker = worker
        self.interval = max(0.2, lease_seconds / 4)
        self._stop = threading.Event()
        self._beats = 0
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Register synchronously (retrying through an outage), then renew from a thread."""
        delay = 0.5
        while not self.worker.stop.is_set() and not self._beat():
            self.worker.stop.wait(delay)
            delay = min(delay * 2, 10.0)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
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
        while not self._stop.wait(self.interval):
            self._beat()
