"""Small jobs (:class:`OneShotKind`): claimed by the handful, run in one transaction.

The claim marks them done in the same statement (worker/sql/queries.sql: claim_one_shots), so a
job's mark commits with its effects or not at all. A handful runs without savepoints; if a job
raises, the whole transaction rolls back and the next handfuls run job by job, each in its own
savepoint, the failing ones moved back for a retry, until a handful runs clean.

Whatever a job raises (``SystemExit`` from its code included) is that job's: a payload that cannot be
read fails it at once; anything else is a counted retry. If the transaction itself breaks while one
job runs (a savepoint that cannot be rolled back to), that job is charged in a fresh transaction, so
a job that breaks its transaction every time still runs out of attempts.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine

from tidegate.worker import metrics, store
from tidegate.worker.db import first_line, is_outage
from tidegate.worker.errors import InvalidInput
from tidegate.worker.kinds import OneShotKind
from tidegate.worker.redact import error_text

if TYPE_CHECKING:
    from tidegate.worker.runner import WorkerConfig

log = logging.getLogger(__name__)


class OneShots:
    def __init__(self, engine: Engine, kinds: dict[str, OneShotKind], config: WorkerConfig) -> None:
        self.engine = engine
        self.kinds = kinds
        self.names = sorted(kinds)
        self.config = config
        self.flowing = False  # the last claim found jobs: more are likely waiting
        self.careful = False  # a handful rolled back: run the next ones in savepoints
        self._running: store.QueueJob | None = None  # the job in its savepoint, in careful mode

    def run(self) -> bool:
        """Claim up to ``claim_batch`` jobs and run them in one transaction; False if none were waiting."""
        self.flowing = False
        if not self.names:
            return False
        careful = self.careful
        try:
            with self.engine.begin() as conn:
                jobs = store.claim_one_shots(conn, self.config.queues, self.names, self.config.claim_batch)
                if not jobs:
                    return False
                self.flowing = True
                if careful:
                    failed = self._one_by_one(conn, jobs)
                else:
                    for job in jobs:
                        self.kinds[job.type].run(conn, job.payload())
                    failed = set()
        except BaseException as err:  # noqa: B036 - a job's fault, even SystemExit from its code
            if is_outage(err):
                raise
            if not careful:
                self.careful = True
                log.info("a handful of one-shot jobs rolled back (%s: %s); running the next ones one by one",
                         type(err).__name__, first_line(err)[:300])
                return True
            job, self._running = self._running, None
            if job is None:
                raise
            with self.engine.begin() as conn:  # the claim's count rolled back with the rest: count it here
                self._failed(conn, job, err, counted=False)
            return True
        self.careful = bool(failed)
        for kind, n in Counter(job.type for job in jobs if job.id not in failed).items():
            metrics.ONE_SHOT_JOBS.labels(kind, "done").inc(n)
        return True

    def _one_by_one(self, conn: Connection, jobs: list[store.QueueJob]) -> set[str]:
        """Each claimed job in its own savepoint; those that raise go back for a retry. Returns their ids."""
        failed = set()
        for job in jobs:
            self._running = job
            try:
                with conn.begin_nested():
                    self.kinds[job.type].run(conn, job.payload())
            except BaseException as err:  # noqa: B036
                if is_outage(err):
                    raise
                failed.add(job.id)
                self._failed(conn, job, err)
        self._running = None
        return failed

    def _failed(self, conn: Connection, job: store.QueueJob, err: BaseException, counted: bool = True) -> None:
        message = error_text(err, 500)
        if isinstance(err, InvalidInput):  # its payload cannot be read: the same would happen again
            metrics.ONE_SHOT_JOBS.labels(job.type, "failed").inc()
            store.fail_claimed_one_shot(conn, job.id, f"invalid job: {error_text(err, 500, with_class=False)}")
            return
        metrics.ONE_SHOT_JOBS.labels(job.type, "retried").inc()
        store.retry_queue_job(conn, job.id, message, self.config.backoff_base, self.config.backoff_max,
                              counted=counted)
