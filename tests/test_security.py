"""Least privilege (ops/roles.sql) and secrets kept out of output."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from tests.conftest import run_cli, scalar
from tests.event_stores import build
from tests.fixtures import seed_demo
from tidegate.worker.db import make_engine

pytestmark = pytest.mark.slow


def _denied(url: str, sql: str) -> bool:
    eng = make_engine(url)
    try:
        with eng.begin() as conn:
            conn.execute(text(sql))
        return False
    except ProgrammingError as err:
        return "permission denied" in str(err) or "must be owner" in str(err)
    finally:
        eng.dispose()


def test_each_role_can_do_its_part_and_nothing_else(engine, roles):
    seed_demo(engine, 300)
    job = run_cli(roles["enqueue"], "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2025-01-01",
                  "--batch-size", "50", "--owner", "data-team").stdout.strip()
    run_cli(roles["operator"], "pause", job)  # not planned yet: paused in the queue
    run_cli(roles["operator"], "resume", job)
    run_cli(roles["worker"], "worker", "--drain")
    assert scalar(engine, "SELECT status FROM backfill_jobs WHERE job_id = :j", j=job) == "done"
    assert scalar(engine, "SELECT count(*) FROM user_troops") > 0
    run_cli(roles["operator"], "status", job)

    assert _denied(roles["enqueue"], "UPDATE backfill_jobs SET status = 'paused'")
    assert _denied(roles["enqueue"], "DELETE FROM queue_jobs")
    assert _denied(roles["operator"], "INSERT INTO queue_jobs (type) VALUES ('backfill_range')")
    assert _denied(roles["operator"], "SELECT count(*) FROM hero_snapshots")
    assert _denied(roles["operator"], "UPDATE backfill_jobs SET processed_count = 0")
    assert _denied(roles["worker"], "DELETE FROM queue_jobs")
    assert _denied(roles["worker"], "TRUNCATE backfill_jobs")
    assert _denied(roles["worker"], "DROP TABLE etl_errors")
    assert _denied(roles["worker"], "UPDATE tidegate_audit SET actor = 'someone else'")


def test_archive_jobs_and_retention_with_the_roles_ops_ships(engine, db_url, roles):
    build(engine, db_url, "tidegate", 120)
    p = roles["prefix"]
    with engine.begin() as conn:  # the event store's own grants, as ops/roles.sql's comments say
        conn.execute(text(f"GRANT SELECT ON es_streams, es_events TO {p}enqueue"))
        conn.execute(text(f"GRANT SELECT, UPDATE ON es_streams TO {p}worker"))
        conn.execute(text(f"GRANT SELECT, DELETE ON es_events TO {p}worker"))
        conn.execute(text(f"GRANT INSERT ON es_events_archive, es_stream_summaries_archive TO {p}worker"))
        conn.execute(text(f"GRANT SELECT, DELETE ON es_stream_summaries TO {p}worker"))
    selection = ["--layout", "tidegate", "--type", "luck_box_purchase"]
    assert "candidate" in run_cli(roles["enqueue"], "discover", *selection).stdout
    job = run_cli(roles["enqueue"], "enqueue", "archive-range", *selection, "--reason", "r", "--owner", "o",
                  "--apply", "--all", "--yes").stdout.strip()
    run_cli(roles["worker"], "worker", "--drain", "--no-maintenance")
    assert scalar(engine, "SELECT status FROM backfill_jobs WHERE job_id = :j", j=job) == "done", scalar(
        engine, "SELECT last_error FROM backfill_jobs WHERE job_id = :j", j=job)
    moved = scalar(engine, "SELECT count(*) FROM es_events_archive")
    assert moved > 0 and moved == scalar(engine, "SELECT sum(events) FROM archive_audit WHERE job_id = :j", j=job)
    denied = run_cli(roles["operator"], "archive", "report", job, check=False)  # its recount reads the event store
    assert denied.returncode == 6 and "permission denied for table es_streams" in denied.stderr
    assert "Traceback" not in denied.stderr
    with engine.begin() as conn:
        conn.execute(text(f"GRANT SELECT ON es_streams, es_events TO {p}operator"))
    assert "archived" in run_cli(roles["operator"], "archive", "report", job).stdout
    run_cli(roles["operator"], "cancel", job, check=False)  # done: refused, but by the state machine
    assert _denied(roles["enqueue"], "DELETE FROM es_events_archive")
    assert _denied(roles["worker"], "DELETE FROM es_events_archive")  # the move writes the archive, never deletes it

    # retention: the maintenance role prunes finished jobs; the worker role cannot
    with engine.begin() as conn:
        conn.execute(text("UPDATE queue_jobs SET finished_at = now() - interval '30 days'"))
    assert run_cli(roles["worker"], "maintenance", "run-once", check=False).returncode != 0
    run_cli(roles["maintenance"], "maintenance", "run-once")
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 0
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs") == 0  # cascaded
    assert _denied(roles["maintenance"], "UPDATE backfill_jobs SET status = 'paused'")


def test_no_password_in_logs_status_or_errors(engine, db_url, tmp_path):
    secret = "hunter2-" + uuid.uuid4().hex[:6]
    url = make_url(db_url)
    bad = url.set(password=secret, port=1, host="127.0.0.1", query={}).render_as_string(hide_password=False)
    for args in (["status"], ["worker", "--drain"], ["enqueue", "backfill-range", "--from", "1", "--to", "2",
                                                      "--owner", "x"]):
        proc = run_cli(bad, *args, check=False, timeout=60)
        assert proc.returncode != 0
        assert secret not in proc.stdout + proc.stderr, args
    # a working URL with a password: the pool logs it masked
    good = url.set(password=secret).render_as_string(hide_password=False)
    proc = run_cli(good, "--log-level", "INFO", "worker", "--drain", check=False, timeout=60)
    assert secret not in proc.stdout + proc.stderr
    assert "***" in proc.stderr or "pool on" not in proc.stderr
