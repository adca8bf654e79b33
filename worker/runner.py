"""One worker process: plan queued jobs, claim slices, run the batch protocol.

The batch protocol (the heart of tidegate), one transaction per batch:

1. ``_begin``: ``begin_batch`` locks this worker's slice row (``FOR NO KEY
   UPDATE``) and re-reads the job's status. No row means the lease was lost:
   another worker owns the slice now, so stop touching it. A status other than
   pending or running (a committed pause or cancel) means stop before doing
   any work.
2. ``_process``: the job kind reads how far the next keys after the slice's
   cursor reach and processes that range (``one_step``: the runtime, not the
   kind, decides the checkpoint and whether the slice is exhausted); an
   adaptive job in time-boxed steps, all in this transaction (``_steps``).
3. ``_record``: ``record_batch`` writes failed items, advances the slice cursor
   and the job's counters and watermark, and marks the job done after its
   last slice.
4. Commit. Derived rows and checkpoint commit together: a crash anywhere
   repeats nothing and loses nothing. Then ``_report`` and ``_pace``; a batch
   that rolled back goes to ``_rolled_back``.

The row lock of step 1 is also what makes takeover safe: a claim uses SKIP
LOCKED, so a slice whose batch is in flight can never be taken, and a worker
that lost its lease between batches fails step 1.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum

from sqlalchemy import Connection, Engine

from tidegate.worker import deadline, keys, kinds, metrics, store, throttle, trust
from tidegate.worker.collector import Collector
from tidegate.worker.db import first_line, is_database_fault, is_outage, is_timeout, make_engine
from tidegate.worker.deadline import BatchWatch
from tidegate.worker.errors import InvalidInput
from tidegate.worker.gates import Gate, Gates
from tidegate.worker.heartbeat import Heartbeat
from tidegate.worker.logs import job_ctx
from tidegate.worker.one_shots import OneShots
from tidegate.worker.redact import error_text
from tidegate.worker.slots import Slot
from tidegate.worker.states import ACTIVE
from tidegate.worker.wakeup import Wakeup

log = logging.getLogger(__name__)

# Errors that are the payload's (or a job row's) fault: the same input fails the same way again, so the
# job fails at once with the reason instead of being retried as if the failure were transient.
PACE_RECHECK = 2.0  # seconds between looks at the job while a slice waits for its pace

PAYLOAD_FAULTS = (InvalidInput, RecursionError, OverflowError, ValueError, TypeError, LookupError)

# Where a batch's time goes, measured with perf_counter around run_batch's steps: "gate" (the health gates'
# look, at most once a second per job), "claim" (the connection, begin_batch's lock and re-read), "handler"
# (the kind's work), "record" (the checkpoint's statements), "commit", "report" (metrics and log lines after
# the commit) and "pacing" (the wait before the slice's next batch). Each batch observes them in
# tidegate_batch_phase_seconds; a slice's sums go to one debug line when the worker is done with it
# ("slice times", which bench/backfill.py reads).
PHASES = ("gate", "claim", "handler", "record", "commit", "report", "pacing")


class Outcome(StrEnum):
    """What became of one batch (``Worker.run_batch``), and so what the slice's loop does next."""

    MORE = "more"  # committed (or shrunk after a timeout): run the slice's next batch
    HELD = "held"  # a health gate holds the job: the slice's next batch after the gate's pause
    SLICE_DONE = "slice-done"  # committed, and the slice has no key left
    STOPPED = "stopped"  # not ours any more (lease lost) or let go (paused, cancelled, canary, concurrency)
    FAILED = "failed"  # rolled back and counted against the job: the slice waits for its retry


@dataclass(frozen=True)
class Step:
    """What one call of the kind (or an adaptive batch's steps together) did: the new exclusive cursor,
    computed by the runtime, and whether the slice is exhausted."""

    checkpoint: keys.Key
    processed: int
    exhausted: bool
    errors: list[kinds.ItemError] = field(default_factory=list)


def one_step(conn: Connection, kind: kinds.RangeKind, ctx: kinds.BatchContext, cursor: keys.Key,
             end: keys.Key, limit: int, ahead: bool = False) -> Step:
    """Up to ``limit`` keys after ``cursor``, below ``end``: the kind reads how far they reach and
    processes that range (``kinds.next_range``). ``ahead``: the slice's next batch will ask for the same
    limit, so the kind is told the slice's end and the limit and may read that batch's rows ahead."""
    found = kinds.next_range(kind, conn, ctx, cursor, end, limit)
    if found is None:
        return Step(checkpoint=keys.before(end), processed=0, exhausted=True)
    batch, exhausted = found
    if ahead and not exhausted:
        batch = replace(batch, end=end, limit=limit)
    done = kind.process_range(conn, ctx, batch)
    return Step(checkpoint=batch.hi, processed=done.processed, exhausted=exhausted, errors=done.errors)


@dataclass
class InFlight:
    """One batch while it runs: what its steps learn that the steps after them (or the rollback) need."""

    job_id: str
    slice_no: int
    started: float
    kind: str = "?"  # the job's kind, once begin_batch has read it
    size: int = 0  # rows the batch may take (the job's batch size, capped by its canary limit)
    box: throttle.TimeBox | None = None  # an adaptive batch's time box
    cut: str | None = None  # the new half's start, when the slice was cut for an idle worker
    next_size: int | None = None  # the batch size the slice's next batch starts from
    work_done: float = 0.0  # when the kind's last step returned
    elapsed: float = 0.0  # seconds from start to commit
    phases: dict[str, float] = field(default_factory=dict)  # seconds per PHASES entry, once committed


@dataclass
class WorkerConfig:
    url: str
    pool: str = "default"
    queues: list[str] = field(default_factory=lambda: ["default"])
    types: list[str] = field(default_factory=list)  # empty: every registered kind
    lease_seconds: float = 10.0
    poll_seconds: float = 1.0
    drain: bool = False
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    progress_every: int = 20  # batches between progress log lines
    claim_batch: int = 50  # one-shot jobs claimed per transaction
    gates: list[Gate] = field(default_factory=list)  # health gates checked between batches
    # a job whose batches fail this many times in a row for the database's sake (full disk, timeouts,
    # serialization...) pauses itself with the reason, instead of failing: the fix is the database's
    pause_after_failures: int = 5
    batch_deadline: float | None = None  # seconds; None: derived from the job's target (worker/deadline.py)
    stop_grace: float = 30.0  # seconds a batch in flight may run on after a stop request
    max_worker_deaths: int = 3  # worker deaths in a row during a job's batches before it fails as poison
    exit_when_wedged: bool = False  # a pool's worker process exits when a batch wedges it
    # a pool over several targets (worker/multi.py): a worker lets go of a slice after this many seconds
    # of its batches, and at once when a gate holds its job, so the other targets are served meanwhile
    slice_quantum: float | None = None
    let_go_when_held: bool = False
    connect_timeout: int | None = None  # seconds; a pool over several targets must not hang on one host


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, config: WorkerConfig, stop: threading.Event | None = None,
                 wakeup: Wakeup | None = None, slot: Slot | None = None, worker_id: str | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.wakeup = wakeup or Wakeup()  # shared by a pool's workers (worker/wakeup.py)
        # a process serving several targets has one Worker per target, all with its id (worker/multi.py)
        self.id = worker_id or new_worker_id()
        self.kinds = kinds.kinds()
        wanted = set(config.types) or set(self.kinds)
        self.kind_names = sorted(wanted & set(self.kinds))
        one_shot_kinds = {n: k for n in self.kind_names if isinstance(k := self.kinds[n], kinds.OneShotKind)}
        self.one_shot_names = sorted(one_shot_kinds)
        self.engine: Engine = make_engine(config.url, application_name=f"tidegate-worker {self.id}",
                                          connect_timeout=config.connect_timeout)
        self.watch = BatchWatch(self.engine, self.id, self.stop, stop_grace=config.stop_grace,
                                max_deaths=config.max_worker_deaths, slot=slot,
                                exit_when_wedged=config.exit_when_wedged)
        self._heartbeat = Heartbeat(self, config.lease_seconds, self.watch)
        self.batches_done = 0
        self.gates = Gates(config.gates, wait=not config.let_go_when_held)
        self.held = False  # the last slice was let go because a gate held its job (let_go_when_held)
        self.one_shots = OneShots(self.engine, one_shot_kinds, config)
        self._last_plan = 0.0
        self._tail_seconds = 0.0  # moving average of a batch's time after its last step
        self.slice_times: dict[str, float] = {}  # the slice in hand: seconds per phase, its batches (PHASES)
        self._two_phase: bool | None = None  # force Citus's two-phase commit on every batch (asked once)

    # -- lifecycle ---------------------------------------------------------

    def run(self) -> int:
        self._heartbeat.start()  # registers the worker (and again if it was reaped after an outage)
        log.info("worker %s started (queues=%s kinds=%s)", self.id, self.config.queues, self.kind_names)
        troubles = 0
        try:
            while not self.stop.is_set():
                seen = self.wakeup.seen()
                try:
                    if self.step():
                        troubles = 0
                        continue
                    if self.config.drain and not self._work_left():
                        log.info("worker %s: no work left, draining out", self.id)
                        break
                    troubles = 0
                except BaseException as err:  # noqa: B036 - only the stop event stops a worker
                    # Whatever a job does is charged to that job where it happens (plan_one, run_batch,
                    # one_shots). What reaches here belongs to no job: the database went away
                    # (restart, failover, network: what was in flight rolled back with the connection),
                    # or a fault of the runtime itself. Back off and go on; our slices stay ours while
                    # the lease holds, else someone else's.
                    troubles += 1
                    delay = min(30.0, 0.5 * 2 ** min(troubles, 6)) * random.uniform(0.8, 1.2)
                    if is_outage(err):
                        log.warning("worker %s: database unavailable (%s); reconnecting in %.1fs",
                                    self.id, first_line(err), delay)
                    else:
                        log.error("worker %s: %s: %s; going on in %.1fs", self.id, type(err).__name__,
                                  first_line(err)[:300], delay, exc_info=True)
                    self.stop.wait(delay)
                    continue
                self.wakeup.wait(seen, self.config.poll_seconds * random.uniform(0.5, 1.0), self.stop)
        finally:
            self.close()
            log.info("worker %s stopped", self.id)
        return 0

    def open(self) -> bool:
        """Register without waiting through an outage (worker/multi.py); False if the database did not answer."""
        if self._heartbeat.try_start():
            return True
        self.engine.dispose()
        return False

    def close(self) -> None:
        """Stop the heartbeat, unregister, close the connections."""
        self._heartbeat.stop()
        try:
            with self.engine.begin() as conn:
                store.unregister_worker(conn, self.id)
        except Exception as err:  # the lease expires by itself
            log.warning("worker %s: could not unregister (%s)", self.id, first_line(err))
        self.engine.dispose()

    def step(self) -> bool:
        """One unit of work: plan a job, run a handful of one-shot jobs, or work a slice; False if none."""
        self.held = False
        return bool(self._plan_due() and self.plan_one() or self.run_one_shots() or self.work_one_slice())

    def _plan_due(self) -> bool:
        """While one-shot jobs keep coming, look for jobs to plan once a second, not before every
        handful: that probe walks past every pending one-shot row."""
        now = time.monotonic()
        if self.one_shots.flowing and now - self._last_plan < 1.0:
            return False
        self._last_plan = now
        return True

    def _work_left(self) -> bool:
        with self.engine.begin() as conn:
            return store.work_left(conn, self.id, self.config.queues, self.config.types, self.kind_names)

    # -- planning ----------------------------------------------------------

    def plan_one(self) -> bool:
        """Turn one pending queue row into a range job with slices; False if none.

        Whatever planning raises is charged to the job: the payload's fault fails it at once, anything
        else is a counted retry. If the claim's own transaction breaks on the way (a savepoint that
        cannot be rolled back to), the failure is recorded in a fresh one."""
        job = None
        try:
            with self.engine.begin() as conn:
                job = store.claim_queue_job(conn, self.config.queues, self.config.types, self.one_shot_names)
                if job is None:
                    return False
                if not store.lock_unplanned(conn, job.id):  # being paused (or resumed) this very moment
                    log.info("job %s: its row is locked (an operator moving it?); planning it later", job.id,
                             extra=job_ctx(job.id, kind=job.type))
                    return False
                if store.planned_already(conn, job.id):  # its queue row was set back to pending by hand
                    store.restore_planned_queue_job(conn, job.id)
                    log.warning("job %s was planned already; its queue row is set back to match", job.id,
                                extra=job_ctx(job.id, kind=job.type))
                    return True
                try:
                    with conn.begin_nested():  # a failed validation query must not abort the claim
                        plan = self._plan(conn, job)
                except BaseException as err:  # noqa: B036 - a job's fault, even SystemExit from its code
                    if is_outage(err):
                        raise
                    self._planning_failed(conn, job, err)
                    return True
        except BaseException as err:  # noqa: B036
            if job is None or is_outage(err):
                raise
            with self.engine.begin() as conn:
                self._planning_failed(conn, job, err)
            return True
        self.wakeup.notify()  # its other slices are claimable now
        log.info("job %s (%s) planned: %d slice(s), batch_size=%d", job.id, job.type, len(plan.slices),
                 plan.batch_size, extra=job_ctx(job.id, kind=job.type, slices=len(plan.slices),
                                                batch_size=plan.batch_size, rows_estimate=plan.total_estimate))
        return True

    def _plan(self, conn: Connection, job: store.QueueJob) -> kinds.Plan:
        kind = self.kinds.get(job.type)
        if kind is None:
            raise InvalidInput(f"unknown job type {job.type[:100]!r}; known types: {', '.join(sorted(self.kinds))}")
        if not isinstance(kind, kinds.RangeKind):  # one-shot jobs are claimed whole, never planned
            raise InvalidInput(f"job type {job.type!r} is a one-shot kind: it has no plan")
        with trust.planning_for(job.enqueued_by):  # the kind checks a job's own SQL against who queued it
            plan = kind.plan(conn, job.payload())
        store.store_plan(conn, job.id, job.type, plan)
        store.audit(conn, "tidegate", "plan", job.id, {"slices": len(plan.slices), "params": plan.params})
        return plan

    def _planning_failed(self, conn: Connection, job: store.QueueJob, err: BaseException) -> None:
        message = error_text(err, 500)
        ctx = job_ctx(job.id, kind=job.type)
        if isinstance(err, PAYLOAD_FAULTS):  # the same payload would fail the same way again
            why = error_text(err, 500, with_class=False) if isinstance(err, InvalidInput) else message
            reason = f"invalid job: {why}"
            log.warning("job %s (%s) rejected: %s", job.id, job.type, reason, extra=ctx)
            store.fail_queue_job(conn, job.id, reason)
            return
        store.retry_queue_job(conn, job.id, f"planning failed: {message}", self.config.backoff_base,
                              self.config.backoff_max)
        log.warning("job %s (%s): planning failed, will retry: %s", job.id, job.type, message, extra=ctx)

    def run_one_shots(self) -> bool:
        """One handful of small jobs (one-shot kinds, worker/one_shots.py); False if none."""
        return self.one_shots.run()

    # -- slices and batches -------------------------------------------------

    def work_one_slice(self) -> bool:
        started = time.perf_counter()
        with self.engine.begin() as conn:
            claimed = store.claim_slice(conn, self.id, self.config.queues, self.kind_names)
            if claimed is None:
                # a job whose concurrency was raised above its slices: cut one in two, take the new half
                split = store.split_one(conn, self.config.queues, self.kind_names)
                if split is not None:
                    log.info("job %s: slice %d split for more concurrency", *split, extra=job_ctx(*split))
                    claimed = store.claim_slice(conn, self.id, self.config.queues, self.kind_names)
        if claimed is None:
            return False
        job, n = claimed.job_id, claimed.slice_no
        self.slice_times = dict.fromkeys(PHASES, 0.0)
        self.slice_times.update(batches=0, slice_claim=time.perf_counter() - started)
        try:
            return self._work_slice(claimed)
        finally:
            self._log_slice_times(job, n)

    def _work_slice(self, claimed: store.ClaimedSlice) -> bool:
        """The claimed slice's batches, one after another, until it is done or let go."""
        job, n = claimed.job_id, claimed.slice_no
        if claimed.previous_owner:
            log.warning("job %s slice %d: taking over from %s (lease expired)", job, n, claimed.previous_owner,
                        extra=job_ctx(job, n, previous_owner=claimed.previous_owner))
        batches = 0
        quantum = self.config.slice_quantum
        until = time.monotonic() + quantum if quantum else None
        with Collector() as collector:  # Python's cyclic collector between the batches, not inside them
            while True:
                if self.stop.is_set():
                    self._release(job, n)
                    return True
                outcome = self.run_batch(job, n, takeover=bool(claimed.previous_owner) and batches == 0)
                batches += 1
                collector.between()
                if outcome is Outcome.HELD and self.config.let_go_when_held:
                    self._release(job, n, "a gate holds the job")
                    self.held = True
                    return False
                if until is not None and outcome in (Outcome.MORE, Outcome.HELD) and time.monotonic() >= until:
                    self._release(job, n, "its turn is over")
                    return True
                if outcome not in (Outcome.MORE, Outcome.HELD):
                    return True

    def run_batch(self, job_id: str, slice_no: int, *, takeover: bool = False) -> Outcome:
        """One batch in one transaction: the four steps of the module docstring."""
        t0 = time.perf_counter()
        if self.gates.wait_if_held(self.engine, job_id, self.stop):
            return Outcome.HELD  # the slice stays ours; try again after the gate's pause
        batch = InFlight(job_id, slice_no, started=time.monotonic())
        t_gate = time.perf_counter() - t0
        t0 += t_gate
        try:
            with self.engine.begin() as conn:
                state = self._begin(conn, batch, takeover)  # 1. lock the slice, re-read the job
                if state is None:
                    return Outcome.STOPPED  # lease lost, or let go (what it wrote commits)
                t1 = time.perf_counter()
                step = self._process(conn, batch, state)  # 2. the kind's work
                t2 = time.perf_counter()
                recorded = self._record(conn, batch, state, step)  # 3. failed items, checkpoint, counters
                t3 = time.perf_counter()
            # 4. committed: the work and its checkpoint together
        except BaseException as err:  # noqa: B036 - the batch rolled back; its job pays, not the worker
            return self._rolled_back(batch, err)
        t4 = time.perf_counter()
        self.watch.disarm()
        batch.elapsed = time.monotonic() - batch.started
        batch.phases.update(gate=t_gate, claim=t1 - t0, handler=t2 - t1, record=t3 - t2, commit=t4 - t3)
        self._report(batch, state, step, recorded)
        t5 = time.perf_counter()
        outcome = self._pace(batch, state, step, recorded)
        batch.phases.update(report=t5 - t4, pacing=time.perf_counter() - t5)
        self._observe_phases(batch)
        return outcome

    def _observe_phases(self, batch: InFlight) -> None:
        """A committed batch's phases: into the histogram and the slice's sums."""
        times = self.slice_times
        for phase, seconds in batch.phases.items():
            metrics.BATCH_PHASE_SECONDS.labels(batch.kind, phase).observe(seconds)
            times[phase] = times.get(phase, 0.0) + seconds
        times["batches"] = times.get("batches", 0) + 1

    def _log_slice_times(self, job_id: str, slice_no: int) -> None:
        """Where the slice's time went while this worker had it: seconds per phase, summed over its batches."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        times = {k: round(v, 4) for k, v in self.slice_times.items()}
        log.debug("job %s slice %d: slice times %s", job_id, slice_no,
                  " ".join(f"{k}={v}" for k, v in times.items()),
                  extra=job_ctx(job_id, slice_no, slice_times=times, worker=self.id))

    def _begin(self, conn: Connection, batch: InFlight, takeover: bool) -> store.BatchState | None:
        """Step 1: lock this worker's slice and re-read its job; None (letting go, with the reason
        recorded) if the lease is lost, the job is no longer active, its canary limit is used up or
        its concurrency was lowered. Sets the batch's size."""
        state = store.begin_batch(conn, batch.job_id, batch.slice_no, self.id)
        job_id, slice_no = batch.job_id, batch.slice_no
        if state is None:
            log.warning("job %s slice %d: lease lost, another worker owns it now", job_id, slice_no,
                        extra=job_ctx(job_id, slice_no))
            return None
        batch.kind = state.kind
        if takeover:
            metrics.LEASE_TAKEOVERS.labels(state.kind).inc()
        processed = state.processed_count
        if state.knobs.row_limit is not None:  # canary batches of a job run one at a time
            processed = store.locked_processed_count(conn, job_id)
        batch.size = throttle.batch_size(state.knobs, state.batch_size_now, processed)
        if state.status in ACTIVE and batch.size <= 0:  # resumed with its canary limit still used up
            store.pause_self(conn, job_id, "canary limit reached")
        if state.status in ACTIVE and batch.size > 0 and not state.over_concurrency:
            return state
        store.release_slice(conn, job_id, slice_no, self.id)
        why = "concurrency lowered" if state.status in ACTIVE and batch.size > 0 else f"job is {state.status}"
        log.info("job %s slice %d: %s, letting go", job_id, slice_no, why,
                 extra=job_ctx(job_id, slice_no, status=state.status))
        return None

    def _process(self, conn: Connection, batch: InFlight, state: store.BatchState) -> Step:
        """Step 2: the kind processes the keys after the slice's cursor, under the watch's deadline and
        the job's statement timeout; an adaptive job in time-boxed steps (``_steps``)."""
        self.watch.arm(batch.job_id, batch.slice_no, state.backend_pid, state.xact_start,
                       deadline.seconds_for(self.config.batch_deadline, state.knobs.target_batch_seconds))
        timeout = throttle.statement_timeout_ms(state.knobs)
        if timeout:  # transaction-scoped, so it is safe behind PgBouncer
            store.local_statement_timeout(conn, timeout)
        cursor = keys.decode(state.key_type, state.checkpoint)
        end = keys.decode(state.key_type, state.end_key)
        ctx = kinds.BatchContext(batch.job_id, batch.slice_no, state.params, state.key_type, state.enqueued_by)
        kind = self.kinds[state.kind]
        assert isinstance(kind, kinds.RangeKind)  # claim_slice claims only range jobs
        if state.knobs.target_batch_seconds:
            batch.box = throttle.TimeBox(state.knobs, state.batch_size_now, batch.size, self._tail_seconds)
            step = self._steps(conn, kind, ctx, batch.box, cursor, end, batch.started)
            batch.next_size = batch.box.estimate()
        else:
            step = one_step(conn, kind, ctx, cursor, end, batch.size, ahead=True)
            batch.next_size = state.batch_size_now
        if state.short_of_slices and not step.exhausted:  # the new half waits, unowned, for an idle worker
            # Cut what is left after the batch, not before it: only a slice that still has keys after a full
            # batch is cut, so a job's tail is not halved down to its key type's resolution (a timestamp
            # range to the microsecond: some 37 cuts, each a slice claimed and worked for a handful of rows).
            batch.cut = store.cut_slice(conn, batch.job_id, batch.slice_no, state.key_type,
                                        keys.encode(step.checkpoint), state.end_key, min_width=2 * batch.size)
        batch.work_done = time.monotonic()
        return step

    def _record(self, conn: Connection, batch: InFlight, state: store.BatchState, step: Step) -> store.Recorded:
        """Step 3: failed items, the slice's cursor, the job's counters and watermark, and the job done
        after its last slice, in the batch's transaction. Under no statement timeout: a handler that set one for
        its session (set_config(..., false)) would otherwise time out tidegate's own bookkeeping (the watch
        still bounds the batch)."""
        store.local_statement_timeout(conn, 0)
        if self._two_phase is None:
            self._two_phase = self._ask_two_phase(conn)
        if self._two_phase:  # on a Citus coordinator: the shards' rows and this checkpoint commit as one
            store.force_two_phase(conn)
        return store.record_batch(conn, store.BatchRecord(
            job_id=batch.job_id, slice_no=batch.slice_no, worker_id=self.id, key_type=state.key_type,
            checkpoint=step.checkpoint, processed=step.processed, errors=step.errors, exhausted=step.exhausted,
            next_batch_size=batch.next_size))

    def _ask_two_phase(self, conn: Connection) -> bool:
        """Whether this database is a Citus coordinator whose batches need ``force_two_phase``; a database
        does not gain or lose Citus under a worker, so it is asked once."""
        found = store.citus_two_phase(conn)
        risk = ("a batch whose writes all go to one worker node commits one-phase, and a coordinator crash at "
                "its commit can run it twice")
        if found.marker is False:
            log.warning("this database has Citus but no tidegate_two_phase table (Citus was installed after "
                        "migration 0018 ran): %s; ops/citus.md says how to add it", risk)
            return False
        if found.marker and not found.can_insert:  # its COPY would fail every batch of every job
            log.warning("this login (%s) may not insert into tidegate_two_phase (its role was made before "
                        "migration 0018 ran): %s; to mend, GRANT INSERT ON tidegate_two_phase to the worker role "
                        "(ops/roles.sql's tg_worker) or TO %s, and restart the pool", found.login, risk,
                        found.login_ident)
            return False
        return bool(found.marker)

    def _rolled_back(self, batch: InFlight, err: BaseException) -> Outcome:
        """The batch's transaction rolled back: cancelled by the watch, lost to an outage (raised: not
        the batch's fault), an adaptive step over its time (shrunk, no attempt) or a failed attempt."""
        stopped = self.watch.disarm()
        if stopped is not None:  # the watch cancelled it (worker/deadline.py)
            return self._stopped_by_watch(stopped, batch.kind)
        if is_outage(err):
            raise err  # not the batch's fault: no attempt is counted
        # an adaptive step ran over its time: a quarter of its rows fit. (A fixed-size batch keeps
        # its size: its timeout is the database's setting, a failed attempt like any other.)
        if is_timeout(err) and batch.box is not None and batch.box.asked > 1:
            self._shrink(batch.job_id, batch.slice_no, max(1, batch.box.asked // 4))
            return Outcome.MORE
        self._fail_attempt(batch.job_id, batch.slice_no, batch.kind, err)
        return Outcome.FAILED

    def _report(self, batch: InFlight, state: store.BatchState, step: Step, recorded: store.Recorded) -> None:
        """After the commit: wake idle workers, metrics, the batch's log lines, the job's end."""
        job_id, slice_no, kind_name, elapsed = batch.job_id, batch.slice_no, batch.kind, batch.elapsed
        if batch.cut or step.exhausted:  # a new half to claim, or a slice (maybe a drain) done
            self.wakeup.notify()
        # what a batch costs after its last step (bookkeeping, commit): the next time box leaves room for it
        self._tail_seconds = 0.7 * self._tail_seconds + 0.3 * (batch.started + elapsed - batch.work_done)
        metrics.BATCHES.labels(kind_name).inc()
        metrics.BATCH_SECONDS.labels(kind_name).observe(elapsed)
        metrics.ROWS_PROCESSED.labels(kind_name, job_id).inc(step.processed)
        if step.errors:
            metrics.ROWS_FAILED.labels(kind_name, job_id).inc(len(step.errors))
        self.batches_done += 1
        hi = keys.encode(step.checkpoint)
        bounds = job_ctx(job_id, slice_no, lo=state.checkpoint, hi=hi, rows=step.processed,
                         errors=len(step.errors), seconds=round(elapsed, 3),
                         phases={k: round(v, 5) for k, v in batch.phases.items()})
        log.debug("job %s slice %d: batch (%s, %s] rows=%d errors=%d in %.3fs", job_id, slice_no,
                  state.checkpoint, hi, step.processed, len(step.errors), elapsed, extra=bounds)
        if self.batches_done % self.config.progress_every == 0:
            try:
                self._log_progress(job_id, slice_no, bounds)
            except Exception as err:  # a progress line must never cost the batch that just committed
                if is_outage(err):
                    raise
                log.warning("job %s: no progress line (%s)", job_id, first_line(err)[:300], extra=bounds)
        if recorded.paused:
            log.warning("job %s paused itself: %s", job_id, recorded.paused,
                        extra=job_ctx(job_id, slice_no, reason=recorded.paused))
        if recorded.job_done:
            log.info("job %s: done", job_id, extra=job_ctx(job_id, status="done"))
            self._log_summary(job_id, kind_name)
        if step.exhausted:
            log.info("job %s slice %d: finished", job_id, slice_no, extra=job_ctx(job_id, slice_no))

    def _pace(self, batch: InFlight, state: store.BatchState, step: Step, recorded: store.Recorded) -> Outcome:
        """The slice's next move: done, or more after the job's pause between batches (its sleep, or
        its rate cap's reservation). A long wait looks at the job every PACE_RECHECK seconds: paused or
        cancelled meanwhile, the slice goes on at once to let go (begin_batch); a cap changed meanwhile
        (migration 0013 rescales the reservation) shortens or lengthens the wait."""
        if step.exhausted:
            return Outcome.SLICE_DONE
        wait = throttle.pause_after(state.knobs, recorded.pace_wait)  # clamped knobs, at most a day
        start = time.monotonic()
        sleep_until = start + min(wait, throttle.sane(state.knobs).sleep_between_batches)
        until = start + wait
        while (left := until - time.monotonic()) > 0:
            if self.stop.wait(min(left, PACE_RECHECK)) or until - time.monotonic() <= 0:
                break
            try:
                with self.engine.connect() as conn:
                    status, pace_wait = store.pace_check(conn, batch.job_id)
            except Exception as err:  # noqa: BLE001 - an outage meanwhile: keep to the wait known
                log.info("job %s: pace check failed (%s); waiting on", batch.job_id, first_line(err)[:200],
                         extra=job_ctx(batch.job_id, batch.slice_no))
                continue
            if status not in ACTIVE:
                break
            now = time.monotonic()
            until = min(start + throttle.MAX_PAUSE, max(sleep_until, now + pace_wait))
        return Outcome.MORE

    @staticmethod
    def _steps(conn: Connection, kind: kinds.RangeKind, ctx: kinds.BatchContext, box: throttle.TimeBox,
               cursor: keys.Key, end: keys.Key, started: float) -> Step:
        """An adaptive batch: steps one after another, in the batch's transaction, each sized by
        ``box`` from the cost of those before it, until the target is spent."""
        processed, errors = 0, []
        rows = box.first_step()
        while True:
            step_started = time.monotonic()
            step = one_step(conn, kind, ctx, cursor, end, rows)
            now = time.monotonic()
            processed += step.processed
            errors += step.errors
            cursor = step.checkpoint
            if step.exhausted:
                break
            rows = box.next_step(step.processed, now - step_started, now - started)
            if rows <= 0:
                break
        return Step(checkpoint=cursor, processed=processed, exhausted=step.exhausted, errors=errors)

    def _log_summary(self, job_id: str, kind_name: str) -> None:
        """The run's summary line, for kinds that offer one (``RangeKind.summary``)."""
        kind = self.kinds[kind_name]
        if not isinstance(kind, kinds.RangeKind):
            return
        try:
            facts = kind.summary(self.engine, job_id)
        except Exception as err:  # a report must never fail the job that just finished
            log.warning("job %s: no summary (%s)", job_id, first_line(err), extra=job_ctx(job_id))
            return
        if facts is None:
            return
        log.info("job %s summary: %s", job_id, ", ".join(f"{k}={v}" for k, v in facts.items() if k != "job_id"),
                 extra=job_ctx(job_id, **{k: v for k, v in facts.items() if k != "job_id"}))

    def _stopped_by_watch(self, batch: deadline.Batch, kind_name: str) -> Outcome:
        """A batch the watch cancelled rolled back. Past its deadline: a failed attempt. Cancelled, paused
        or stopping: no attempt; the next begin_batch (or the stop check) lets the slice go."""
        if batch.stopped_by == "deadline":
            err = deadline.BatchDeadlineExceeded(
                f"batch ran past its deadline of {batch.deadline:g}s and was cancelled")
            self._fail_attempt(batch.job_id, batch.slice_no, kind_name, err)
            return Outcome.FAILED
        log.info("job %s slice %d: batch cancelled (%s), rolled back, not counted", batch.job_id, batch.slice_no,
                 batch.stopped_by, extra=job_ctx(batch.job_id, batch.slice_no, reason=batch.stopped_by))
        return Outcome.MORE

    def _shrink(self, job_id: str, slice_no: int, size: int) -> None:
        with self.engine.begin() as conn:
            store.shrink_batch(conn, job_id, slice_no, self.id, size)
        log.warning("job %s slice %d: batch timed out; retrying with an estimate of %d rows", job_id, slice_no, size,
                    extra=job_ctx(job_id, slice_no, batch_size=size))

    def _fail_attempt(self, job_id: str, slice_no: int, kind_name: str, err: BaseException) -> None:
        """Count a failed batch against its job: the payload's fault fails the job at once; the
        database's fault (worker/db.py ``is_database_fault``) is retried with backoff and, after
        ``pause_after_failures`` in a row, pauses the job; anything else fails it after its attempts."""
        metrics.BATCH_FAILURES.labels(kind_name).inc()
        message = error_text(err, 500)
        invalid = isinstance(err, PAYLOAD_FAULTS) and not is_database_fault(err)
        if invalid:  # the job's last_error says so: the state guard lets a worker fail such a job at once
            message = f"invalid job: {message}"
        with self.engine.begin() as conn:
            attempt = store.fail_attempt(conn, job_id, slice_no, self.id, message,
                                         self.config.backoff_base, self.config.backoff_max)
            if attempt is None:
                return
            if invalid:
                store.fail_job(conn, job_id, message)
                log.error("job %s slice %d: %s; job failed", job_id, slice_no, message,
                          extra=job_ctx(job_id, slice_no, error=message))
                return
            if is_database_fault(err):
                if attempt.attempts >= self.config.pause_after_failures:
                    reason = f"{attempt.attempts} batches in a row failed in the database: {message}"
                    if store.pause_self(conn, job_id, reason):
                        log.error("job %s slice %d: paused itself: %s", job_id, slice_no, reason,
                                  extra=job_ctx(job_id, slice_no, attempts=attempt.attempts, error=message))
                        return
            elif attempt.attempts >= attempt.max_attempts:
                store.fail_job(conn, job_id, f"slice {slice_no} failed {attempt.attempts} times: {message}")
                log.error("job %s slice %d: failed %d/%d times, job failed: %s",
                          job_id, slice_no, attempt.attempts, attempt.max_attempts, message,
                          extra=job_ctx(job_id, slice_no, attempts=attempt.attempts, error=message))
                return
        limit = self.config.pause_after_failures if is_database_fault(err) else attempt.max_attempts
        log.warning("job %s slice %d: batch failed (attempt %d/%d), retrying in %.1fs: %s",
                    job_id, slice_no, attempt.attempts, limit, attempt.delay_seconds, message,
                    extra=job_ctx(job_id, slice_no, attempts=attempt.attempts, error=message))

    def _release(self, job_id: str, slice_no: int, why: str = "shutting down") -> None:
        with self.engine.begin() as conn:
            store.release_slice(conn, job_id, slice_no, self.id)
        log.log(logging.INFO if why == "shutting down" else logging.DEBUG, "job %s slice %d: released (%s)",
                job_id, slice_no, why, extra=job_ctx(job_id, slice_no))

    def _log_progress(self, job_id: str, slice_no: int, bounds: dict[str, dict[str, object]]) -> None:
        """Every N batches: the last batch's bounds and counts, and the whole job's progress."""
        with self.engine.connect() as conn:
            rows = store.job_status(conn, job_id, 1)
        if not rows:
            return
        row = rows[0]
        total, processed, errors = row["total_estimate"], row["processed_count"], row["error_count"]
        pct = f" ({100.0 * processed / total:.1f}% of ~{total})" if total else ""
        b = bounds["tidegate"]
        b.update(job_processed=processed, job_errors=errors, job_rows_estimate=total)
        log.info("job %s slice %d: batch (%s, %s] rows=%s errors=%s; job: %d rows processed%s, %d errors",
                 job_id, slice_no, b["lo"], b["hi"], b["rows"], b["errors"], processed, pct, errors, extra=bounds)
