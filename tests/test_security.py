"""Least privilege (ops/roles.sql) and secrets kept out of output."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from tests.conftest import ROOT, run_cli, scalar
from tests.fixtures import seed_demo
from worker.db import make_engine

pytestmark = pytest.mark.slow


@pytest.fixture
def roles(engine, db_url):  # type: ignore[no-untyped-def]
    """ops/roles.sql applied with cluster-unique role names; yields a URL per role."""
    prefix = f"tg{uuid.uuid4().hex[:6]}_"
    sql = (ROOT / "ops/roles.sql").read_text().replace("tg_", prefix)
    with engine.begin() as conn:
        conn.execute(text(sql))
        for role in ("enqueue", "operator", "worker"):
            conn.execute(text(f"ALTER ROLE {prefix}{role} LOGIN"))
        conn.execute(text(f"GRANT SELECT ON hero_snapshots TO {prefix}enqueue, {prefix}worker"))
        conn.execute(text(f"GRANT SELECT, INSERT, UPDATE ON user_troops TO {prefix}worker"))
    url = make_url(db_url)
    yield {r: url.set(username=f"{prefix}{r}", password=None).render_as_string(hide_password=False)
           for r in ("enqueue", "operator", "worker")}
    with engine.begin() as conn:
        for role in ("enqueue", "operator", "worker"):
            conn.execute(text(f"DROP OWNED BY {prefix}{role}"))
            conn.execute(text(f"DROP ROLE {prefix}{role}"))


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
