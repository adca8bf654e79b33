"""The job state machine, in one place.

``backfill_jobs.status`` is the state of a range job (backfill or archive);
``queue_jobs.status`` mirrors it coarsely and also covers the time before a
worker has planned the job. Every UPDATE that moves a job checks the current
state in SQL (``WHERE status IN (...)``) and its row count in Python; the
migration's CHECK constraints refuse any other value. The diagram is in
``ops/state-machine.md``.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    # Planned by a worker, no batch run yet. In: planning. Out: first claim
    # (running), pause, cancel. The runbook's `UPDATE ... SET status='paused'
    # WHERE status='pending'` acts on these.
    PENDING = "pending"
    # Eligible for batches. In: first claim, resume (CLI or the runbook's SQL),
    # retry. Out: all slices done (done), pause, cancel, attempts exhausted or
    # error-rate stop (failed / paused).
    RUNNING = "running"
    # Held by an operator or by tidegate itself (reason in status_reason). No
    # new batch starts; in-flight batches finish. Out: resume, cancel.
    PAUSED = "paused"
    # Every slice reached its end. Terminal.
    DONE = "done"
    # A slice ran out of attempts, or the payload was invalid. Out: retry.
    FAILED = "failed"
    # Stopped by an operator. Out: retry.
    CANCELLED = "cancelled"


ACTIVE = (JobStatus.PENDING, JobStatus.RUNNING)
TERMINAL = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)

# operator action -> (states it may start from, state it moves to)
TRANSITIONS: dict[str, tuple[tuple[JobStatus, ...], JobStatus]] = {
    "pause": ((JobStatus.PENDING, JobStatus.RUNNING), JobStatus.PAUSED),
    "resume": ((JobStatus.PAUSED,), JobStatus.RUNNING),
    "cancel": ((JobStatus.PENDING, JobStatus.RUNNING, JobStatus.PAUSED), JobStatus.CANCELLED),
    "retry": ((JobStatus.FAILED, JobStatus.CANCELLED), JobStatus.RUNNING),
}
