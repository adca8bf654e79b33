"""examples/expire_sessions.py: a job kind written against the public SDK only, run by the real pool.

It proves the SDK's promises: a kind says how to read the next keys and how to process a bounded range,
the runtime owns the cursor, the checkpoints and the slices (a kill storm ends exact), and the kind's
typed payload refuses bad input inserted by SQL with a clear error."""

from __future__ import annotations

import ast
import json
import random

import pytest
from sqlalchemy import text

from tests.conftest import ROOT, job_row, kill_storm, parse_python, run_cli, scalar, wait_for

PLUGIN = {"TIDEGATE_PLUGINS": "examples.expire_sessions"}
ROWS = 6000


def _sessions(engine) -> None:  # type: ignore[no-untyped-def]
    """ROWS sessions; every third one still live (expires in 2030), the rest expired in 2025."""
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS sessions"))
        conn.execute(text("CREATE TABLE sessions (id bigint PRIMARY KEY, expires_at timestamptz NOT NULL)"))
        conn.execute(text("INSERT INTO sessions SELECT i, CASE WHEN i % 3 = 0 THEN timestamptz '2030-01-01'"
                          " ELSE timestamptz '2025-01-01' END FROM generate_series(1, :n) i"), {"n": ROWS})


def _enqueue(engine, payload: dict) -> str:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        return str(conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('expire_sessions',"
                                     " CAST(:p AS jsonb)) RETURNING id"), {"p": json.dumps(payload)}).scalar_one())


def test_the_example_imports_only_the_public_api():
    tree = parse_python((ROOT / "examples/expire_sessions.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m for m in imported if m and m.startswith("tidegate")} == {"tidegate"}


@pytest.mark.slow
def test_a_kind_of_ones_own_runs_exact_under_a_kill_storm(engine, db_url, pools):
    _sessions(engine)
    job = _enqueue(engine, {"from": 1, "to": ROWS + 1, "before": "2026-01-01T00:00:00Z", "batch_size": 50,
                            "concurrency": 3, "max_rows_per_second": 4000, "owner": "sre"})
    pool = pools("--concurrency", "3", "--lease", "2", env=PLUGIN)
    kills = kill_storm(pool, engine, job, 4, random.Random(7))
    wait_for(lambda: job_row(engine, job).status == "done", timeout=180, what="the purge done")
    assert kills > 0
    row = job_row(engine, job)
    assert (row.processed_count, row.error_count) == (ROWS, 0)
    # every expired session gone, every live one kept: exactly a clean run's table
    assert scalar(engine, "SELECT count(*) FROM sessions") == ROWS // 3
    assert scalar(engine, "SELECT count(*) FROM sessions WHERE id % 3 <> 0 OR expires_at < now()") == 0
    # the kind planned 3 slices; the runtime may cut more for idle workers, each ending exact
    assert scalar(engine, "SELECT count(*) FROM backfill_slices WHERE job_id = :j", j=job) >= 3


@pytest.mark.parametrize(("payload", "error"), [
    ({"from": 10, "to": 5, "before": "2026-01-01"}, "from (10) must be below to (5)"),
    ({"from": "1; DROP TABLE sessions", "to": 5, "before": "2026-01-01"}, "from must be an integer id"),
    ({"from": 1, "to": 5, "before": "yesterday"}, "before must be an ISO 8601 timestamp"),
    ({"from": 1, "to": 5, "before": "2026-01-01", "batch_size": 0}, "batch_size"),
    ({"from": 1, "to": 5, "before": "2026-01-01", "target_batch_seconds": 1}, "unknown payload field"),
    ({"from": 1, "to": 5, "before": "2026-01-01", "table": "pg_authid"}, "unknown payload field"),
])
def test_bad_payloads_inserted_by_sql_fail_their_job_and_touch_nothing(engine, db_url, payload, error):
    _sessions(engine)
    job = _enqueue(engine, payload)
    run_cli(db_url, "worker", "--concurrency", "1", "--drain", env=PLUGIN)
    status, last_error = engine.connect().execute(
        text("SELECT status, last_error FROM queue_jobs WHERE id = :j"), {"j": job}).one()
    assert status == "failed" and error in last_error, last_error
    assert scalar(engine, "SELECT count(*) FROM sessions") == ROWS
