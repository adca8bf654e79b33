"""`tidegate rollout`: the runbook's gradual rollout, driven step by step against a running pool.

canary (the job's --limit) -> verify -> resume at the first concurrency step -> after every
--step-rows rows: wait while a health gate holds, verify, raise concurrency to the next step
-> done -> verify. Any failed verification pauses the job with the reason and stops with exit 1:
the job holds at that step until someone looks. The same sequence by hand is in
ops/runbooks/backfill.md. It only turns knobs (as `tidegate set/resume` would); workers do the work.

A fan-out run (``--run``, :class:`RunRollout`): the jobs of every target but the canary's are held
(paused) first; the canary target's job then goes through the rollout above; once it is done and
verified the others are released ``batch`` targets at a time (their canary limit lifted, at the last
step's concurrency, resumed), and each is verified once done. A failed verification, or a released job
that ends other than done, pauses every job of the run still able to start a batch and stops with exit 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from tidegate.jobs import inspect
from tidegate.worker import control, runs, runview
from tidegate.worker.errors import DatabaseUnavailable, IllegalTransition, InvalidInput, NotFound, TidegateError
from tidegate.worker.sql import load
from tidegate.worker.targets import Target

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


FINISHED = ("done", "failed", "cancelled")


@dataclass
class RunRollout:
    """The rollout of fan-out run ``run_id`` over ``targets``: canary target, then the others ``batch`` at a time."""

    targets: list[Target]
    run_id: str
    steps: list[int]
    step_rows: int
    actor: str
    echo: Callable[[str], None]
    canary_target: str | None = None
    batch: int = 1
    sample: int = 50
    poll: float = 1.0
    timeout: float = 3600.0

    def run(self) -> None:
        from tidegate.worker.db import make_engine

        self.run_id = runs.check_run_id(self.run_id)
        parts = runs.read_run(self.targets, self.run_id)
        down = [p for p in parts if p.error]
        if down:  # a job we cannot hold could run beside the canary: start nothing
            raise DatabaseUnavailable("cannot hold the run, nothing changed: "
                                      + "; ".join(f"target {p.target}: {p.error}" for p in down))
        if not parts:
            raise NotFound(f"no job of run {self.run_id} in {', '.join(t.name for t in self.targets)}")
        by_name = {p.target: p for p in parts}
        canary = self.canary_target or parts[0].target
        if canary not in by_name:
            raise InvalidInput(f"--canary-target {canary}: the run has no job there; it has jobs in "
                               + ", ".join(by_name))
        if len(by_name[canary].jobs) != 1:
            raise InvalidInput(f"target {canary} holds {len(by_name[canary].jobs)} jobs of the run:"
                               " a canary is one job")
        canary_job = by_name[canary].jobs[0]["job_id"]
        others = [(p.target, j["job_id"]) for p in parts if p.target != canary for j in p.jobs
                  if j["status"] not in FINISHED]
        urls = {t.name: t.url for t in self.targets}
        self.engines = {name: make_engine(urls[name], application_name="tidegate-rollout", pool_size=1)
                        for name in by_name}
        try:
            held = self._hold(others)
            try:
                Rollout(self.engines[canary], canary_job, self.steps, self.step_rows, self.actor,
                        lambda line: self.echo(f"[{canary}] {line}"), self.sample, self.poll, self.timeout).run()
            except InvalidInput:  # no canary limit, say: nothing was run, so the held jobs go back as they were
                runview.act_run(self.targets, self.run_id, "resume", self.actor, "rollout: did not start", only=held)
                raise
            except Holding as err:
                raise Holding(f"holding at the canary (target {canary}): {err}; the run's other"
                              f" {len(others)} job(s) stay paused") from None
            self.echo(f"canary target {canary}: done and verified; releasing {len(others)} job(s),"
                      f" {self.batch} at a time")
            for start in range(0, len(others), self.batch):
                self._release(others[start:start + self.batch])
            self.echo(f"run rollout complete: {1 + len(others)} job(s) in {len(by_name)} target(s) done and verified")
        finally:
            for engine in self.engines.values():
                engine.dispose()

    def _hold(self, others: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Pause the jobs of the run but the canary's; the (target, job) pairs this paused."""
        if not others:
            return []
        moved = runview.act_run(self.targets, self.run_id, "pause", self.actor,
                                "rollout: held until the canary is verified", only=others)
        failed = [m for m in moved if "error" in m]
        if failed:
            raise Holding("cannot hold the run (the canary is not started): "
                          + "; ".join(f"target {m['target']}: {m['error']}" for m in failed))
        held = [(m["target"], m["job_id"]) for m in moved if m["outcome"] == "paused"]
        self.echo(f"held: {len(others)} job(s) in {len({t for t, _ in others})} other target(s) paused"
                  f" until the canary is verified ({len(held)} paused now, the others were paused already)")
        return held

    def _release(self, batch: list[tuple[str, str]]) -> None:
        names = ", ".join(t for t, _ in batch)
        for target, job_id in batch:
            with self.engines[target].begin() as conn:
                control.set_knobs(conn, job_id, {"row_limit": None, "concurrency": self.steps[-1]}, self.actor)
                control.transition(conn, job_id, "resume", self.actor, "rollout: released after the canary")
        self.echo(f"released {names} at concurrency {self.steps[-1]}")
        deadline = time.monotonic() + self.timeout
        pending = list(batch)
        while pending:
            for target, job_id in list(pending):
                with self.engines[target].connect() as conn:
                    job = conn.execute(text(SQL["job"]), {"job_id": job_id}).first()
                if job is None or job.status in ("pending", "running"):
                    continue
                pending.remove((target, job_id))
                if job.status != "done":
                    self._stop(f"target {target}: the job is {job.status} ({job.status_reason})")
                self._verify(target, job_id, job.processed_count)
            if pending:
                if time.monotonic() > deadline:
                    raise Holding(f"gave up after {self.timeout:.0f}s waiting for {', '.join(t for t, _ in pending)}")
                time.sleep(self.poll)

    def _verify(self, target: str, job_id: str, processed: int) -> None:
        self.echo(f"[{target}] done after {processed} rows; verifying")
        with self.engines[target].connect() as conn:
            inspect.read_only(conn)
            report = inspect.verify(conn, job_id, self.sample)
            conn.rollback()
        for c in report.checks:
            self.echo(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}")
        if not report.ok:
            self._stop(f"target {target}: verification failed")
        self.echo(f"[{target}] verified")

    def _stop(self, why: str) -> None:
        """Pause every job of the run that could still start a batch, and hold."""
        moved = runview.act_run(self.targets, self.run_id, "pause", self.actor, f"rollout: {why}")
        paused = sum(1 for m in moved if m.get("outcome") == "paused")
        unreached = [m["target"] for m in moved if "error" in m]
        raise Holding(f"holding: {why}; paused {paused} job(s) of the run"
                      + (f" (could not reach {', '.join(unreached)}: pause them there)" if unreached else ""))
