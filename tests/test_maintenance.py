"""Retention: finished queue jobs and old etl_errors go, in batches; nothing else does."""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import run_cli, scalar
from tidegate.worker.maintenance import DAY, RetentionConfig, run_once


def test_run_once_deletes_exactly_the_old_finished_rows_in_batches(engine, db_url):
    with engine.begin() as conn:
        # 25 old finished jobs (done/failed/cancelled), 5 recent ones, 4 old but still active
        conn.execute(text("""
            INSERT INTO queue_jobs (type, status, finished_at)
            SELECT 'backfill_range', (ARRAY['done', 'failed', 'cancelled'])[1 + g % 3], now() - interval '8 days'
            FROM generate_series(1, 25) g"""))
        conn.execute(text("INSERT INTO queue_jobs (type, status, finished_at) SELECT 'backfill_range', 'done',"
                          " now() - interval '1 day' FROM generate_series(1, 5)"))
        conn.execute(text("INSERT INTO queue_jobs (type, status, created_at) SELECT 'backfill_range', s,"
                          " now() - interval '30 days' FROM unnest(ARRAY['pending', 'running', 'paused', 'pending']) s"))
        job = conn.execute(text("SELECT id FROM queue_jobs WHERE status = 'done' AND finished_at < now() - interval"
                                " '7 days' LIMIT 1")).scalar_one()
        conn.execute(text("INSERT INTO backfill_jobs (job_id, kind, batch_size, status) VALUES (:j, 'backfill_range',"
                          " 10, 'done')"), {"j": job})
        conn.execute(text("INSERT INTO etl_errors (job_id, error_type, message, created_at)"
                          " SELECT gen_random_uuid(), 'X', 'old', now() - interval '31 days' FROM generate_series(1, 12)"))
        conn.execute(text("INSERT INTO etl_errors (job_id, error_type, message) SELECT gen_random_uuid(), 'X', 'new'"
                          " FROM generate_series(1, 3)"))

    pruned = run_once(engine, RetentionConfig(batch=4))  # several batches each
    assert (pruned.queue_jobs, pruned.etl_errors) == (25, 12)
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 9
    assert scalar(engine, "SELECT count(*) FROM queue_jobs WHERE status IN ('pending', 'running', 'paused')") == 4
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE planned") == 0  # checkpoints went with their job
    assert scalar(engine, "SELECT count(*) FROM etl_errors") == 3
    assert run_once(engine, RetentionConfig(batch=4)) == type(pruned)(0, 0)

    out = run_cli(db_url, "maintenance", "run-once", "--retention-jobs", "0.5").stdout
    assert "deleted 5 finished queue job(s)" in out
    assert RetentionConfig().jobs_seconds == 7 * DAY and RetentionConfig().errors_seconds == 30 * DAY
