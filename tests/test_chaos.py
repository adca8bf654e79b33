"""The long kill storms (make test-chaos): a 1,000,000-row backfill and a 1,000,000-event archive, each
on a pool of 4 workers, one of them SIGKILLed at random every few seconds and restarted by the pool.
Final data must equal a clean run.

Size: TIDEGATE_CHAOS_ROWS (default 1,000,000) and TIDEGATE_CHAOS_EVENTS (default 1,000,000).
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from sqlalchemy import text

from tests.conftest import job_row, run_cli, scalar, wait_for
from tests.event_stores import build
from tests.fixtures import clean_run_checksum, seed_demo, troops_checksum

pytestmark = pytest.mark.chaos
ROWS = int(os.environ.get("TIDEGATE_CHAOS_ROWS", "1000000"))
EVENTS = int(os.environ.get("TIDEGATE_CHAOS_EVENTS", "1000000"))


def _storm(engine, pool, job: str, seed: int, every: tuple[float, float] = (1.0, 4.0), check=None) -> int:  # type: ignore[no-untyped-def]
    """SIGKILL a random worker of the pool every few seconds until the job is done; the kills."""
    rng = random.Random(seed)
    kills = 0
    while job_row(engine, job).status != "done":
        time.sleep(rng.uniform(*every))
        workers = pool.workers()
        if workers and job_row(engine, job).status != "done":
            rng.choice(workers).send_signal(signal.SIGKILL)
            kills += 1
        if check is not None:
            check()
        assert kills < 1000
    wait_for(lambda: job_row(engine, job).status == "done", timeout=60, what="done")
    assert pool.terminate() == 0
    assert kills >= 1
    # the pool logged each death and restarted the worker
    assert pool.output().count("died (signal SIGKILL)") == kills
    return kills


def test_kill_storm_on_a_million_row_backfill(engine, db_url, pools):
    seed_demo(engine, ROWS, users=ROWS)
    clean = clean_run_checksum(engine)

    job = run_cli(db_url, "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2100-01-01",
                  "--handler", "hero_troops", "--batch-size", "1000", "--concurrency", "8",
                  "--owner", "chaos").stdout.strip()
    pool = pools("--concurrency", "4", "--lease", "3")
    kills = _storm(engine, pool, job, seed=2026)

    row = job_row(engine, job)
    assert troops_checksum(engine) == clean
    assert row.processed_count == ROWS
    with engine.connect() as conn:
        errors = conn.execute(text("SELECT count(*), count(DISTINCT item_key) FROM etl_errors")).one()
    assert errors[0] == errors[1] == row.error_count
    print(f"\nkill storm: {ROWS} rows, {kills} SIGKILLs, {pool.output().count('taking over from')} takeovers")


# an order-independent checksum of every column of each event (seq and version included)
EVENTS_SUM = "SELECT coalesce(sum(hashtextextended(e::text, 0)), 0) FROM {table} e{where}"
SELECTED = " WHERE stream_id IN (SELECT id FROM es_streams WHERE type <> 'user')"
TORN = ("SELECT count(*) FROM es_streams s WHERE EXISTS (SELECT 1 FROM es_events e WHERE e.stream_id = s.id)"
        " AND EXISTS (SELECT 1 FROM es_events_archive a WHERE a.stream_id = s.id)")


def test_kill_storm_on_a_million_event_archive(engine, db_url, pools):
    """A clean run moves exactly the selected streams' events, unchanged: the checksums say so."""
    build(engine, db_url, "tidegate", max(30, EVENTS // 2))  # about two events per stream
    events = scalar(engine, "SELECT count(*) FROM es_events")
    moving = scalar(engine, EVENTS_SUM.format(table="es_events", where=SELECTED))
    staying = scalar(engine, EVENTS_SUM.format(table="es_events", where=" WHERE stream_id IN"
                                               " (SELECT id FROM es_streams WHERE type = 'user')"))
    streams = scalar(engine, "SELECT count(*) FROM es_streams WHERE type <> 'user'")

    job = run_cli(db_url, "enqueue", "archive-range", "--layout", "tidegate", "--where", "type != user",
                  "--batch-size", "500", "--concurrency", "8", "--reason", "chaos", "--owner", "chaos",
                  "--apply", "--all", "--yes").stdout.strip()
    pool = pools("--concurrency", "4", "--lease", "3")
    kills = _storm(engine, pool, job, seed=5, every=(0.2, 1.5), check=lambda: _never_torn(engine))

    assert scalar(engine, EVENTS_SUM.format(table="es_events_archive", where="")) == moving
    assert scalar(engine, EVENTS_SUM.format(table="es_events", where="")) == staying
    assert scalar(engine, "SELECT count(*) FROM es_events") + scalar(engine, "SELECT count(*) FROM es_events_archive") \
        == events
    assert scalar(engine, "SELECT count(*) FROM es_streams WHERE type <> 'user' AND archived_at IS NULL") == 0
    assert scalar(engine, "SELECT count(*) FROM es_streams WHERE type = 'user' AND archived_at IS NOT NULL") == 0
    assert job_row(engine, job).processed_count == streams
    print(f"\nkill storm: {events} events, {streams} streams archived, {kills} SIGKILLs,"
          f" {pool.output().count('taking over from')} takeovers")


def _never_torn(engine) -> None:  # type: ignore[no-untyped-def]
    assert scalar(engine, TORN) == 0
