"""One worker process over several targets (`tidegate worker --targets a,b,c`).

Each target is a database with its own tidegate tables; the batch protocol is the single-database one
(worker/runner.py), run by one :class:`Worker` per target, each with its own engine, heartbeat and
lease row in that database, all under this process's one worker id. So a batch and its checkpoint
commit together in their database, and crash safety per database is what it always was.

Fairness: the process asks its targets in order of least recently served; the first that has work gets
a turn and goes to the back. A turn is units of work of that target (plan a job, a handful of one-shot
jobs, a slice) one after another while it has work, until one ends ``slice_quantum`` seconds or more
after the turn began; a slice is let go after ``slice_quantum`` seconds of batches (the release a stop
does), so a turn lasts at most about twice that, and no target waits for more than its siblings' turns.
A turn of many units rather than one unit each: switching targets costs a connection and a worker
registration whenever there are more targets than ``max_open`` (and a slice claim whenever there are
slices to claim), which a unit of a small job (one plan, a slice of two batches) does not outweigh.

Isolation of targets: a target whose database fails (down, refusing connections, not migrated) is
closed and skipped with a backoff of its own (0.5 s doubling to 30 s) while the others are served; one
whose job a health gate holds lets the slice go and is skipped for the gate's pause. A target with
nothing to do is looked at again after the poll interval (or at once when a sibling wakes the pool).

Connections: at most ``max_open`` targets are open in a process at a time (the least recently used idle
one is closed to open another); each open target's engine holds at most 4 connections (2 pooled, 2
overflow), 2 in steady state (the batch's and the heartbeat's). See ops/targets.md for the bound.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import replace

from tidegate.worker import metrics
from tidegate.worker.db import first_line, is_outage
from tidegate.worker.errors import DatabaseUnavailable
from tidegate.worker.runner import Worker, WorkerConfig, new_worker_id
from tidegate.worker.slots import Slot
from tidegate.worker.wakeup import Wakeup

log = logging.getLogger("tidegate.worker.runner")
BACKOFF_MAX = 30.0


class MultiWorker:
    def __init__(self, config: WorkerConfig, targets: list[tuple[str, str]], stop: threading.Event | None = None,
                 wakeup: Wakeup | None = None, slot: Slot | None = None, max_open: int = 8) -> None:
        self.config = config
        self.targets = targets  # (name, url), in the pool's order (the slot records the index)
        self.stop = stop or threading.Event()
        self.wakeup = wakeup or Wakeup()
        self.slot = slot
        self.max_open = max(1, max_open)
        self.id = new_worker_id()
        n = len(targets)
        self.workers: dict[int, Worker] = {}
        self.served = [0.0] * n  # when each target's last unit of work was done (monotonic)
        self.used = [0.0] * n  # when each open target was last asked
        self.retry_at = [0.0] * n  # a target in backoff (failed) or held by a gate: not asked before
        self.idle_until = [0.0] * n  # a target that had nothing to do: not asked before (unless woken)
        self.idle = [False] * n  # the last look found nothing to do (drain)
        self.troubles = [0] * n
        self.opens = 0  # targets opened (a connection and a registration each): the cost of switching

    def run(self) -> int:
        log.info("worker %s started over %d target(s): %s", self.id, len(self.targets),
                 ", ".join(name for name, _ in self.targets))
        try:
            while not self.stop.is_set():
                seen = self.wakeup.seen()
                if self.step():
                    continue
                if self.config.drain and all(self.idle):
                    log.info("worker %s: no work left in any target, draining out", self.id)
                    break
                soonest = min([self.config.poll_seconds, *(max(0.0, t - time.monotonic())
                                                           for t in self.retry_at + self.idle_until if t)])
                if self.wakeup.wait(seen, max(0.01, soonest * random.uniform(0.8, 1.0)), self.stop):
                    self.idle_until = [0.0] * len(self.targets)  # a sibling made work claimable somewhere
        finally:
            for i in list(self.workers):
                self._close(i)
            log.info("worker %s stopped (targets opened %d times)", self.id, self.opens)
        return 0

    def step(self) -> bool:
        """Give the least recently served target that has work a turn; False if none had any."""
        now = time.monotonic()
        for i in sorted(range(len(self.targets)), key=lambda i: self.served[i]):
            if self.stop.is_set():
                return False
            if self.retry_at[i] > now or self.idle_until[i] > now:
                continue
            if self._step(i):
                self._turn(i, now + (self.config.slice_quantum or 0.0))
                self.served[i] = time.monotonic()
                return True
        return False

    def _turn(self, i: int, ends: float) -> None:
        """The rest of target ``i``'s turn: its units of work one after another until it has none or the
        turn is over."""
        while not self.stop.is_set() and time.monotonic() < ends and self._step(i):
            pass

    def _step(self, i: int) -> bool:
        name = self.targets[i][0]
        metrics.set_target(name)
        try:
            worker = self._worker(i)
            did = worker.step()
        except BaseException as err:  # noqa: B036 - one target's trouble is never the others'
            self._trouble(i, err)
            return False
        self.used[i] = time.monotonic()
        if self.troubles[i]:
            log.info("worker %s: target %s is back", self.id, name)
        self.troubles[i] = 0
        self.idle[i] = not did and not worker.held
        if worker.held:  # a gate holds its job: let this target be for the gate's pause
            self.retry_at[i] = time.monotonic() + worker.gates.every
        elif not did:
            self.idle_until[i] = time.monotonic() + self.config.poll_seconds * random.uniform(0.5, 1.0)
        return did

    def _worker(self, i: int) -> Worker:
        worker = self.workers.get(i)
        if worker is not None:
            return worker
        while len(self.workers) >= self.max_open:  # close the least recently used target
            self._close(min(self.workers, key=lambda j: self.used[j]))
        name, url = self.targets[i]
        worker = Worker(replace(self.config, url=url), self.stop, self.wakeup,
                        self.slot.for_target(i) if self.slot is not None else None, worker_id=self.id)
        self.opens += 1
        if not worker.open():
            raise DatabaseUnavailable(f"target {name}: cannot register the worker")
        self.workers[i] = worker
        return worker

    def _close(self, i: int) -> None:
        worker = self.workers.pop(i, None)
        if worker is not None:
            worker.close()

    def _trouble(self, i: int, err: BaseException) -> None:
        """The target's database failed (or the runtime did, for its sake): close it, back off, serve the others."""
        name = self.targets[i][0]
        self.troubles[i] += 1
        self.idle[i] = False  # unknown: a drain waits for it to come back
        delay = min(BACKOFF_MAX, 0.5 * 2 ** min(self.troubles[i], 6)) * random.uniform(0.8, 1.2)
        self.retry_at[i] = time.monotonic() + delay
        if is_outage(err):
            log.warning("worker %s: target %s unavailable (%s); trying it again in %.1fs", self.id, name,
                        first_line(err)[:300], delay)
        else:
            log.error("worker %s: target %s: %s: %s; trying it again in %.1fs", self.id, name, type(err).__name__,
                      first_line(err)[:300], delay, exc_info=True)
        try:
            self._close(i)
        except Exception as close_err:  # its leases lapse by themselves
            log.debug("worker %s: closing target %s: %s", self.id, name, first_line(close_err))
