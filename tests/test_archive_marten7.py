"""archive-range on Marten 7's own tables with archived-stream partitioning (tests/event_stores.MARTEN7):
mt_events' foreign key (stream_id, is_archived) references mt_streams (id, is_archived), so neither the
streams' flag nor the events' flag can move in a statement of its own (each alone breaks the key). The
batch sets both in one statement, and a round trip gives back the store row for row; a worker killed
mid-run changes nothing of that."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import text

from tests.conftest import job_row, kill_storm, run_cli, scalar, wait_for
from tests.event_stores import MARTEN7, MARTEN_DATA, fingerprint

pytestmark = pytest.mark.slow

STREAMS = 400


def marten7(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text(MARTEN7))
        for statement in MARTEN_DATA.strip().split(";\n"):
            conn.execute(text(statement), {"n": STREAMS})
        conn.execute(text("ANALYZE"))


def drain(url: str) -> None:
    run_cli(url, "worker", "--concurrency", "2", "--drain", "--poll", "0.2", timeout=300)


def test_the_flag_moves_with_marten7s_foreign_key_and_round_trips(engine, db_url):
    marten7(engine)
    with engine.begin() as conn:  # the store's own key refuses the flag of one table moved alone
        sid = conn.execute(text("SELECT id FROM mt_streams LIMIT 1")).scalar_one()
        with pytest.raises(Exception, match="foreign key"):
            with conn.begin_nested():
                conn.execute(text("UPDATE mt_streams SET is_archived = true WHERE id = :i"), {"i": sid})
    before = fingerprint(engine, "marten")
    venues = scalar(engine, "SELECT count(*) FROM mt_streams WHERE type = 'venue'")
    job = run_cli(db_url, "enqueue", "archive-range", "--layout", "marten", "--type", "venue", "--reason", "r",
                  "--owner", "o", "--batch-size", "7", "--apply", "--all", "--yes").stdout.strip()
    drain(db_url)
    assert scalar(engine, "SELECT status FROM backfill_jobs WHERE job_id = :j", j=job) == "done"
    assert scalar(engine, "SELECT count(*) FROM mt_streams_archived") == venues
    assert scalar(engine, "SELECT count(*) FROM mt_streams_archived WHERE type <> 'venue'") == 0
    # every event of an archived stream sits in the archived partition, none of the others
    assert scalar(engine, "SELECT count(*) FROM mt_events_default e JOIN mt_streams s ON s.id = e.stream_id"
                          " WHERE s.type = 'venue'") == 0
    assert scalar(engine, "SELECT count(*) FROM mt_events_archived e JOIN mt_streams s ON s.id = e.stream_id"
                          " WHERE s.type <> 'venue'") == 0
    assert scalar(engine, "SELECT count(*) FROM archive_audit WHERE job_id = :j AND action = 'archive'",
                  j=job) == venues
    run_cli(db_url, "enqueue", "unarchive-range", "--layout", "marten", "--from-audit", job[:8], "--reason", "back",
            "--owner", "o", "--apply", "--yes")
    drain(db_url)
    assert fingerprint(engine, "marten") == before


def test_a_killed_worker_on_marten7_ends_as_a_clean_run(engine, db_url, pools):
    marten7(engine)
    before = fingerprint(engine, "marten")
    job = run_cli(db_url, "enqueue", "archive-range", "--layout", "marten", "--reason", "r", "--owner", "o",
                  "--batch-size", "3", "--apply", "--all", "--yes").stdout.strip()
    pool = pools("--concurrency", "2", "--lease", "2", "--poll", "0.2")
    wait_for(lambda: job_row(engine, job).processed_count >= 30, timeout=120, what="progress")
    assert kill_storm(pool, engine, job, 3, random.Random(7)) >= 1
    wait_for(lambda: job_row(engine, job).status == "done", timeout=300, what="archive job done")
    assert pool.terminate() == 0
    assert scalar(engine, "SELECT count(*) FROM mt_streams_default") == 0
    assert scalar(engine, "SELECT count(*) FROM mt_events_default") == 0
    assert scalar(engine, "SELECT count(*) FROM archive_audit WHERE job_id = :j", j=job) == STREAMS
    run_cli(db_url, "enqueue", "unarchive-range", "--layout", "marten", "--from-audit", job, "--reason", "back",
            "--owner", "o", "--apply", "--yes")
    drain(db_url)
    assert fingerprint(engine, "marten") == before
