"""Python's cyclic garbage collector runs between a slice's batches, not inside them (worker/collector.py),
and a session in another name of UTC is put in 'UTC' (worker/db.py ``_plain_utc``): both cut a Python
handler's client CPU, and neither may change what a batch does."""

from __future__ import annotations

import datetime
import gc
import weakref

import pytest
from sqlalchemy import text

from tests.conftest import run_cli, scalar
from tests.fixtures import make_items
from tidegate.worker import collector
from tidegate.worker.collector import Collector
from tidegate.worker.db import make_engine


class _Node(list):  # type: ignore[type-arg]  # a list that can be weakly referenced
    pass


def _cycle() -> weakref.ref:  # type: ignore[type-arg]
    node = _Node()
    node.append(node)
    return weakref.ref(node)


@pytest.fixture
def collector_on():  # type: ignore[no-untyped-def]
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()


def test_the_collector_is_off_in_a_slice_collects_between_batches_when_due_and_is_back_after(collector_on,
                                                                                             monkeypatch):
    monkeypatch.setattr(collector, "EVERY", 3600.0)
    with Collector() as c:
        assert not gc.isenabled()
        gone = _cycle()
        c.between()  # not due yet: the cycle is still there
        assert gone() is not None
        monkeypatch.setattr(collector, "EVERY", 0.0)
        c._next = 0.0
        c.between()
        assert gone() is None and not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off_and_collects_nothing(collector_on):
    gc.disable()
    with Collector() as c:
        c._next = 0.0
        gone = _cycle()
        c.between()
        assert gone() is not None
    assert not gc.isenabled()
    gc.collect()


def test_a_worker_runs_its_batches_with_the_collector_off(engine, db_url):
    """The real runtime, in a worker process: each row's handler call sees the collector off."""
    make_items(engine, 120)
    run_cli(db_url, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to", "121",
            "--handler", "tests.handlers:record_collector", "--batch-size", "50", "--owner", "t")
    run_cli(db_url, "worker", "--concurrency", "1", "--drain")
    assert scalar(engine, "SELECT count(*) FROM processed_log WHERE k > 0") == 120
    assert scalar(engine, "SELECT count(*) FROM processed_log WHERE k <= 0") == 0


def _with_zone(db_url: str, zone: str) -> str:
    sep = "&" if "?" in db_url else "?"
    return f"{db_url}{sep}options=-c%20TimeZone%3D{zone.replace('/', '%2F')}"


@pytest.mark.parametrize("zone", ["Etc/UTC", "Zulu"])
def test_a_session_in_another_name_of_utc_is_put_in_utc_and_reads_the_same_instants(db_url, zone):
    engine = make_engine(_with_zone(db_url, zone))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW TimeZone")).scalar() == "UTC"
            at = conn.execute(text("SELECT timestamptz '2024-03-31 01:30:00+00'")).scalar()
            local = conn.execute(text("SELECT (timestamptz '2024-03-31 23:30:00+00')::date")).scalar()
        assert at.tzinfo is datetime.UTC and at == datetime.datetime(2024, 3, 31, 1, 30, tzinfo=datetime.UTC)
        assert local == datetime.date(2024, 3, 31)
    finally:
        engine.dispose()


@pytest.mark.parametrize("zone", ["Europe/Berlin", "GMT", "America/New_York"])
def test_a_session_in_any_other_zone_keeps_it(db_url, zone):
    """Not UTC by another name (GMT has the same offset but its own abbreviation): left as it is, so a
    handler's SQL (a cast to date, to_char's TZ) sees the zone its deployment chose."""
    engine = make_engine(_with_zone(db_url, zone))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW TimeZone")).scalar() == zone
    finally:
        engine.dispose()
