"""Every batch has a deadline; a job that kills or wedges workers is quarantined.

The runner arms a :class:`BatchWatch` when a batch's transaction has started (it knows the server
backend and the transaction's start from ``begin_batch``) and disarms it when the transaction is
over. The heartbeat thread (worker/heartbeat.py) ticks the watch, on its own connection:

* **Deadline.** Past its deadline (``--batch-deadline``; by default ten times the job's
  ``target_batch_seconds``, at least 60 s, else 600 s) the batch's statement is cancelled
  (``pg_cancel_backend``, again at every tick while it runs on): the batch rolls back and the runner
  counts a failed attempt (``BatchDeadlineExceeded``), never an item error.
* **Wedged.** A batch that does not come back within a grace after that (the handler hangs in Python,
  not in SQL, so there is no statement to cancel) wedges its worker: the heartbeat stops renewing the
  lease, the batch's backend is terminated (its row lock goes, so the slice can be taken over at once),
  the death is counted against the job and the worker process exits (code 3) for its pool to restart.
* **Pause and cancel.** Once a batch has run a second, each tick reads its job's status. ``cancelled``:
  the batch is cancelled at once. ``paused``: the batch may still finish and commit (a pause keeps
  finished work, as between batches), but only until its deadline; then it is cancelled. Neither
  rollback counts as an attempt: the operator stopped it, not the job's data.
* **Stop.** After SIGTERM a batch still running after ``--stop-grace`` (default 30 s) is cancelled,
  not counted, and the worker exits; wedged, it is abandoned as above (no death counted).

Worker deaths count in a row: a successful batch of the job resets ``backfill_jobs.worker_deaths``.
At ``--max-worker-deaths`` (default 3) the job fails with ``poison: N worker deaths during its
batches``. The pool counts deaths it sees (a worker killed by a signal or exiting during a batch,
worker/slots.py); the watch counts the wedges it ends itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from tidegate.worker import store
from tidegate.worker.db import first_line
from tidegate.worker.logs import job_ctx

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from tidegate.worker.slots import Slot

log = logging.getLogger("tidegate.worker.runner")

EXIT_WEDGED = 3  # a worker's exit code after it abandoned a wedged batch (its pool restarts it)
DEFAULT_DEADLINE = 600.0
TARGET_MULTIPLE = 10  # an adaptive job's deadline: this many times its target...
MIN_DERIVED = 60.0  # ...but never less than this
STATUS_AFTER = 1.0  # seconds a batch runs before its watch starts reading its job's status
STOP_ABANDON = 5.0  # seconds after the stop grace's cancel before a batch that did not come back is abandoned


class BatchDeadlineExceeded(Exception):
    """The batch ran past its deadline; its statement was cancelled and the batch rolled back."""


def seconds_for(configured: float | None, target_batch_seconds: float | None) -> float:
    """A batch's deadline: the worker's ``--batch-deadline``, else derived from the job's target."""
    if configured:
        return configured
    if target_batch_seconds:
        return max(MIN_DERIVED, TARGET_MULTIPLE * target_batch_seconds)
    return DEFAULT_DEADLINE


def cancel_grace(deadline: float) -> float:
    """Seconds a cancelled batch has to come back before its worker is declared wedged."""
    return min(30.0, max(2.0, deadline / 10))


@dataclass
class Batch:
    job_id: str
    slice_no: int
    backend_pid: int
    xact_start: datetime
    deadline: float  # seconds
    started: float = field(default_factory=time.monotonic)
    stopped_by: str | None = None  # "deadline" | "cancelled" | "paused" | "stopping": why the watch cancelled it
    abandon_at: float | None = None  # monotonic time after which a cancelled batch counts as wedged


class BatchWatch:
    """The batch in flight of one worker, seen from its heartbeat thread."""

    def __init__(self, engine: Engine, worker_id: str, stop: threading.Event, *, stop_grace: float = 30.0,
                 max_deaths: int = 3, slot: Slot | None = None, exit_when_wedged: bool = False) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.stop = stop
        self.stop_grace = stop_grace
        self.max_deaths = max_deaths
        self.slot = slot
        self.exit_when_wedged = exit_when_wedged
        self.abandoned = False  # set once: the heartbeat renews the lease no more
        self.wake = threading.Event()  # set by arm(): the heartbeat thread recomputes when to tick
        self._lock = threading.Lock()
        self._batch: Batch | None = None
        self._stop_seen: float | None = None
        if slot is not None:
            slot.started(worker_id)

    # -- the runner's side -------------------------------------------------

    def arm(self, job_id: str, slice_no: int, backend_pid: int, xact_start: datetime | None, deadline: float) -> None:
        if xact_start is None:
            return
        with self._lock:
            self._batch = Batch(job_id, slice_no, backend_pid, xact_start, deadline)
        if self.slot is not None:
            self.slot.enter(job_id, slice_no, backend_pid, xact_start)
        self.wake.set()

    def disarm(self) -> Batch | None:
        """The batch's transaction is over. Returns it if the watch cancelled it (see ``stopped_by``)."""
        with self._lock:  # waits for a cancel in progress: it must not reach the next transaction
            batch, self._batch = self._batch, None
        if self.slot is not None:
            self.slot.leave()
        return batch if batch is not None and batch.stopped_by else None

    # -- the heartbeat's side ----------------------------------------------

    def next_tick(self, now: float) -> float | None:
        """When the watch wants to look next (monotonic), or None with no batch in flight."""
        batch = self._batch
        if batch is None:
            return None
        due = [now + STATUS_AFTER, batch.started + batch.deadline]
        if batch.abandon_at is not None:
            due.append(batch.abandon_at)
        if self._stop_seen is not None:
            due.append(self._stop_seen + self.stop_grace)
        return min(due)

    def tick(self) -> None:
        """Look at the batch in flight: deadline, stop grace, its job's status. May end the process."""
        with self._lock:
            batch = self._batch
            if batch is None:
                self._stop_seen = time.monotonic() if self.stop.is_set() else None
                return
            now = time.monotonic()
            if self.stop.is_set() and self._stop_seen is None:
                self._stop_seen = now
            if batch.abandon_at is not None and now >= batch.abandon_at:
                abandon = True
            else:
                abandon = False
                why = self._why_stop(batch, now)
                if why is not None:
                    self._cancel(batch, why, now)
        if abandon:
            self._abandon(batch)

    def _why_stop(self, batch: Batch, now: float) -> str | None:
        if batch.stopped_by is not None:
            return batch.stopped_by  # cancel again: a cancel that found no statement running did nothing
        past_deadline = now - batch.started >= batch.deadline
        if self._stop_seen is not None and now - self._stop_seen >= self.stop_grace:
            return "stopping"
        if now - batch.started >= STATUS_AFTER:
            with self.engine.begin() as conn:
                status = store.batch_job_status(conn, batch.job_id)
            if status == "cancelled" or status is None:
                return "cancelled"
            if status == "paused" and past_deadline:
                return "paused"
        return "deadline" if past_deadline else None

    def _cancel(self, batch: Batch, why: str, now: float) -> None:
        """Cancel the batch's statement (the runner sees an error, rolls back and asks ``disarm`` why)."""
        first = batch.stopped_by is None
        batch.stopped_by = why
        if first:
            batch.abandon_at = now + (STOP_ABANDON if why == "stopping" else cancel_grace(batch.deadline))
            what = {"deadline": f"past its deadline of {batch.deadline:g}s", "cancelled": "its job was cancelled",
                    "paused": f"its job is paused and the batch ran past its deadline of {batch.deadline:g}s",
                    "stopping": f"the worker is stopping and the batch outlived the stop grace of {self.stop_grace:g}s"}
            log.warning("job %s slice %d: cancelling the batch in flight: %s", batch.job_id, batch.slice_no,
                        what[why], extra=job_ctx(batch.job_id, batch.slice_no, reason=why))
        with self.engine.begin() as conn:
            store.cancel_backend(conn, batch.backend_pid, batch.xact_start)

    def _abandon(self, batch: Batch) -> None:
        """The batch did not come back after its cancel: the worker is wedged. Let go of everything the
        database holds for it, count the death (a deadline's), and end the process."""
        self.abandoned = True
        seconds = time.monotonic() - batch.started
        log.error("job %s slice %d: the batch did not come back %.0fs after its start (cancelled: %s); the"
                  " worker is wedged and exits", batch.job_id, batch.slice_no, seconds, batch.stopped_by,
                  extra=job_ctx(batch.job_id, batch.slice_no, reason=batch.stopped_by))
        try:
            with self.engine.begin() as conn:
                store.terminate_backend(conn, batch.backend_pid, batch.xact_start)
                if batch.stopped_by == "deadline":
                    deaths, poisoned = store.record_worker_death(
                        conn, batch.job_id, f"worker wedged: batch of slice {batch.slice_no} ran {seconds:.0f}s,"
                        f" past its deadline of {batch.deadline:g}s, and did not return when cancelled",
                        self.max_deaths)
                    log_death(batch.job_id, deaths, poisoned, self.max_deaths)
                store.expire_worker(conn, self.worker_id)  # its slice is claimable once the backend is gone
            if self.slot is not None:
                self.slot.leave()  # recorded: the pool must not count it again
        except Exception as err:  # the pool counts it from the slot, the lease expires by itself
            log.warning("worker %s: could not record the wedged batch (%s)", self.worker_id, first_line(err))
        if self.exit_when_wedged:
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(0 if batch.stopped_by == "stopping" else EXIT_WEDGED)
        self.stop.set()  # a thread cannot be ended: at least nothing new starts


def log_death(job_id: str, deaths: int, poisoned: bool, limit: int) -> None:
    if poisoned:
        log.error("job %s failed: %s", job_id, store.poison_reason(deaths), extra=job_ctx(job_id, status="failed"))
    elif deaths:
        log.warning("job %s: %d worker death(s) in a row during its batches (failed as poison at %d)", job_id,
                    deaths, limit, extra=job_ctx(job_id, worker_deaths=deaths))
