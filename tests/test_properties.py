"""Property: for random ranges, batch sizes, concurrency and crash points, every key in
range is processed exactly once and no key outside it is touched.

Workers run in-process here so hypothesis can try many cases quickly; a
"crash" is an exception that escapes the batch's transaction (it rolls back,
as a killed process's would) followed by abandoning the worker without
releasing anything, its lease then expired.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests import pg
from tests.fixtures import LOG_HANDLER
from tidegate.worker import kinds
from tidegate.worker.db import make_engine
from tidegate.worker.runner import Worker, WorkerConfig

pytestmark = pytest.mark.xdist_group("properties")


class Crash(BaseException):
    """Escapes run_batch's error handling, like a process dying mid-batch."""


class CrashingKind(kinds.RangeKind):
    """backfill_range that crashes at chosen batch numbers (counted across workers)."""

    name = "crashing_range"

    def __init__(self) -> None:
        inner = kinds.kinds()["backfill_range"]
        assert isinstance(inner, kinds.RangeKind)
        self.inner = inner
        self.crash_at: set[int] = set()
        self.batches = 0

    def plan(self, conn, payload):  # type: ignore[no-untyped-def]
        return self.inner.plan(conn, payload)

    def next_keys(self, conn, ctx, after, end, limit):  # type: ignore[no-untyped-def]
        return self.inner.next_keys(conn, ctx, after, end, limit)

    def process_range(self, conn, ctx, batch):  # type: ignore[no-untyped-def]
        self.batches += 1
        result = self.inner.process_range(conn, ctx, batch)
        if self.batches in self.crash_at:
            raise Crash  # after the handler wrote: the rollback must undo it
        return result


KIND = CrashingKind()
kinds.register(KIND)


@pytest.fixture(scope="module")
def items_template(pg_server, template):  # type: ignore[no-untyped-def]
    """A template with items 1..400 (every other key) so each example starts from a copy."""
    name = pg.clone(pg_server, template)
    url = pg.with_database(pg_server, name)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (k bigint PRIMARY KEY, v text)"))
        conn.execute(text("CREATE TABLE processed_log (k bigint NOT NULL, pid int)"))
        conn.execute(text("INSERT INTO items SELECT g, '' FROM generate_series(2, 800, 2) g"))
    engine.dispose()
    yield name
    pg.drop(pg_server, name)


def _run(url: str, crash_at: set[int]) -> None:
    KIND.crash_at, KIND.batches = crash_at, 0
    for _ in range(len(crash_at) + 1):
        worker = Worker(WorkerConfig(url=url, lease_seconds=60, types=["crashing_range"]))
        worker._heartbeat.start()
        try:
            # Worker.run's loop without its clean shutdown, so a crash releases nothing
            while worker.plan_one() or worker.work_one_slice() or worker._work_left():
                pass
        except Crash:
            # the process is "dead": its heartbeat stops and its lease runs out
            worker._heartbeat.stop()
            with worker.engine.begin() as conn:
                conn.execute(text("UPDATE tidegate_workers SET heartbeat_at = now() - interval '1 hour'"
                                  " WHERE id = :w"), {"w": worker.id})
            worker.engine.dispose()
            continue
        worker._heartbeat.stop()
        worker.engine.dispose()
        return
    raise AssertionError("more crashes than planned")


def _exactly_once(pg_server, items_template, lo, width, batch_size, concurrency, crash_at):  # type: ignore[no-untyped-def]
    name = pg.clone(pg_server, items_template)
    url = pg.with_database(pg_server, name)
    engine = make_engine(url)
    try:
        payload = {"source": "items", "key": "k", "from": lo, "to": lo + width, "sql": LOG_HANDLER,
                   "batch_size": batch_size, "concurrency": concurrency, "owner": "hypothesis"}
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('crashing_range', CAST(:p AS jsonb))"),
                         {"p": json.dumps(payload)})
        _run(url, crash_at)
        with engine.connect() as conn:
            logged = [r[0] for r in conn.execute(text("SELECT k FROM processed_log ORDER BY k"))]
            expected = [r[0] for r in conn.execute(
                text("SELECT k FROM items WHERE k >= :lo AND k < :hi ORDER BY k"), {"lo": lo, "hi": lo + width})]
            job = conn.execute(text("SELECT status, processed_count FROM backfill_jobs")).one()
        assert logged == expected
        assert job.status == "done" and job.processed_count == len(expected)
    finally:
        engine.dispose()
        pg.drop(pg_server, name)


# random ranges, batch sizes, concurrency and crash points (the batches after which a worker dies)
CASES = {"lo": st.integers(-5, 820), "width": st.integers(1, 900), "batch_size": st.integers(1, 60),
         "concurrency": st.integers(1, 5), "crash_at": st.sets(st.integers(1, 30), max_size=3)}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**CASES)
def test_each_key_in_range_exactly_once(pg_server, items_template, lo, width, batch_size, concurrency, crash_at):
    _exactly_once(pg_server, items_template, lo, width, batch_size, concurrency, crash_at)


@pytest.mark.chaos  # make test-chaos: ten times the examples
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**CASES)
def test_each_key_in_range_exactly_once_long(pg_server, items_template, lo, width, batch_size, concurrency, crash_at):
    _exactly_once(pg_server, items_template, lo, width, batch_size, concurrency, crash_at)
