"""One worker process: plan queued jobs, claim slices, run the batch protocol.

The batch protocol (the heart of tidegate), one transaction per batch:

1. ``begin_batch`` locks this worker's slice row (``FOR NO KEY UPDATE``) and
   re-reads the job's status. No row means the lease was lost: another worker
   owns the slice now, so stop touching it. A status other than pending or
   running (a committed pause or cancel) means stop before doing any work.
2. The job kind processes the keys after the slice's cursor (for an adaptive
   job in time-boxed steps, all in this transaction: ``_steps``).
3. ``record_batch`` writes failed items, advances the slice cursor and the
   job's counters and watermark, and marks the job done after its last slice.
4. Commit. Derived rows and checkpoint commit together: a crash anywhere
   repeats nothing and loses nothing.

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

from sqlalchemy import Connection, Engine

from worker import keys, kinds, metrics, store, throttle, trust
from worker.db import first_line, is_outage, is_timeout, make_engine
from worker.errors import InvalidInput
from worker.gates import Gate, Gates
from worker.heartbeat import Heartbeat
from worker.logs import job_ctx
from worker.one_shots import OneShots
from worker.states import ACTIVE
from worker.wakeup import Wakeup

log = logging.getLogger(__name__)


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


class Worker:
    def __init__(self, config: WorkerConfig, stop: threading.Event | None = None,
                 wakeup: Wakeup | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.wakeup = wakeup or Wakeup()  # shared by a pool's workers (worker/wakeup.py)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.kinds = kinds.kinds()
        wanted = set(config.types) or set(self.kinds)
        self.kind_names = sorted(wanted & set(self.kinds))
        self.one_shot_names = [k for k in self.kind_names if getattr(self.kinds[k], "one_shot", False)]
        self.engine: Engine = make_engine(config.url, application_name=f"tidegate-worker {self.id}")
        self._heartbeat = Heartbeat(self, config.lease_seconds)
        self.batches_done = 0
        self.gates = Gates(config.gates)
        self.one_shots = OneShots(self.engine, self.kinds, self.one_shot_names, config)
        self._last_plan = 0.0
        self._tail_seconds = 0.0  # moving average of a batch's time after its last step

    # -- lifecycle ---------------------------------------------------------

    def run(self) -> int:
        self._heartbeat.start()  # registers the worker (and again if it was reaped after an outage)
        log.info("worker %s started (queues=%s kinds=%s)", self.id, self.config.queues, self.kind_names)
        outages = 0
        try:
            while not self.stop.is_set():
                seen = self.wakeup.seen()
                try:
                    if self._plan_due() and self.plan_one() or self.run_one_shots() or self.work_one_slice():
                        outages = 0
                        continue
                    if self.config.drain and not self._work_left():
                        log.info("worker %s: no work left, draining out", self.id)
                        break
                    outages = 0
                except Exception as err:
                    if not is_outage(err):
                        raise
                    # The database went away (restart, failover, network): whatever was in
                    # flight rolled back with the connection. Reconnect with backoff and go on;
                    # our slices stay ours while the lease holds, else someone else's.
                    outages += 1
                    delay = min(30.0, 0.5 * 2 ** min(outages, 6)) * random.uniform(0.8, 1.2)
                    log.warning("worker %s: database unavailable (%s); reconnecting in %.1fs",
                                self.id, first_line(err), delay)
                    self.stop.wait(delay)
                    continue
                self.wakeup.wait(seen, self.config.poll_seconds * random.uniform(0.5, 1.0), self.stop)
        finally:
            self._heartbeat.stop()
            try:
                with self.engine.begin() as conn:
                    store.unregister_worker(conn, self.id)
            except Exception as err:  # the lease expires by itself
                log.warning("worker %s: could not unregister (%s)", self.id, first_line(err))
            self.engine.dispose()
            log.info("worker %s stopped", self.id)
        return 0

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
        """Turn one pending queue row into a range job with slices; False if none."""
        with self.engine.begin() as conn:
            job = store.claim_queue_job(conn, self.config.queues, self.config.types, self.one_shot_names)
            if job is None:
                return False
            kind = self.kinds.get(job.type)
            try:
                if kind is None:
                    raise InvalidInput(
                        f"unknown job type {job.type!r}; known types: {', '.join(sorted(self.kinds))}"
                    )
                # a failed validation query must not abort the claim; the kind checks a job's own SQL
                # against the role that enqueued it
                with conn.begin_nested(), trust.planning_for(job.enqueued_by):
                    plan = kind.plan(conn, job.payload)
            except InvalidInput as err:
                log.warning("job %s (%s) rejected: %s", job.id, job.type, err, extra=job_ctx(job.id, kind=job.type))
                store.fail_queue_job(conn, job.id, f"invalid job: {err}")
                return True
            except Exception as err:  # planning broke (not the payload): retry later, like a batch
                if is_outage(err):
                    raise
                store.retry_queue_job(conn, job.id, f"planning failed: {type(err).__name__}: {first_line(err)}",
                                      self.config.backoff_base, self.config.backoff_max)
                log.warning("job %s (%s): planning failed, will retry: %s", job.id, job.type, first_line(err),
                            extra=job_ctx(job.id, kind=job.type))
                return True
            store.store_plan(conn, job.id, job.type, plan)
            store.audit(conn, "tidegate", "plan", job.id, {"slices": len(plan.slices), "params": plan.params})
        self.wakeup.notify()  # its other slices are claimable now
        log.info("job %s (%s) planned: %d slice(s), batch_size=%d", job.id, job.type, len(plan.slices),
                 plan.batch_size, extra=job_ctx(job.id, kind=job.type, slices=len(plan.slices),
                                                batch_size=plan.batch_size, rows_estimate=plan.total_estimate))
        return True

    def run_one_shots(self) -> bool:
        """One handful of small jobs (kinds with ``one_shot``, worker/one_shots.py); False if none."""
        return self.one_shots.run()

    # -- slices and batches -------------------------------------------------

    def work_one_slice(self) -> bool:
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
        if claimed.previous_owner:
            log.warning("job %s slice %d: taking over from %s (lease expired)", job, n, claimed.previous_owner,
                        extra=job_ctx(job, n, previous_owner=claimed.previous_owner))
        batches = 0
        while True:
            if self.stop.is_set():
                self._release(job, n)
                return True
            outcome = self.run_batch(job, n, takeover=bool(claimed.previous_owner) and batches == 0)
            batches += 1
            if outcome != "more":
                return True

    def run_batch(self, job_id: str, slice_no: int, *, takeover: bool = False) -> str:
        """One batch in one transaction. Returns "more", "slice-done", "stopped" or "failed"."""
        if self.gates.wait_if_held(self.engine, job_id, self.stop):
            return "more"  # the slice stays ours; try again after the gate's pause
        started = time.monotonic()
        kind_name = "?"
        size, box, cut = 0, None, None
        try:
            with self.engine.begin() as conn:
                state = store.begin_batch(conn, job_id, slice_no, self.id)
                if state is None:
                    log.warning("job %s slice %d: lease lost, another worker owns it now", job_id, slice_no,
                                extra=job_ctx(job_id, slice_no))
                    return "stopped"
                kind_name = state.kind
                if takeover:
                    metrics.LEASE_TAKEOVERS.labels(kind_name).inc()
                processed = state.processed_count
                if state.knobs.row_limit is not None:  # canary batches of a job run one at a time
                    processed = store.locked_processed_count(conn, job_id)
                size = throttle.batch_size(state.knobs, state.batch_size_now, processed)
                if state.status in ACTIVE and size <= 0:  # resumed with its canary limit still used up
                    store.pause_self(conn, job_id, "canary limit reached")
                if state.status not in ACTIVE or size <= 0 or state.over_concurrency:
                    store.release_slice(conn, job_id, slice_no, self.id)
                    why = "concurrency lowered" if state.status in ACTIVE and size > 0 else f"job is {state.status}"
                    log.info("job %s slice %d: %s, letting go", job_id, slice_no, why,
                             extra=job_ctx(job_id, slice_no, status=state.status))
                    return "stopped"
                timeout = throttle.statement_timeout_ms(state.knobs)
                if timeout:  # transaction-scoped, so it is safe behind PgBouncer
                    conn.execute(store.q("local_statement_timeout"), {"ms": str(timeout)})
                end_key = state.end_key
                if state.short_of_slices:  # the new half waits, unowned, for an idle worker
                    cut = store.cut_slice(conn, job_id, slice_no, state.key_type, state.checkpoint, end_key,
                                          min_width=2 * size)
                    end_key = cut or end_key
                cursor = keys.decode(state.key_type, state.checkpoint)
                end = keys.decode(state.key_type, end_key)
                ctx = kinds.BatchContext(job_id, slice_no, state.params, state.key_type, size)
                kind = self.kinds[state.kind]
                if state.knobs.target_batch_seconds:
                    box = throttle.TimeBox(state.knobs, state.batch_size_now, size, self._tail_seconds)
                    result = self._steps(conn, kind, ctx, box, cursor, end, started)
                    next_size = box.estimate()
                else:
                    result = kind.process(conn, ctx, cursor, end)
                    next_size = state.batch_size_now
                work_done = time.monotonic()
                job_done, paused = store.record_batch(
                    conn, job_id, slice_no, self.id, state.key_type, result.checkpoint, result.processed,
                    result.errors, result.exhausted, next_size,
                )
        except Exception as err:  # the batch rolled back
            if is_outage(err):
                raise  # not the batch's fault: no attempt is counted
            asked = box.asked if box is not None else size
            if is_timeout(err) and asked > 1:  # a step ran 4x over the target: a quarter of its rows fit
                self._shrink(job_id, slice_no, max(1, asked // 4))
                return "more"
            self._fail_attempt(job_id, slice_no, kind_name, err)
            return "failed"
        elapsed = time.monotonic() - started
        if cut or result.exhausted:  # a new half to claim, or a slice (maybe a drain) done
            self.wakeup.notify()
        # what a batch costs after its last step (bookkeeping, commit): the next time box leaves room for it
        self._tail_seconds = 0.7 * self._tail_seconds + 0.3 * (started + elapsed - work_done)
        metrics.BATCHES.labels(kind_name).inc()
        metrics.BATCH_SECONDS.labels(kind_name).observe(elapsed)
        metrics.ROWS_PROCESSED.labels(kind_name, job_id).inc(result.processed)
        if result.errors:
            metrics.ROWS_FAILED.labels(kind_name, job_id).inc(len(result.errors))
        self.batches_done += 1
        bounds = job_ctx(job_id, slice_no, lo=state.checkpoint, hi=keys.encode(result.checkpoint),
                         rows=result.processed, errors=len(result.errors), seconds=round(elapsed, 3))
        log.debug("job %s slice %d: batch (%s, %s] rows=%d errors=%d in %.3fs", job_id, slice_no,
                  state.checkpoint, keys.encode(result.checkpoint), result.processed, len(result.errors),
                  elapsed, extra=bounds)
        if self.batches_done % self.config.progress_every == 0:
            self._log_progress(job_id, slice_no, bounds)
        if paused:
            log.warning("job %s paused itself: %s", job_id, paused, extra=job_ctx(job_id, slice_no, reason=paused))
        if job_done:
            log.info("job %s: done", job_id, extra=job_ctx(job_id, status="done"))
            self._log_summary(job_id, kind_name)
        if result.exhausted:
            log.info("job %s slice %d: finished", job_id, slice_no, extra=job_ctx(job_id, slice_no))
            return "slice-done"
        wait = throttle.pause_after(state.knobs, result.processed, elapsed)
        if wait > 0:
            self.stop.wait(wait)
        return "more"

    @staticmethod
    def _steps(conn: Connection, kind: kinds.JobKind, ctx: kinds.BatchContext, box: throttle.TimeBox,
               cursor: keys.Key, end: keys.Key, started: float) -> kinds.BatchResult:
        """An adaptive batch: the kind's process called step after step, in the batch's transaction,
        each step sized by ``box`` from the cost of those before it, until the target is spent."""
        processed, errors = 0, []
        rows = box.first_step()
        while True:
            step_started = time.monotonic()
            result = kind.process(conn, replace(ctx, batch_size=rows), cursor, end)
            now = time.monotonic()
            processed += result.processed
            errors += result.errors
            cursor = result.checkpoint
            if result.exhausted:
                break
            rows = box.next_step(result.processed, now - step_started, now - started)
            if rows <= 0:
                break
        return kinds.BatchResult(checkpoint=cursor, processed=processed, exhausted=result.exhausted, errors=errors)

    def _log_summary(self, job_id: str, kind_name: str) -> None:
        """The run's summary line, for kinds that offer one (``summary(engine, job_id) -> dict``)."""
        summarize = getattr(self.kinds.get(kind_name), "summary", None)
        if summarize is None:
            return
        try:
            facts = summarize(self.engine, job_id)
        except Exception as err:  # a report must never fail the job that just finished
            log.warning("job %s: no summary (%s)", job_id, first_line(err), extra=job_ctx(job_id))
            return
        log.info("job %s summary: %s", job_id, ", ".join(f"{k}={v}" for k, v in facts.items() if k != "job_id"),
                 extra=job_ctx(job_id, **{k: v for k, v in facts.items() if k != "job_id"}))

    def _shrink(self, job_id: str, slice_no: int, size: int) -> None:
        with self.engine.begin() as conn:
            store.shrink_batch(conn, job_id, slice_no, self.id, size)
        log.warning("job %s slice %d: batch timed out; retrying with an estimate of %d rows", job_id, slice_no, size,
                    extra=job_ctx(job_id, slice_no, batch_size=size))

    def _fail_attempt(self, job_id: str, slice_no: int, kind_name: str, err: Exception) -> None:
        metrics.BATCH_FAILURES.labels(kind_name).inc()
        message = f"{type(err).__name__}: {first_line(err)}"
        with self.engine.begin() as conn:
            attempt = store.fail_attempt(conn, job_id, slice_no, self.id, message,
                                         self.config.backoff_base, self.config.backoff_max)
            if attempt is None:
                return
            if attempt.attempts >= attempt.max_attempts:
                store.fail_job(conn, job_id, f"slice {slice_no} failed {attempt.attempts} times: {message}")
                log.error("job %s slice %d: failed %d/%d times, job failed: %s",
                          job_id, slice_no, attempt.attempts, attempt.max_attempts, message,
                          extra=job_ctx(job_id, slice_no, attempts=attempt.attempts, error=message))
                return
        log.warning("job %s slice %d: batch failed (attempt %d/%d), retrying in %.1fs: %s",
                    job_id, slice_no, attempt.attempts, attempt.max_attempts, attempt.delay_seconds, message,
                    extra=job_ctx(job_id, slice_no, attempts=attempt.attempts, error=message))

    def _release(self, job_id: str, slice_no: int) -> None:
        with self.engine.begin() as conn:
            store.release_slice(conn, job_id, slice_no, self.id)
        log.info("job %s slice %d: released (shutting down)", job_id, slice_no, extra=job_ctx(job_id, slice_no))

    def _log_progress(self, job_id: str, slice_no: int, bounds: dict[str, dict[str, object]]) -> None:
        """Every N batches: the last batch's bounds and counts, and the whole job's progress."""
        with self.engine.connect() as conn:
            row = conn.execute(store.q("job_status"), {"job_id": job_id, "limit": 1}).first()
        if row is None:
            return
        total = row.total_estimate
        pct = f" ({100.0 * row.processed_count / total:.1f}% of ~{total})" if total else ""
        b = bounds["tidegate"]
        b.update(job_processed=row.processed_count, job_errors=row.error_count, job_rows_estimate=total)
        log.info("job %s slice %d: batch (%s, %s] rows=%s errors=%s; job: %d rows processed%s, %d errors",
                 job_id, slice_no, b["lo"], b["hi"], b["rows"], b["errors"], row.processed_count, pct,
                 row.error_count, extra=bounds)
