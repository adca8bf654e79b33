"""Keeping tidegate's own tables small: finished queue jobs, old etl_errors and old minutes of the
rate history (tidegate_job_rates, kept as long as finished jobs) are deleted after a retention, in
small batches, so a busy deployment's queue never bloats.

Shape shared by maintenance services: a config with defaults and validation, a
``run_once`` that works in batches until a short page (tested directly), and a
loop that calls it, logs, and goes on. Several pools may run it at once: the
deletes pick rows with SKIP LOCKED and need no coordination or session state.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy import Engine

from tidegate.worker import store
from tidegate.worker.errors import InvalidInput

log = logging.getLogger(__name__)
DAY = 86_400.0


@dataclass(frozen=True)
class RetentionConfig:
    jobs_seconds: float = 7 * DAY  # finished queue jobs (and their checkpoints) kept this long
    errors_seconds: float = 30 * DAY  # etl_errors rows kept this long
    batch: int = 1000  # rows per DELETE: short transactions, little lock time
    interval_seconds: float = 300.0  # between passes of the loop

    def __post_init__(self) -> None:
        if self.jobs_seconds <= 0 or self.errors_seconds <= 0:
            raise InvalidInput("retention must be positive")
        if not 1 <= self.batch <= 100_000:
            raise InvalidInput("maintenance batch must be between 1 and 100000")


@dataclass(frozen=True)
class Pruned:
    queue_jobs: int
    etl_errors: int
    job_rates: int = 0


def run_once(engine: Engine, config: RetentionConfig) -> Pruned:
    counts = []
    for prune, age in ((store.prune_queue_jobs, config.jobs_seconds), (store.prune_etl_errors, config.errors_seconds),
                       (store.prune_job_rates, config.jobs_seconds)):
        total = 0
        while True:
            with engine.begin() as conn:
                n = prune(conn, age, config.batch)
            total += n
            if n < config.batch:
                break
        counts.append(total)
    return Pruned(*counts)


def loop(engine: Engine, config: RetentionConfig, stop: threading.Event) -> None:
    while not stop.wait(config.interval_seconds):
        try:
            pruned = run_once(engine, config)
            if pruned.queue_jobs or pruned.etl_errors:
                log.info("maintenance: deleted %d finished queue job(s) and %d old etl_errors row(s)",
                         pruned.queue_jobs, pruned.etl_errors)
        except Exception as err:  # the next pass tries again
            log.warning("maintenance: pass failed: %s", err)


def loop_targets(targets: list[tuple[str, str]], config: RetentionConfig, stop: threading.Event) -> None:
    """:func:`loop` over the targets of a pool (worker/multi.py), one after another, holding no
    connection between passes; a target that fails is tried again at the next pass."""
    from tidegate.worker.db import make_engine

    while not stop.wait(config.interval_seconds):
        for name, url in targets:
            if stop.is_set():
                return
            engine = make_engine(url, application_name="tidegate-maintenance", pool_size=1, max_overflow=0,
                                 connect_timeout=5)
            try:
                pruned = run_once(engine, config)
                if pruned.queue_jobs or pruned.etl_errors:
                    log.info("maintenance: target %s: deleted %d finished queue job(s) and %d old etl_errors"
                             " row(s)", name, pruned.queue_jobs, pruned.etl_errors)
            except Exception as err:  # the next pass tries again
                log.warning("maintenance: target %s: pass failed: %s", name, err)
            finally:
                engine.dispose()
