"""A job is the unit of failure: whatever a job does costs that job, never a worker, and a row is
never filed as a bad item for the database's fault (issue: fault isolation).

Every test here runs a real pool next to ordinary work and compares the ordinary work's data with
what a clean run writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.conftest import enqueue_items, job_row, run_cli, scalar, wait_for
from tests.fixtures import LOG_HANDLER, log_report, make_items, slow_handler

pytestmark = pytest.mark.slow

ITEMS = {"source": "items", "key": "k", "from": "1", "to": "1000000000", "batch_size": 50, "owner": "qa"}
FAST = ("--retry-backoff", "0.05", "--pause-after-failures", "3", "--poll", "0.2")


def _insert(engine, job_type: str, payload: str, max_attempts: int = 2) -> str:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        return str(conn.execute(text(
            "INSERT INTO queue_jobs (type, payload, max_attempts) VALUES (:t, CAST(:p AS jsonb), :m) RETURNING id"),
            {"t": job_type, "p": payload, "m": max_attempts}).scalar_one())


def _queue_row(engine, job_id: str):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(text("SELECT status, attempts, last_error FROM queue_jobs WHERE id = :i"),
                            {"i": job_id}).one()


def _deaths(log: str) -> int:
    return log.count(" died (")


# (case, job type, payload as JSON text, the queue row's last_error must contain)
POISON = [
    ("integer-of-5000-digits", "backfill_range", '{"batch_size": ' + "9" * 5000 + "}", "cannot be read"),
    ("nested-5000-deep", "backfill_range", '{"where": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
    ("huge-int-one-shot", "stamp", '{"n": ' + "7" * 5000 + "}", "cannot be read"),
    ("one-shot-calls-sys-exit", "quit", '{"code": 3}', "SystemExit: 3"),
    ("handler-raises-systemexit", "backfill_range", json.dumps({**ITEMS, "handler": "tests.handlers:exits"}),
     "SystemExit"),
    ("handler-raises-keyboardinterrupt", "backfill_range",
     json.dumps({**ITEMS, "handler": "tests.handlers:interrupts"}), "KeyboardInterrupt"),
    ("transform-raises-systemexit", "backfill_range",
     json.dumps({**ITEMS, "handler": "tests.handlers:exits_in_transform"}), "transform gave up"),
]


def test_poison_jobs_fail_alone_and_no_worker_dies(engine, db_url, tmp_path, pools):
    make_items(engine, 400)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE stamps (n int NOT NULL)"))
        conn.execute(text("INSERT INTO queue_jobs (type, payload) SELECT 'stamp', jsonb_build_object('n', g)"
                          " FROM generate_series(1, 100) g"))
    poison = {case: _insert(engine, kind, payload) for case, kind, payload, _ in POISON}
    ordinary = enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=40, concurrency=2)
    pool = pools("--concurrency", "2", "--drain", *FAST, env={"TIDEGATE_PLUGINS": "tests.kinds"})
    assert pool.wait(180) == 0
    log = pool.output()
    assert _deaths(log) == 0, log[-3000:]
    assert job_row(engine, ordinary).status == "done"
    assert log_report(engine) == {"logged": 400, "distinct_keys": 400, "items": 400, "missing": 0}
    assert scalar(engine, "SELECT count(DISTINCT n) FROM stamps") == scalar(engine, "SELECT count(*) FROM stamps") == 100
    for case, _, _, words in POISON:
        row = _queue_row(engine, poison[case])
        assert row.status == "failed", (case, row)
        assert words in row.last_error, (case, row.last_error)
        assert len(row.last_error) < 1200, case  # the 5,000 digits are not echoed back
        assert row.attempts <= 2, (case, row)  # counted, within max_attempts


def test_a_planned_jobs_queue_row_set_back_to_pending_is_not_planned_twice(engine, db_url, tmp_path, pools):
    """An operator's `UPDATE queue_jobs SET status = 'pending'` on a planned job (a UniqueViolation in
    the planner that crash-looped every worker): the job goes on from its checkpoint, nothing doubled."""
    make_items(engine, 300)
    # 60 batches of 0.2 s: the job must still run when the `pause` below (a CLI process, slow on a busy
    # machine) arrives; with 15 it was sometimes done first
    job = enqueue_items(db_url, tmp_path, slow_handler(0.2), batch_size=5)
    pool = pools("--concurrency", "2", *FAST)
    wait_for(lambda: job_row(engine, job).processed_count > 0, what="the job planned and running")
    run_cli(db_url, "pause", job)
    with engine.begin() as conn:
        # the state guard may refuse this move today: replica mode skips triggers, as a restore would
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("UPDATE queue_jobs SET status = 'pending' WHERE id = :i"), {"i": job})
    wait_for(lambda: _queue_row(engine, job).status == "running", what="the queue row set back to running")
    run_cli(db_url, "resume", job)
    wait_for(lambda: job_row(engine, job).status == "done", what="the job done")
    assert pool.terminate() == 0
    assert _deaths(pool.output()) == 0
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE job_id = :j", j=job) == 1
    assert log_report(engine) == {"logged": 300, "distinct_keys": 300, "items": 300, "missing": 0}


# -- database errors are never item errors -------------------------------------------------------------

STYLES = {
    "sql": "INSERT INTO processed_log (k) SELECT k FROM items,"
           " LATERAL (SELECT CASE WHEN k % 50 = 0 THEN pg_sleep(0.3) END) d WHERE k > :lo AND k <= :hi",
    "item-handler": "tests.handlers:log_slowly_at_50s",
    "per-row": "tests.handlers:record_slowly_at_50s",
}


def _enqueue(url: str, tmp_path: Path, style: str, handler: str, batch_size: int = 20) -> str:
    """A backfill over items(k): ``handler`` is a SQL statement for the "sql" style, else a handler name."""
    if style == "sql":
        return enqueue_items(url, tmp_path, handler, batch_size=batch_size)
    return run_cli(url, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to",
                   "1000000000", "--handler", handler, "--batch-size", str(batch_size), "--owner", "qa").stdout.strip()


@pytest.fixture
def timeout_role(engine, db_url):  # type: ignore[no-untyped-def]
    """A login whose statements time out after 100 ms in this database (ALTER ROLE ... SET): what an
    SRE sets on the worker's role."""
    role = f"tg_to_{uuid.uuid4().hex[:8]}"
    dbname = make_url(db_url).database
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN SUPERUSER'))
        conn.execute(text(f'ALTER ROLE "{role}" IN DATABASE "{dbname}" SET statement_timeout = \'100ms\''))
    yield role, make_url(db_url).set(username=role, password=None).render_as_string(hide_password=False)
    with engine.begin() as conn:
        conn.execute(text(f'ALTER ROLE "{role}" IN DATABASE "{dbname}" RESET ALL'))
    with engine.begin() as conn:
        conn.execute(text(f'DROP ROLE "{role}"'))


@pytest.mark.parametrize("style", list(STYLES))
def test_a_role_statement_timeout_pauses_the_job_and_loses_no_row(engine, db_url, tmp_path, pools, timeout_role,
                                                                   style):
    role, url = timeout_role
    make_items(engine, 200)
    job = _enqueue(db_url, tmp_path, style, STYLES[style])
    pool = pools("--concurrency", "1", "--drain", *FAST, url=url)
    assert pool.wait(180) == 0
    row = job_row(engine, job)
    assert row.status == "paused", (row.status, row.status_reason, pool.output()[-2000:])
    assert "in the database" in row.status_reason and "canceling statement" in row.status_reason
    # the batch holding key 50 never committed: everything before it is written once, nothing after it
    # is, and no row is a "bad item"
    assert scalar(engine, "SELECT count(*) FROM etl_errors") == 0
    logged = scalar(engine, "SELECT count(*) FROM processed_log")
    assert logged == scalar(engine, "SELECT count(DISTINCT k) FROM processed_log") == row.processed_count
    assert 0 < logged < 50 and scalar(engine, "SELECT max(k) FROM processed_log") == logged
    # the SRE lifts the timeout and resumes: the run ends as a clean run does
    dbname = make_url(db_url).database
    with engine.begin() as conn:
        conn.execute(text(f'ALTER ROLE "{role}" IN DATABASE "{dbname}" RESET statement_timeout'))
    run_cli(db_url, "resume", job)
    assert pools("--concurrency", "1", "--drain", *FAST, url=url).wait(180) == 0
    assert job_row(engine, job).status == "done"
    assert log_report(engine) == {"logged": 200, "distinct_keys": 200, "items": 200, "missing": 0}
    assert scalar(engine, "SELECT count(*) FROM etl_errors") == 0


def test_a_step_past_the_time_box_is_split_then_paused_never_filed_as_bad_items(engine, db_url, tmp_path, pools):
    """An adaptive target of 0.25 s and a per-row handler step of 1.5 s (all 6 rows were filed as bad
    items and the job ended done): the step hits the box's statement timeout, the batch splits down
    to one row (if it asked for more), then counts failed attempts and pauses; with a larger target the
    run ends as a clean run does."""
    make_items(engine, 6)
    job = run_cli(db_url, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to",
                  "100", "--handler", "tests.handlers:sleep_in_database", "--batch-size", "6",
                  "--target-batch-seconds", "0.25", "--owner", "qa").stdout.strip()
    pool = pools("--concurrency", "1", "--drain", *FAST)
    assert pool.wait(180) == 0
    row = job_row(engine, job)
    assert row.status == "paused", (row.status, row.status_reason)
    assert "canceling statement due to statement timeout" in row.status_reason
    assert "batch failed (attempt 2/3" in pool.output()  # counted as the database's fault, then paused
    assert scalar(engine, "SELECT count(*) FROM etl_errors") == 0
    assert scalar(engine, "SELECT count(*) FROM processed_log") == row.processed_count == 0
    run_cli(db_url, "set", job, "--target-batch-seconds", "10")
    run_cli(db_url, "resume", job)
    assert pools("--concurrency", "1", "--drain", *FAST).wait(180) == 0
    assert job_row(engine, job).status == "done"
    assert log_report(engine) == {"logged": 6, "distinct_keys": 6, "items": 6, "missing": 0}


# -- a tablespace that really fills ----------------------------------------------------------------------


def _local_data_directory(engine) -> Path | None:  # type: ignore[no-untyped-def]
    try:
        found = Path(str(scalar(engine, "SHOW data_directory")))
    except Exception:  # noqa: BLE001 - not a superuser, or not a server we can see
        return None
    return found if found.is_dir() else None


@pytest.fixture
def small_tablespace(engine):  # type: ignore[no-untyped-def]
    """A tablespace on a 1 MB tmpfs: the target table's disk really fills (DiskFull, SQLSTATE 53100).

    The mount point is a directory of its own under /tmp, not under pytest's tmp_path: the server's
    user must be able to reach it for as long as the tablespace exists (pytest keeps its own tree
    private), or the server cannot even recover. Torn down in order: table, tablespace, mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs for a full tablespace needs root (and mount); run as root to include it")
    data = _local_data_directory(engine)
    if data is None:
        pytest.skip("the test server's data directory is not on this machine: cannot give it a tmpfs tablespace")
    where = Path(tempfile.mkdtemp(prefix="tidegate-full-", dir="/tmp"))
    where.chmod(0o755)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    stat = data.stat()
    os.chown(where, stat.st_uid, stat.st_gid)
    name = f"tg_full_{uuid.uuid4().hex[:8]}"
    try:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text(f"CREATE TABLESPACE {name} LOCATION '{where}'"))
        yield name
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS processed_log"))
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(f"DROP TABLESPACE IF EXISTS {name}"))
        subprocess.run(["umount", str(where)], check=False)
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("style", ["sql", "item-handler", "per-row"])
def test_a_full_tablespace_pauses_the_job_and_loses_no_row(engine, db_url, tmp_path, pools, small_tablespace,
                                                            style):
    tablespace = small_tablespace
    rows = 30_000  # ~1 MB of processed_log rows and more: the 1 MB tmpfs fills partway
    make_items(engine, rows)
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE processed_log SET TABLESPACE {tablespace}"))
    handler = {"sql": LOG_HANDLER, "item-handler": "tests.handlers:log_all",
               "per-row": "tests.handlers:record_all"}[style]
    job = _enqueue(db_url, tmp_path, style, handler, batch_size=2000)
    pool = pools("--concurrency", "2", "--drain", *FAST)
    assert pool.wait(300) == 0
    row = job_row(engine, job)
    assert row.status == "paused", (row.status, row.status_reason, pool.output()[-2000:])
    assert "DiskFull" in row.status_reason or "could not extend" in row.status_reason
    assert scalar(engine, "SELECT count(*) FROM etl_errors") == 0
    logged = scalar(engine, "SELECT count(*) FROM processed_log")
    assert logged == row.processed_count < rows  # what was counted was written, nothing more
    assert _deaths(pool.output()) == 0
    with engine.begin() as conn:  # the SRE's fix: the table moves to a tablespace with room
        conn.execute(text("ALTER TABLE processed_log SET TABLESPACE pg_default"))
    run_cli(db_url, "resume", job)
    assert pools("--concurrency", "2", "--drain", *FAST).wait(300) == 0
    assert job_row(engine, job).status == "done"
    assert log_report(engine) == {"logged": rows, "distinct_keys": rows, "items": rows, "missing": 0}
    assert scalar(engine, "SELECT count(*) FROM etl_errors") == 0


def test_a_per_row_step_past_the_time_box_splits_and_retries_as_a_sql_step_does(engine, db_url, pools):
    """The statement timeout of an adaptive step raised inside a per-row handler's savepoint was filed as
    a bad item; now the batch rolls back and the next one asks for a quarter of the rows, as for SQL."""
    make_items(engine, 60)
    # a first estimate of 400 rows: the first step takes 400/12 = 33 of them, and its fifth row's statement
    # runs past the box's 1 s timeout
    job = run_cli(db_url, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to",
                  "1000", "--handler", "tests.handlers:record_slower_each_row_of_the_batch", "--batch-size", "400",
                  "--target-batch-seconds", "0.25", "--owner", "qa").stdout.strip()
    pool = pools("--concurrency", "1", "--drain", *FAST)
    assert pool.wait(300) == 0
    assert job_row(engine, job).status == "done"
    assert "batch timed out; retrying with an estimate of" in pool.output()  # it split
    assert scalar(engine, "SELECT count(*) FROM etl_errors") == 0
    assert log_report(engine) == {"logged": 60, "distinct_keys": 60, "items": 60, "missing": 0}


def test_a_role_statement_timeout_too_short_for_a_command_is_named_not_called_an_outage(engine, db_url, tmp_path,
                                                                                          timeout_role):
    """The login's statement_timeout is 1 ms and another session holds queue_jobs locked, so every command's
    statements on it wait past the timeout (and on a loaded server the ones SQLAlchemy runs as the
    connection opens may time out first). Either way the command says that the login's statement_timeout
    is too short, never "database unavailable" (the server is there), and queues nothing."""
    role, url = timeout_role
    make_items(engine, 10)
    handler = tmp_path / "log.sql"
    handler.write_text(LOG_HANDLER)
    enqueue = ("enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to", "11",
               "--handler", f"sql:{handler}", "--owner", "qa")
    with engine.begin() as conn:
        conn.execute(text(f'ALTER ROLE "{role}" IN DATABASE "{make_url(db_url).database}" SET statement_timeout = \'1ms\''))
    with engine.connect() as holder:
        holder.execute(text("LOCK TABLE queue_jobs IN ACCESS EXCLUSIVE MODE"))
        for args in (("status",), enqueue, ("status",), enqueue):
            out = run_cli(url, *args, check=False)
            assert out.returncode in (1, 5), (args, out.stdout, out.stderr)
            assert "database unavailable" not in out.stderr, out.stderr
            assert "statement_timeout" in out.stderr and "too short" in out.stderr, out.stderr
        holder.rollback()
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 0
