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
