"""Every batch has a deadline; poison jobs are quarantined; SIGTERM is bounded (issue 12, points 2 and 4).

Real pools, real handlers that hang, exit, SIGKILL themselves or segfault; real SIGTERM and SIGSTOP.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import signal
import time
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from tests.conftest import enqueue_items, job_row, run_cli, scalar, wait_for
from tests.fixtures import log_report, make_items, slow_handler
from tidegate.worker import deadline
from tidegate.worker.pool import BACKOFF_MAX, backoff
from tidegate.worker.slots import Slots

SLEEPS_IN_SQL = slow_handler(3600)  # a statement the watchdog can cancel


def _python_job(url: str, handler: str, *extra: str, frm: str = "1", to: str = "51", batch_size: int = 10) -> str:
    return run_cli(url, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", frm, "--to", to,
                   "--handler", f"tests.handlers:{handler}", "--batch-size", str(batch_size), "--owner", "tests",
                   *extra).stdout.strip()


def _batch_in_flight(engine, seconds: float = 0.3) -> bool:  # type: ignore[no-untyped-def]
    """A worker's batch transaction has been open a while (it is in the handler, not about to start)."""
    return bool(scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'tidegate-worker%'"
                               " AND datname = current_database() AND xact_start < now() - make_interval(secs => :s)",
                       s=seconds))


def _sleeping_in_sql(engine) -> bool:  # type: ignore[no-untyped-def]
    return bool(scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                               " AND state = 'active' AND query LIKE '%pg_sleep(3600%' AND pid <> pg_backend_pid()"))


def _worker_backends(engine) -> int:  # type: ignore[no-untyped-def]
    return int(scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'tidegate-worker%'"
                              " AND datname = current_database()"))


# -- the parts, directly ----------------------------------------------------------------------


def test_restarts_back_off_from_at_once_doubling_to_a_minute():
    assert [backoff(n) for n in range(1, 10)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert BACKOFF_MAX == 60


def test_the_deadline_is_the_option_else_a_multiple_of_the_target_else_ten_minutes():
    assert deadline.seconds_for(5.0, 2.0) == 5.0
    assert deadline.seconds_for(None, 2.0) == 60.0  # 10 x 2 s, raised to the minimum
    assert deadline.seconds_for(None, 30.0) == 300.0
    assert deadline.seconds_for(None, None) == 600.0


def test_a_slot_says_which_batch_its_worker_was_in_exactly():
    slots = Slots(mp.get_context("spawn"), 2)
    slot = slots.slot(1)
    job = str(uuid.uuid4())
    start = datetime(2026, 12, 2, 8, 41, 51, 123457, tzinfo=UTC)  # microseconds survive: the cancel's guard
    slot.started("host:4242:abcdef")
    assert slots.in_flight(1) is None and slots.worker_id(1) == "host:4242:abcdef"
    slot.enter(job, 7, 31337, start)
    seen = slots.in_flight(1)
    assert seen is not None
    assert (seen.job_id, seen.slice_no, seen.backend_pid, seen.xact_start) == (job, 7, 31337, start)
    assert slots.in_flight(0) is None
    slot.leave()
    assert slots.in_flight(1) is None


# -- deadlines, pause and cancel ---------------------------------------------------------------


def test_a_batch_past_its_deadline_is_cancelled_rolled_back_and_counted_as_a_failed_attempt(engine, db_url,
                                                                                           tmp_path, pools):
    make_items(engine, 100)
    job = enqueue_items(db_url, tmp_path, SLEEPS_IN_SQL, "--max-attempts", "2", batch_size=10, frm="1", to="101")
    pool = pools("--concurrency", "1", "--batch-deadline", "1", "--no-gates")
    pid = pool.wait_workers(1)[0].pid
    wait_for(lambda: job_row(engine, job).status == "failed", timeout=90, what="the job to fail")

    row = job_row(engine, job)
    assert "failed 2 times: BatchDeadlineExceeded: batch ran past its deadline of 1s" in row.status_reason
    assert row.worker_deaths == 0  # cancelled in SQL: the worker was never wedged
    assert scalar(engine, "SELECT count(*) FROM etl_errors") == 0  # an attempt, never an item error
    assert log_report(engine)["logged"] == 0
    assert [w.pid for w in pool.workers()] == [pid]  # the same process all along
    assert pool.terminate() == 0


def test_pause_lets_the_batch_run_to_its_deadline_then_cancels_it_uncounted(engine, db_url, tmp_path, pools):
    make_items(engine, 100)
    job = enqueue_items(db_url, tmp_path, SLEEPS_IN_SQL, batch_size=10, frm="1", to="101")
    pool = pools("--concurrency", "1", "--batch-deadline", "5", "--no-gates")
    pid = pool.wait_workers(1)[0].pid
    wait_for(lambda: _batch_in_flight(engine), what="the batch in flight")
    # the runbook's pause, by SQL: it lands within milliseconds, well before the deadline even on a
    # loaded machine (a CLI process can take seconds to start there, and a pause after the deadline
    # rightly counts the batch as over its time)
    with engine.begin() as conn:
        conn.execute(text("UPDATE backfill_jobs SET status = 'paused', status_reason = 'night' WHERE job_id = :j"),
                     {"j": job})
    wait_for(lambda: scalar(engine, "SELECT count(*) FROM backfill_slices WHERE job_id = :j AND locked_by IS NULL",
                            j=job), timeout=60, what="the slice let go")

    row = job_row(engine, job)
    assert (row.status, row.status_reason, row.last_error, row.worker_deaths) == ("paused", "night", None, 0)
    assert scalar(engine, "SELECT max(attempts) FROM backfill_slices WHERE job_id = :j", j=job) == 0
    assert scalar(engine, "SELECT attempts FROM queue_jobs WHERE id = :j", j=job) == 0
    assert not _sleeping_in_sql(engine)
    assert [w.pid for w in pool.workers()] == [pid]
    assert "its job is paused and the batch ran past its deadline of 5s" in pool.output()
    assert pool.terminate() == 0


@pytest.mark.slow
def test_cancel_stops_a_batch_hung_in_python_long_before_its_deadline_and_the_worker_goes_on(engine, db_url, pools):
    make_items(engine, 1000)
    hung = _python_job(db_url, "hang_forever")
    ordinary = _python_job(db_url, "log_all", frm="1", to="1001", batch_size=100)
    pool = pools("--concurrency", "1", "--batch-deadline", "20", "--lease", "2", "--no-gates")
    wait_for(lambda: _batch_in_flight(engine), what="the hung batch in flight")
    run_cli(db_url, "cancel", hung)
    # one worker, wedged in time.sleep: the other job runs only once the watch has freed it
    wait_for(lambda: job_row(engine, ordinary).status == "done", timeout=60, what="the ordinary job done")

    row = job_row(engine, hung)
    assert (row.status, row.worker_deaths, row.last_error) == ("cancelled", 0, None)
    assert scalar(engine, "SELECT attempts FROM queue_jobs WHERE id = :j", j=hung) == 0
    assert log_report(engine) == {"logged": 1000, "distinct_keys": 1000, "items": 1000, "missing": 0}
    out = pool.output()
    assert "cancelling the batch in flight: its job was cancelled" in out
    assert "a batch wedged it" in out  # the hung process exited and was restarted
    assert pool.terminate() == 0


# -- poison jobs ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("handler", ["exit_hard", "sigkill_self", "segfault", "hang_forever"])
def test_a_job_that_kills_or_wedges_its_workers_fails_as_poison_and_the_job_beside_it_finishes(
        engine, db_url, pools, handler):
    make_items(engine, 2000)
    poison = _python_job(db_url, handler)
    ordinary = _python_job(db_url, "log_all", "--concurrency", "2", frm="1", to="2001", batch_size=50)
    pool = pools("--concurrency", "2", "--lease", "2", "--batch-deadline", "1", "--no-gates")
    wait_for(lambda: job_row(engine, poison).status == "failed" and job_row(engine, ordinary).status == "done",
             timeout=180, what="poison failed, ordinary done")

    row = job_row(engine, poison)
    assert row.status_reason == "poison: 3 worker deaths during its batches"
    assert row.worker_deaths == 3
    assert "poison: 3 worker deaths during its batches" in run_cli(db_url, "status").stdout
    # the ordinary job: exactly a clean run's data, nothing lost, nothing doubled, never a death counted
    assert log_report(engine) == {"logged": 2000, "distinct_keys": 2000, "items": 2000, "missing": 0}
    assert job_row(engine, ordinary).worker_deaths == 0
    assert "restarting" in pool.output()
    assert pool.terminate() == 0


# -- SIGTERM is bounded --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("handler", ["hang_forever", "sleeps_in_sql"])
def test_sigterm_abandons_a_batch_that_sleeps_forever_after_the_grace(engine, db_url, tmp_path, pools, handler):
    make_items(engine, 100)
    if handler == "sleeps_in_sql":
        job = enqueue_items(db_url, tmp_path, SLEEPS_IN_SQL, batch_size=10, frm="1", to="101")
    else:
        job = _python_job(db_url, handler)
    pool = pools("--concurrency", "2", "--stop-grace", "1", "--no-gates")  # the default deadline: 10 minutes
    wait_for(lambda: _batch_in_flight(engine), what="the batch in flight")
    assert pool.terminate(timeout=60) == 0

    row = job_row(engine, job)
    assert (row.status, row.worker_deaths, row.last_error) == ("running", 0, None)  # stopped, not failed
    assert scalar(engine, "SELECT max(attempts) FROM backfill_slices WHERE job_id = :j", j=job) == 0
    assert scalar(engine, "SELECT count(*) FROM tidegate_workers") == 0
    assert _worker_backends(engine) == 0  # no backend left holding the slice's row lock
    assert "outlived the stop grace of 1s" in pool.output()


@pytest.mark.slow
def test_sigterm_right_after_a_kill_storm_stops_the_pool(engine, db_url, tmp_path, pools):
    """A restart under way when SIGTERM lands must still get it (the pool once waited for that worker forever)."""
    make_items(engine, 20_000)
    enqueue_items(db_url, tmp_path, slow_handler(0.05), batch_size=20, concurrency=3, frm="1", to="20001")
    pool = pools("--concurrency", "3", "--lease", "2", "--no-gates")
    rng = random.Random(12)
    for _ in range(3):
        pool.wait_workers(3)
        for _ in range(4):
            time.sleep(rng.uniform(0.2, 0.5))
            workers = pool.workers()
            if workers:
                rng.choice(workers).send_signal(signal.SIGKILL)
    assert pool.terminate(timeout=60) == 0
    assert scalar(engine, "SELECT count(*) FROM tidegate_workers") == 0
    report = log_report(engine)
    assert report["logged"] == report["distinct_keys"]  # whatever committed, committed once


@pytest.mark.slow
def test_a_worker_that_cannot_stop_is_killed_after_the_grace_and_a_margin(engine, db_url, tmp_path, pools):
    make_items(engine, 100)
    enqueue_items(db_url, tmp_path, slow_handler(0.05), batch_size=10, frm="1", to="101")
    pool = pools("--concurrency", "2", "--stop-grace", "0", "--no-gates")
    stuck = pool.wait_workers(2)[0]
    stuck.send_signal(signal.SIGSTOP)  # hears nothing, does nothing
    assert pool.terminate(timeout=60) == 1  # not a clean stop: say so
    assert "still running" in pool.output() and "killing it" in pool.output()
    wait_for(lambda: not stuck.is_running() or stuck.status() == "zombie", what="the stuck worker gone")
