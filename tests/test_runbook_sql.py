"""The backfill runbook's SQL, verbatim, against tidegate's schema and workers."""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import run_cli, scalar
from tests.fixtures import seed_demo, troops_checksum

RUNBOOK_INSERT = """
INSERT INTO queue_jobs (id, type, payload, priority, attempts, max_attempts, status, run_after, created_at, updated_at)
VALUES (gen_random_uuid(),
        'backfill_range',
        jsonb_build_object(
                'from_created_at', '2024-01-01T00:00:00Z',
                'to_created_at', '2024-06-01T00:00:00Z',
                'batch_size', 250,
                'owner', 'data-team'
        )::jsonb,
        0,
        0,
        5,
        'pending',
        now(),
        now(),
        now());
"""

RUNBOOK_PROGRESS = """
SELECT job_id, status, processed_count, error_count, started_at, finished_at
FROM backfill_jobs
ORDER BY started_at DESC LIMIT 50;
"""

RUNBOOK_ERRORS = """
SELECT error_type, COUNT(*)
FROM etl_errors
WHERE created_at >= now() - interval '24 hours'
GROUP BY error_type
ORDER BY COUNT DESC;
"""

RUNBOOK_PAUSE = """
UPDATE backfill_jobs
SET status = 'paused'
WHERE status = 'pending';
"""

RUNBOOK_RESUME = """
UPDATE backfill_jobs
SET status = 'running'
WHERE job_id = '<job_id>'
  AND status = 'paused';
"""


def test_runbook_insert_is_processed_with_the_default_handler(engine, db_url):
    seed_demo(engine, 3000)
    with engine.begin() as conn:
        conn.execute(text(RUNBOOK_INSERT))
    run_cli(db_url, "worker", "--concurrency", "2", "--drain")

    with engine.connect() as conn:
        progress = conn.execute(text(RUNBOOK_PROGRESS)).all()
        errors = dict(conn.execute(text(RUNBOOK_ERRORS)).all())
    assert len(progress) == 1
    job = progress[0]
    assert job.status == "done"
    in_range = scalar(engine, "SELECT count(*) FROM hero_snapshots WHERE created_at >= '2024-01-01Z'"
                              " AND created_at < '2024-06-01Z'")
    assert job.processed_count == in_range == 3000
    malformed = scalar(engine, "SELECT count(*) FROM hero_snapshots WHERE jsonb_typeof(raw->'ProfileData'->'Troops')"
                               " IS DISTINCT FROM 'array' OR raw->'ProfileData'->'Troops' @> '[{\"Level\": \"max\"}]'")
    assert job.error_count == malformed > 0
    assert errors == {"PARSE_ERROR": malformed}
    assert scalar(engine, "SELECT status FROM queue_jobs") == "done"
    assert troops_checksum(engine)[0] > 0


def test_runbook_pause_of_pending_jobs_and_resume_by_job_id(engine, db_url):
    seed_demo(engine, 2000)
    with engine.begin() as conn:
        conn.execute(text(RUNBOOK_INSERT))
    # plan it without running batches: a pool with no slice capacity is not a thing, so plan by hand
    from tidegate.worker import kinds, store

    with engine.begin() as conn:
        job = store.claim_queue_job(conn, ["default"], [], [])
        store.store_plan(conn, job.id, job.type, kinds.kinds()["backfill_range"].plan(conn, job.payload()))
    assert scalar(engine, "SELECT status FROM backfill_jobs") == "pending"

    with engine.begin() as conn:
        assert conn.execute(text(RUNBOOK_PAUSE)).rowcount == 1
    run_cli(db_url, "worker", "--drain")  # a paused job is not work: the pool drains at once
    assert scalar(engine, "SELECT processed_count FROM backfill_jobs") == 0
    assert scalar(engine, "SELECT status FROM backfill_jobs") == "paused"

    with engine.begin() as conn:
        assert conn.execute(text(RUNBOOK_RESUME.replace("<job_id>", job.id))).rowcount == 1
    run_cli(db_url, "worker", "--drain")
    assert scalar(engine, "SELECT status FROM backfill_jobs") == "done"
    assert scalar(engine, "SELECT processed_count FROM backfill_jobs") == 2000
