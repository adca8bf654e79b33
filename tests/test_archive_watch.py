"""watch-deletions (seed 002): deletion events become archive work exactly once, across SIGKILL,
restarts and a transaction that commits after a later sequence number was read."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import psycopg
import pytest
from sqlalchemy import text

from tests.conftest import CHILD_ENV, TIDEGATE, run_cli, scalar
from tests.event_stores import build

pytestmark = pytest.mark.slow

WATCH = ["watch-deletions", "--layout", "tidegate", "--map", "user_deleted=user", "--lookback", "1000"]
DELETE = ("INSERT INTO es_events (stream_id, version, type) SELECT id, 100, 'user_deleted' FROM es_streams"
          " WHERE type = :t AND id NOT IN (SELECT stream_id FROM es_events WHERE version = 100)"
          " ORDER BY id LIMIT :n")


def delete(engine, n: int, stream_type: str = "user") -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text(DELETE), {"t": stream_type, "n": n})


def test_watch_deletions_misses_nothing_and_doubles_nothing_across_restarts(engine, db_url):
    import os

    build(engine, db_url, "tidegate", 300)
    delete(engine, 5)
    delete(engine, 3, "venue")  # a deletion event on a stream type the map does not name: ignored
    first = json.loads(run_cli(db_url, *WATCH, "--once").stdout)
    assert first["new_streams"] == 5
    assert json.loads(run_cli(db_url, *WATCH, "--once").stdout)["new_streams"] == 0  # idempotent

    # a long-running watcher, SIGKILLed while deletions keep coming
    proc = subprocess.Popen([TIDEGATE, *WATCH, "--interval", "0.05"], env={**os.environ, **CHILD_ENV,
                            "DATABASE_URL": db_url}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(6):
            delete(engine, 4)
            time.sleep(0.15)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    delete(engine, 4)

    # a deletion whose transaction commits after a later one has been read
    late = psycopg.connect(db_url)
    late.execute(DELETE.replace(":t", "%s").replace(":n", "%s").replace("ORDER BY id", "ORDER BY id DESC"),
                 ("user", 1))
    late_seq = late.execute("SELECT max(seq) FROM es_events").fetchone()[0]
    delete(engine, 2)
    run_cli(db_url, *WATCH, "--once")
    assert scalar(engine, "SELECT last_seq FROM archive_watch_cursors") > late_seq
    late.commit()
    late.close()
    run_cli(db_url, *WATCH, "--once")

    deletions = scalar(engine, "SELECT count(*) FROM es_events e JOIN es_streams s ON s.id = e.stream_id"
                               " WHERE e.type = 'user_deleted' AND s.type = 'user'")
    assert deletions == 5 + 24 + 4 + 1 + 2
    assert scalar(engine, "SELECT count(*) FROM archive_watch_seen") == deletions
    enqueued = scalar(engine, "SELECT sum(jsonb_array_length(payload->'streams')) FROM queue_jobs"
                              " WHERE type = 'archive_range'")
    assert enqueued == deletions  # each deleted stream enqueued exactly once
    run_cli(db_url, "worker", "--concurrency", "2", "--drain", "--poll", "0.2", timeout=300)
    assert scalar(engine, "SELECT count(*) FROM es_streams s WHERE s.archived_at IS NOT NULL") == deletions
    assert scalar(engine, "SELECT count(*) FROM es_streams s WHERE s.archived_at IS NOT NULL"
                          " AND archive_reason = 'deleted: user_deleted'") == deletions
