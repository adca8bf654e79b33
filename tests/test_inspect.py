"""Dry run (strictly read-only, proven with a role that cannot write) and `tidegate verify`."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.conftest import job_row, run_cli, scalar
from tests.fixtures import seed_demo

RANGE = ("--from", "2024-01-01T00:00:00Z", "--to", "2025-01-01T00:00:00Z")
STATE = ("SELECT (SELECT count(*) FROM queue_jobs), (SELECT count(*) FROM backfill_jobs),"
         " (SELECT count(*) FROM tidegate_audit), (SELECT count(*) FROM user_troops),"
         " (SELECT count(*) FROM backfill_slices)")


def _state(engine) -> tuple:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return tuple(conn.execute(text(STATE)).one())


def test_dry_run_as_a_role_that_cannot_write_reports_and_changes_nothing(engine, db_url):
    seed_demo(engine, 3000)
    role = f"tg_ro_{uuid.uuid4().hex[:8]}"
    dbname = make_url(db_url).database
    with engine.begin() as conn:  # the role may connect and read, nothing else
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{dbname}" TO "{role}"'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
        conn.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
    try:
        before = _state(engine)
        as_reader = make_url(db_url).set(username=role).render_as_string(hide_password=False)
        out = run_cli(as_reader, "enqueue", "backfill-range", *RANGE, "--handler", "hero_troops",
                      "--batch-size", "400", "--concurrency", "2", "--owner", "tests", "--dry-run", "--sample", "0",
                      "--json")
        report = json.loads(out.stdout)
        # 2 slices over the data and the empty rest of the range past its last key (one claim, no batch)
        assert (report["rows"], report["batches"], report["slices"]) == (3000, 8, 3)
        assert len(report["sample_keys"]) == 5 and report["sample_keys"][0].startswith("2024-01-01")
        assert report["estimated_seconds"] >= 0 and report["seconds_per_batch_read"] > 0
        assert _state(engine) == before

        # the rehearsal runs the real handler as this role: its write would fail, and the report says why
        out = run_cli(as_reader, "enqueue", "backfill-range", *RANGE, "--handler", "hero_troops",
                      "--batch-size", "400", "--concurrency", "2", "--owner", "tests", "--dry-run", "--json")
        sample = json.loads(out.stdout)["sample"]
        assert sample["rows_read"] == 100 and sample["rows_written"] == 0 and sample["as_role"] == role
        assert sample["failures"][-1]["error_type"] == "batch"
        assert "permission denied for table user_troops" in sample["failures"][-1]["message"]
        assert _state(engine) == before

        # the same role really cannot write: a real enqueue is refused
        refused = run_cli(as_reader, "enqueue", "backfill-range", *RANGE, "--owner", "tests", check=False)
        assert refused.returncode != 0 and "permission denied" in (refused.stderr + refused.stdout).lower()
        assert _state(engine) == before
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))


def test_verify_passes_on_a_correct_run_and_fails_on_tampered_derived_rows(engine, db_url):
    seed_demo(engine, 2000)
    job = run_cli(db_url, "enqueue", "backfill-range", *RANGE, "--handler", "hero_troops", "--batch-size", "300",
                  "--concurrency", "2", "--owner", "tests").stdout.strip()
    run_cli(db_url, "worker", "--drain", "--poll", "0.1")
    assert job_row(engine, job).status == "done"
    good = run_cli(db_url, "verify", job[:8])
    assert good.stdout.count("ok  ") == 3 and "FAIL" not in good.stdout

    with engine.begin() as conn:
        conn.execute(text("UPDATE user_troops SET level = level + 1"))
    bad = run_cli(db_url, "verify", job[:8], "--json", check=False)
    assert bad.returncode == 1
    checks = {c["check"]: c["ok"] for c in json.loads(bad.stdout)["checks"]}
    assert checks == {"source rows vs processed_count": True, "derived keys unique": True, "sample recomputed": False}

    with engine.begin() as conn:
        conn.execute(text("UPDATE user_troops SET level = level - 1"))
        conn.execute(text("UPDATE backfill_jobs SET processed_count = processed_count - 1"))
    assert "FAIL source rows vs processed_count" in run_cli(db_url, "verify", job[:8], check=False).stdout


def test_verify_a_paused_canary_checks_only_what_it_processed(engine, db_url):
    seed_demo(engine, 2000)
    job = run_cli(db_url, "enqueue", "backfill-range", *RANGE, "--handler", "hero_troops", "--batch-size", "100",
                  "--concurrency", "2", "--limit", "300", "--owner", "tests").stdout.strip()
    run_cli(db_url, "worker", "--drain", "--poll", "0.1")
    assert job_row(engine, job).status_reason == "canary limit reached"
    assert scalar(engine, "SELECT processed_count FROM backfill_jobs WHERE job_id = :j", j=job) == 300
    run_cli(db_url, "verify", job[:8])
