"""SRE controls: pause, resume, cancel, retry — by the runbook's SQL and by the CLI."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from tests.conftest import Pool, enqueue_items, job_row, run_cli, scalar, wait_for
from tests.fixtures import LOG_HANDLER, log_report, make_items, slow_handler

pytestmark = pytest.mark.slow


def _idle(engine, job):  # type: ignore[no-untyped-def]
    return scalar(engine, "SELECT count(*) FROM backfill_slices WHERE job_id = :j AND locked_by IS NOT NULL",
                  j=job) == 0


def test_pause_by_sql_mid_run_stops_batches_and_resume_by_sql_finishes(engine, db_url, tmp_path, pools):
    make_items(engine, 3000)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.05), batch_size=20, concurrency=2)
    pool = pools("--concurrency", "2", "--lease", "3")
    wait_for(lambda: job_row(engine, job).processed_count >= 100, what="progress")

    with engine.begin() as conn:
        conn.execute(text("UPDATE backfill_jobs SET status = 'paused' WHERE job_id = :j"), {"j": job})
    wait_for(lambda: _idle(engine, job), what="workers to let go of the paused job")
    held = job_row(engine, job).processed_count
    time.sleep(2.5)  # several poll intervals: nothing may move while paused
    assert job_row(engine, job).processed_count == held == log_report(engine)["logged"]
    assert held < 3000

    with engine.begin() as conn:  # the runbook's resume, verbatim
        conn.execute(text(f"UPDATE backfill_jobs SET status = 'running' WHERE job_id = '{job}' AND status = 'paused';"))
    wait_for(lambda: job_row(engine, job).status == "done", timeout=120, what="done after resume")
    assert pool.terminate() == 0
    assert log_report(engine) == {"logged": 3000, "distinct_keys": 3000, "items": 3000, "missing": 0}


def test_cli_pause_resume_cancel_and_retry(engine, db_url, tmp_path, pools):
    make_items(engine, 2000)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.05), batch_size=20)
    pools("--concurrency", "1")
    wait_for(lambda: job_row(engine, job).processed_count > 0, what="progress")

    assert run_cli(db_url, "pause", job[:8], "--reason", "db cpu high", "--by", "sre-alice").stdout == f"{job} paused\n"
    row = job_row(engine, job)
    assert (row.status, row.status_reason, row.status_by) == ("paused", "db cpu high", "sre-alice")
    wait_for(lambda: _idle(engine, job), what="release")
    assert "paused" in run_cli(db_url, "status", job).stdout

    again = run_cli(db_url, "pause", job, check=False)
    assert again.returncode == 4 and "it is paused" in again.stderr

    assert run_cli(db_url, "resume", job).stdout == f"{job} resumed\n"
    wait_for(lambda: job_row(engine, job).processed_count > row.processed_count, what="progress after resume")

    assert run_cli(db_url, "cancel", job, "--reason", "wrong range").stdout == f"{job} cancelled\n"
    wait_for(lambda: _idle(engine, job), what="release after cancel")
    cancelled_at = job_row(engine, job).processed_count
    assert scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=job) == "cancelled"
    time.sleep(2)
    assert job_row(engine, job).processed_count == cancelled_at

    run_cli(db_url, "retry", job)
    wait_for(lambda: job_row(engine, job).status == "done", timeout=120, what="done after retry")
    assert log_report(engine) == {"logged": 2000, "distinct_keys": 2000, "items": 2000, "missing": 0}
    actions = [r[0] for r in engine.connect().execute(
        text("SELECT action FROM tidegate_audit WHERE job_id = :j ORDER BY id"), {"j": job})]
    assert actions == ["enqueue", "plan", "pause", "resume", "cancel", "retry"]


def test_pause_all_covers_running_and_queued_jobs_and_pools_keep_to_their_queue(engine, db_url, tmp_path, pools):
    make_items(engine, 2000)
    running = enqueue_items(db_url, tmp_path, slow_handler(0.2), batch_size=20, frm="1", to="1001")
    queued = enqueue_items(db_url, tmp_path, LOG_HANDLER, "--queue", "later", frm="1001", to="2001")
    pools("--concurrency", "1", "--poll", "0.1")  # the default queue only
    wait_for(lambda: job_row(engine, running).processed_count > 0, what="a first batch")
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE job_id = :j AND planned", j=queued) == 0

    assert "paused 2 job(s)" in run_cli(db_url, "pause", "--all").stdout
    assert job_row(engine, running).status == "paused"
    assert scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=queued) == "paused"
    wait_for(lambda: _idle(engine, running), what="the paused job's slice let go")
    stopped_at = job_row(engine, running).processed_count
    run_cli(db_url, "worker", "--queue", "later", "--drain")  # a pool of that queue: nothing it may take
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE job_id = :j AND planned", j=queued) == 0
    assert job_row(engine, running).processed_count == stopped_at < 1000

    run_cli(db_url, "resume", queued)
    run_cli(db_url, "worker", "--queue", "later", "--drain")
    assert job_row(engine, queued).status == "done"
    assert job_row(engine, running).processed_count == stopped_at  # the other queue's job stayed paused
    run_cli(db_url, "resume", running)
    wait_for(lambda: job_row(engine, running).status == "done", what="done after resume")
    assert log_report(engine) == {"logged": 2000, "distinct_keys": 2000, "items": 2000, "missing": 0}


def test_priority_orders_the_claims_and_run_after_holds_a_job_back(engine, db_url, tmp_path):
    make_items(engine, 300)
    low = enqueue_items(db_url, tmp_path, LOG_HANDLER, "--priority", "0", frm="1", to="101")
    high = enqueue_items(db_url, tmp_path, LOG_HANDLER, "--priority", "5", frm="101", to="201")
    later = enqueue_items(db_url, tmp_path, LOG_HANDLER, "--run-after", "2099-01-01T00:00:00+00:00", frm="201",
                          to="301")
    run_cli(db_url, "worker", "--types", "archive_range", "--drain")  # a pool for another kind takes none
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE planned") == 0
    run_cli(db_url, "worker", "--concurrency", "1", "--drain")
    assert job_row(engine, low).status == job_row(engine, high).status == "done"
    assert job_row(engine, high).started_at < job_row(engine, low).started_at  # planned first
    assert scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=later) == "pending"
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE job_id = :j AND planned", j=later) == 0
    assert log_report(engine)["missing"] == 100  # keys 201..300: the job held back until 2099


FLAKY = ("INSERT INTO processed_log (k) SELECT k / (SELECT count(*) FROM healthy)::int"
         " FROM items, (SELECT pg_sleep(0.2)) slow WHERE k > :lo AND k <= :hi")


def test_failed_batches_retry_with_backoff_then_fail_the_job_and_retry_resumes(engine, db_url, tmp_path):
    make_items(engine, 1000)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE healthy (ok int)"))
        conn.execute(text("INSERT INTO healthy VALUES (1)"))
    job = enqueue_items(db_url, tmp_path, FLAKY, "--max-attempts", "2", batch_size=50)
    pool = Pool(db_url, "--concurrency", "1", "--lease", "3", log=tmp_path / "pool.log")
    try:
        wait_for(lambda: job_row(engine, job).processed_count >= 50, what="a first good batch")
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM healthy"))  # every batch now divides by zero
        wait_for(lambda: job_row(engine, job).status == "failed", timeout=60, what="job to fail")
    finally:
        pool.terminate()
    row = job_row(engine, job)
    assert "division by zero" in row.last_error and "failed 2 times" in row.status_reason
    assert scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=job) == "failed"
    assert "retrying in" in (tmp_path / "pool.log").read_text()
    done_before = row.processed_count

    with engine.begin() as conn:
        conn.execute(text("INSERT INTO healthy VALUES (1)"))
    run_cli(db_url, "retry", job)
    run_cli(db_url, "worker", "--drain")
    row = job_row(engine, job)
    assert row.status == "done" and row.processed_count == 1000 and done_before < 1000
    assert log_report(engine) == {"logged": 1000, "distinct_keys": 1000, "items": 1000, "missing": 0}
