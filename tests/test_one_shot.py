"""Kinds that need no slices run in handfuls per transaction, through the same queue."""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import run_cli, scalar


def test_one_shot_jobs_run_once_and_failures_retry_then_fail(engine, db_url):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE stamps (n int NOT NULL)"))
        conn.execute(text("INSERT INTO queue_jobs (type, payload) SELECT 'stamp', jsonb_build_object('n', g)"
                          " FROM generate_series(1, 500) g"))
        conn.execute(text("INSERT INTO queue_jobs (type, payload, max_attempts) VALUES ('stamp', '{\"n\": -1}', 1)"))
    run_cli(db_url, "worker", "--concurrency", "2", "--drain", env={"TIDEGATE_PLUGINS": "tests.kinds"})
    assert scalar(engine, "SELECT count(*) FROM stamps") == 500  # the failed one rolled back alone
    assert scalar(engine, "SELECT count(DISTINCT n) FROM stamps") == 500
    assert scalar(engine, "SELECT count(*) FROM queue_jobs WHERE status = 'done' AND type = 'stamp'") == 500
    failed = scalar(engine, "SELECT last_error FROM queue_jobs WHERE status = 'failed'")
    assert "negative stamp -1" in failed
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs") == 0


def test_a_failing_job_rolls_its_handful_back_whole_and_only_it_is_retried(engine, db_url):
    from tests.kinds import Stamp
    from tidegate.worker import kinds
    from tidegate.worker.runner import Worker, WorkerConfig

    kinds.register(Stamp())
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE stamps (n int NOT NULL)"))
        conn.execute(text("INSERT INTO queue_jobs (type, payload) SELECT 'stamp', jsonb_build_object('n', g)"
                          " FROM generate_series(1, 120) g"))
        conn.execute(text("INSERT INTO queue_jobs (type, payload, max_attempts) VALUES"
                          " ('stamp', '{\"n\": -1}', 3), ('stamp', '{\"n\": -2}', 1)"))
    worker = Worker(WorkerConfig(url=db_url, types=["stamp"], claim_batch=50, backoff_base=0.0, backoff_max=0.0))
    handfuls = 0
    try:
        while worker.run_one_shots():  # in process, so the test sees each handful; backoff 0: retries at once
            handfuls += 1
            assert handfuls < 50
    finally:
        worker.engine.dispose()
    with engine.connect() as conn:
        by_status = dict(conn.execute(text("SELECT status, count(*) FROM queue_jobs GROUP BY 1")).all())
        failed = dict(conn.execute(text("SELECT payload->>'n', attempts FROM queue_jobs WHERE status = 'failed'")).all())
    assert by_status == {"done": 120, "failed": 2}
    assert failed == {"-1": 3, "-2": 1}  # every attempt counted once: the rolled-back handfuls counted none
    assert scalar(engine, "SELECT count(*) FROM stamps") == scalar(engine, "SELECT count(DISTINCT n) FROM stamps") == 120
    assert scalar(engine, "SELECT max(attempts) FROM queue_jobs WHERE status = 'done'") == 1
