"""Small jobs (kinds with ``one_shot``): claimed by the handful, run in one transaction.

The claim marks them done in the same statement (worker/sql/queries.sql: claim_one_shots), so a
job's mark commits with its effects or not at all. A handful runs without savepoints; if a job
raises, the whole transaction rolls back and the next handfuls run job by job, each in its own
savepoint, the failing ones moved back for a retry, until a handful runs clean.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine

from worker import metrics, store
from worker.db import first_line, is_outage
from worker.redact import error_text

if TYPE_CHECKING:
    from worker.runner import WorkerConfig

log = logging.getLogger(__name__)


class OneShots:
    def __init__(self, engine: Engine, kinds: dict[str, Any], names: list[str], config: WorkerConfig) -> None:
        self.engine = engine
        self.kinds = kinds
        self.names = names
        self.config = config
        self.flowing = False  # the last claim found jobs: more are likely waiting
        self.careful = False  # a handful rolled back: run the next ones in savepoints

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
                        self.kinds[job.type].run(conn, job.payload)  # type: ignore[attr-defined]
                    failed = set()
        except Exception as err:
            if is_outage(err) or careful:
                raise
            self.careful = True
            log.info("a handful of one-shot jobs rolled back (%s: %s); running the next ones one by one",
                     type(err).__name__, first_line(err))
            return True
        self.careful = bool(failed)
        for kind, n in Counter(job.type for job in jobs if job.id not in failed).items():
            metrics.ONE_SHOT_JOBS.labels(kind, "done").inc(n)
        return True

    def _one_by_one(self, conn: Connection, jobs: list[store.QueueJob]) -> set[str]:
        """Each claimed job in its own savepoint; those that raise go back for a retry. Returns their ids."""
        failed = set()
        for job in jobs:
            try:
                with conn.begin_nested():
                    self.kinds[job.type].run(conn, job.payload)  # type: ignore[attr-defined]
            except Exception as err:
                if is_outage(err):
                    raise
                failed.add(job.id)
                metrics.ONE_SHOT_JOBS.labels(job.type, "retried").inc()
                store.retry_queue_job(conn, job.id, error_text(err),
                                      self.config.backoff_base, self.config.backoff_max, counted=True)
        return failed
