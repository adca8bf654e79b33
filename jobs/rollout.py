"""`tidegate rollout`: the runbook's gradual rollout, driven step by step against a running pool.

canary (the job's --limit) -> verify -> resume at the first concurrency step -> after every
--step-rows rows: wait while a health gate holds, verify, raise concurrency to the next step
-> done -> verify. Any failed verification pauses the job with the reason and stops with exit 1:
the job holds at that step until someone looks. The same sequence by hand is in
ops/runbooks/backfill.md. It only turns knobs (as `tidegate set/resume` would); workers do the work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from tidegate.jobs import inspect
from tidegate.worker import control
from tidegate.worker.errors import IllegalTransition, InvalidInput, TidegateError
from tidegate.worker.sql import load

SQL = load(__package__, "rollout.sql")
CANARY = "canary limit reached"


class Holding(TidegateError):
    """The rollout holds: the job is paused at this step."""


@dataclass
class Rollout:
    engine: Engine
    job_id: str
    steps: list[int]
    step_rows: int
    actor: str
    echo: Callable[[str], None]
    sample: int = 50
    poll: float = 1.0
    timeout: float = 3600.0

    def run(self) -> None:
        job = self._wait(lambda j: True, "a worker to plan the job")
        if job.row_limit is None and job.status != "done":
            raise InvalidInput("a rollout starts with a canary: enqueue the job with --limit N")
        self.echo(f"canary: at most {job.row_limit} rows at concurrency {job.concurrency}")
        job = self._wait(lambda j: j.status in ("paused", "done", "failed", "cancelled"), "the canary to finish")
        if job.status != "done" and (job.status, job.status_reason) != ("paused", CANARY):
            raise Holding(f"holding at canary: the job is {job.status} ({job.status_reason})")
        self._verify("canary", f"{job.status} after {job.processed_count} rows")
        if job.status != "done":
            self._set(row_limit=None, concurrency=self.steps[0])
            with self.engine.begin() as conn:
                control.transition(conn, self.job_id, "resume", self.actor, "rollout: canary verified")
            self.echo(f"step 1: resumed at concurrency {self.steps[0]}")
        for n, concurrency in enumerate(self.steps[1:], start=2):
            start = self._job().processed_count
            job = self._wait(lambda j, s=start: j.processed_count >= s + self.step_rows or j.status != "running",
                             f"{self.step_rows} more rows")
            if job.status == "done":
                break
            self._check_running(job, n)
            if job.held_by:
                self.echo(f"step {n}: gate {job.held_by} holds the job; waiting before raising concurrency")
                job = self._wait(lambda j: not j.held_by or j.status != "running", "the gate to let go")
                self._check_running(job, n)
            self._verify(f"step {n}", f"{job.processed_count} rows processed at concurrency {job.concurrency}")
            if not self._raise(concurrency):
                self.echo(f"step {n}: the job finished before concurrency {concurrency} was needed")
                break
            self.echo(f"step {n}: concurrency {concurrency}")
        job = self._wait(lambda j: j.status != "running", "the job to finish")
        if job.status != "done":
            raise Holding(f"holding: the job is {job.status} ({job.status_reason})")
        self._verify("done", f"the job finished after {job.processed_count} rows")
        self.echo("rollout complete")

    def _check_running(self, job: Any, step: int) -> None:
        if job.status != "running":
            raise Holding(f"holding before step {step}: the job is {job.status} ({job.status_reason})")

    def _verify(self, stage: str, where: str) -> None:
        """Verify the job, printed in the order it happens: the stage and where it is, its checks, the outcome."""
        self.echo(f"{stage}: {where}; verifying")
        with self.engine.connect() as conn:
            inspect.read_only(conn)
            report = inspect.verify(conn, self.job_id, self.sample)
            conn.rollback()
        for c in report.checks:
            self.echo(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}")
        if report.ok:
            self.echo(f"{stage}: verified")
            return
        with self.engine.begin() as conn:
            if self._job_in(conn) in ("pending", "running"):
                control.transition(conn, self.job_id, "pause", self.actor, f"rollout: verification failed at {stage}")
        raise Holding(f"holding at {stage}: verification failed; the job is paused")

    def _set(self, **knobs: Any) -> None:
        with self.engine.begin() as conn:
            control.set_knobs(conn, self.job_id, knobs, self.actor)

    def _raise(self, concurrency: int) -> bool:
        """Raise the job's concurrency; False when it finished meanwhile (a done job has no pace to set:
        the rollout then verifies it as finished instead of failing on the race)."""
        try:
            self._set(concurrency=concurrency)
        except IllegalTransition:
            if self._job().status != "done":
                raise
            return False
        return True

    def _job_in(self, conn: Any) -> str | None:
        row = conn.execute(text(SQL["job"]), {"job_id": self.job_id}).first()
        return row.status if row else None

    def _job(self) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(SQL["job"]), {"job_id": self.job_id}).first()

    def _wait(self, done: Callable[[Any], bool], what: str) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:
            job = self._job()
            if job is not None and done(job):
                return job
            if time.monotonic() > deadline:
                raise Holding(f"gave up after {self.timeout:.0f}s waiting for {what}")
            time.sleep(self.poll)
