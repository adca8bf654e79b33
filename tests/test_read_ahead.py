"""A Python batch reads the slice's next batch ahead and parses and transforms it while its own write runs
on the server (jobs/backfill_range.py ``_read_ahead``, jobs/handlers.py ``alongside``).

The batches here are driven in process, one transaction each, by the runtime's own ``one_step``, so each
test sees which batch used its read-ahead and which read again; the final rows are compared with the demo
transformation as one statement over the source as it is at the end.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.conftest import scalar
from tests.fixtures import clean_run_checksum, seed_demo, troops_checksum
from tidegate.jobs import handlers
from tidegate.jobs.backfill_range import NAME, BackfillRange
from tidegate.jobs.demo.handlers import HeroTroops
from tidegate.worker import keys, metrics
from tidegate.worker.db import sqlstate
from tidegate.worker.kinds import BatchContext
from tidegate.worker.runner import Step, one_step

PAYLOAD = {"from": "2024-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z", "handler": "hero_troops",
           "concurrency": 1, "owner": "tests"}


def _read_ahead(outcome: str) -> float:
    metrics.declare()
    return REGISTRY.get_sample_value("tidegate_read_ahead_total", {"kind": NAME, "outcome": outcome}) or 0.0


class Slice:
    """One job's only slice, worked a batch at a time by ``one_step`` as the runner works it."""

    def __init__(self, engine, payload: Mapping[str, Any], limit: int,  # type: ignore[no-untyped-def]
                 kind: BackfillRange | None = None) -> None:
        self.engine, self.kind, self.limit = engine, kind or BackfillRange(), limit
        with engine.begin() as conn:
            plan = self.kind.plan(conn, dict(payload))
        self.ctx = BatchContext(str(uuid.uuid4()), 0, plan.params, plan.key_type)
        self.cursor, self.end = keys.before(plan.from_key), plan.to_key
        self.steps: list[Step] = []
        self._used_before = _read_ahead("used")

    def batch(self) -> Step:
        with self.engine.begin() as conn:
            step = one_step(conn, self.kind, self.ctx, self.cursor, self.end, self.limit, ahead=True)
        self.cursor = step.checkpoint
        self.steps.append(step)
        return step

    def rest(self) -> None:
        while not (self.steps and self.steps[-1].exhausted):
            self.batch()

    @property
    def used(self) -> int:
        """Batches of this slice that used their read-ahead, by the worker's metric."""
        return int(_read_ahead("used") - self._used_before)


def test_each_batch_after_the_first_uses_its_read_ahead_and_the_rows_are_the_single_statements(engine):
    seed_demo(engine, 600)
    expected = clean_run_checksum(engine)
    work = Slice(engine, PAYLOAD, limit=100)
    work.rest()
    assert [s.processed for s in work.steps] == [100] * 6 + [0]  # a full last batch: one more finds none
    assert work.used == 5  # without the read-ahead: 0
    assert troops_checksum(engine) == expected
    bad = scalar(engine, "SELECT count(*) FROM hero_snapshots"
                 " WHERE jsonb_typeof(raw->'ProfileData'->'Troops') IS DISTINCT FROM 'array'"
                 " OR raw->'ProfileData'->'Troops' @> '[{\"Level\": \"max\"}]'")
    assert sum(len(s.errors) for s in work.steps) == bad > 0  # a bad row read ahead is still its batch's item


CHANGES = {
    "update": "UPDATE hero_snapshots SET raw = jsonb_set(raw, '{ProfileData,Troops,0,Level}', '77')"
              " WHERE id = (SELECT id FROM hero_snapshots ORDER BY created_at OFFSET 150 LIMIT 1)",
    "delete": "DELETE FROM hero_snapshots WHERE id = (SELECT id FROM hero_snapshots ORDER BY created_at OFFSET 150"
              " LIMIT 1)",
    # a row keyed inside the next batch's range: the range's count moves (and with it the batch's last key)
    "insert": "INSERT INTO hero_snapshots (user_id, namecode, created_at, size_bytes, raw)"
              " SELECT user_id + 100000, namecode, created_at + interval '1 millisecond', size_bytes, raw"
              " FROM hero_snapshots ORDER BY created_at OFFSET 150 LIMIT 1",
    # the same row rewritten with the same values: a new row version all the same
    "same values": "UPDATE hero_snapshots SET raw = raw"
                   " WHERE id = (SELECT id FROM hero_snapshots ORDER BY created_at OFFSET 150 LIMIT 1)",
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_row_changed_after_it_was_read_ahead_is_read_again(engine, change):
    """Batch 1 reads batch 2's rows (100-200) ahead; one of them changes before batch 2 runs. Batch 2 sees
    that the range's row versions moved, reads again and derives from the row as it is: the end result is
    the single statement's over the source as it ends up."""
    seed_demo(engine, 300)
    work = Slice(engine, PAYLOAD, limit=100)
    work.batch()
    with engine.begin() as conn:
        conn.execute(text(CHANGES[change]))
    changed = _read_ahead("changed")
    work.batch()
    assert work.used == 0  # batch 2 read again
    assert _read_ahead("changed") == changed + 1  # and the metric says why
    work.rest()
    assert work.used >= 1  # batch 3 used what batch 2 read ahead
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE troops_by_tidegate AS SELECT * FROM user_troops"))
    expected = clean_run_checksum(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO user_troops SELECT * FROM troops_by_tidegate"))
    assert troops_checksum(engine) == expected
    if change == "update":
        assert scalar(engine, "SELECT count(*) FROM user_troops WHERE level = 77") >= 1


def test_a_read_ahead_the_worker_leaves_for_another_job_is_counted_unused_and_read_again(engine):
    """One worker (one kind instance) reads job A's batch 2 ahead, then runs a batch of job B: A's read-ahead
    was never asked for. It is counted ``unused``, not ``changed`` (no row changed), and A's batch 2 reads
    again; both jobs end with the single statement's rows."""
    seed_demo(engine, 300)
    expected = clean_run_checksum(engine)
    kind = BackfillRange()
    a = Slice(engine, PAYLOAD, limit=100, kind=kind)
    b = Slice(engine, PAYLOAD, limit=100, kind=kind)
    unused, changed = _read_ahead("unused"), _read_ahead("changed")
    a.batch()
    b.batch()
    assert (_read_ahead("unused"), _read_ahead("changed")) == (unused + 1, changed)
    a.batch()
    assert a.used == 0  # B's batch took the worker's one read-ahead: A read its batch 2 again
    assert _read_ahead("unused") == unused + 2  # B's read-ahead of its own batch 2, left for A's batch
    used = _read_ahead("used")
    a.rest()  # batch 3 uses what A's batch 2 read ahead
    assert _read_ahead("used") == used + 1
    b.rest()  # so does B's
    assert _read_ahead("used") == used + 2
    assert [s.processed for s in a.steps] == [s.processed for s in b.steps] == [100, 100, 100, 0]
    assert troops_checksum(engine) == expected


class _Failing(HeroTroops):
    """The demo handler, but one snapshot's transform raises what a row's fault never is: a MemoryError, a
    SystemExit (the batch's fault, raised out of the batch)."""

    name = "test_read_ahead_failing"
    poison: int = 0
    raises: type[BaseException] = MemoryError

    def transform(self, row: Mapping[str, Any]) -> Any:
        if row["id"] == self.poison:
            raise self.raises("test: this row")
        return super().transform(row)


@pytest.mark.parametrize("raises", [MemoryError, SystemExit])
def test_a_row_the_next_batch_cannot_transform_fails_that_batch_not_the_one_that_read_it_ahead(engine, raises):
    seed_demo(engine, 300)
    handler = _Failing()
    handler.poison = int(scalar(engine, "SELECT id FROM hero_snapshots ORDER BY created_at OFFSET 150 LIMIT 1"))
    handler.raises = raises
    handlers.register(handler)
    work = Slice(engine, {**PAYLOAD, "handler": handler.name}, limit=100)
    dropped = _read_ahead("dropped")
    assert work.batch().processed == 100  # read batch 2 ahead: what its row raised is left for batch 2
    assert _read_ahead("dropped") == dropped + 1
    with pytest.raises(raises):
        work.batch()
    assert work.used == 0


def test_a_handler_that_writes_its_own_source_never_reads_ahead(engine):
    """Its next batch must see what this one wrote: no read-ahead (and no wasted read)."""
    seed_demo(engine, 300)
    work = Slice(engine, {**PAYLOAD, "writes": ["user_troops", "hero_snapshots"]}, limit=100)
    work.rest()
    assert work.used == 0 and [s.processed for s in work.steps] == [100, 100, 100, 0]


DOCS = ['{"a": [1, 2.5, "x", null, true]}', '{"n": 99999999999999999999999}', '{"f": 1e400}', "[" * 300 + "]" * 300,
        '"just a string"', "null"]


def test_json_read_raw_then_parsed_is_what_fetch_rows_reads_and_the_connection_reads_json_again(engine):
    """The read-ahead's rows, their JSON parsed later (arrays of JSON, NULLs and JSON null included), are the
    rows ``fetch_rows`` reads; and the connection's next statements get JSON parsed, not bytes."""
    query = text("SELECT CAST(d AS json) AS j, CAST(d AS jsonb) AS jb, ARRAY[CAST(d AS jsonb), NULL] AS arr,"
                 " CAST(NULL AS jsonb) AS nothing, convert_to(d, 'UTF8') AS raw_bytes, i"
                 " FROM unnest(CAST(:docs AS text[])) WITH ORDINALITY AS t(d, i) ORDER BY i")
    with engine.connect() as conn:
        raw = handlers.fetch_raw(conn, query, {"docs": DOCS})
        assert isinstance(raw.rows[0]["jb"], bytes)  # not parsed yet
        after = conn.execute(text("SELECT CAST('{\"k\": 1}' AS jsonb)")).scalar_one()
        parsed = raw.parsed()
        read = handlers.fetch_rows(conn, query, {"docs": DOCS})
    assert after == {"k": 1}
    assert parsed == read and repr(parsed) == repr(read)
    assert parsed[0]["jb"] == parsed[0]["j"] == json.loads(DOCS[0]) and parsed[0]["arr"] == [json.loads(DOCS[0]), None]
    assert type(parsed[1]["jb"]["n"]) is int and parsed[-1]["jb"] is None and parsed[-1]["nothing"] is None
    assert all(isinstance(r["raw_bytes"], bytes) for r in parsed)  # a bytea column is not JSON


def test_the_write_fails_with_the_database_and_the_work_beside_it_still_ran_once(engine):
    """``alongside``: the write's error (a statement timeout: the batch's) is raised after the client work
    beside it finished; nothing is filed as an item."""
    from tidegate.worker.db import sqlstate

    seed_demo(engine, 50)
    with engine.begin() as conn:
        conn.execute(text("""
            CREATE FUNCTION slow_troop() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(5); RETURN NEW; END $$"""))
        conn.execute(text("CREATE TRIGGER slow_troop BEFORE INSERT ON user_troops FOR EACH ROW"
                          " EXECUTE FUNCTION slow_troop()"))
    calls = []
    with engine.connect() as conn:
        tx = conn.begin()
        rows = handlers.fetch_rows(conn, text("SELECT * FROM hero_snapshots ORDER BY id LIMIT 5"), {})
        conn.execute(text("SET LOCAL statement_timeout = '300ms'"))
        with pytest.raises(Exception) as raised:
            handlers.run(conn, handlers.resolve("hero_troops"), rows, ["id"], beside=lambda: calls.append(1))
        tx.rollback()
    assert sqlstate(raised.value) == "57014" and calls == [1]
    assert scalar(engine, "SELECT count(*) FROM user_troops") == 0


def test_a_source_without_row_versions_runs_without_read_ahead_and_gets_the_same_rows(engine, monkeypatch):
    """A source whose rows have no ctid or xmin (a foreign table's may not): the first fingerprint fails in its
    savepoint (here a real 42703 from the server, the column a view lacks), the read-ahead is off for that
    source, and the batch goes on in the same transaction with the same result."""
    seed_demo(engine, 300)
    expected = clean_run_checksum(engine)
    work = Slice(engine, PAYLOAD, limit=100)

    def no_ctid(conn, *args):  # type: ignore[no-untyped-def]
        conn.execute(text("SELECT ctid FROM (SELECT 1) AS no_versions"))

    monkeypatch.setattr(BackfillRange, "_versions", staticmethod(no_ctid))
    work.rest()
    assert work.used == 0 and [s.processed for s in work.steps] == [100, 100, 100, 0]
    assert troops_checksum(engine) == expected
    assert list(work.kind._no_versions.values()) == [True]


def test_a_cancel_of_the_first_fingerprint_is_the_batchs_error_and_leaves_the_read_ahead_on(engine, monkeypatch):
    """Only "no such column" or "not supported" turns the read-ahead off: a statement cancelled by a timeout
    (57014, a real one: the server's) on that statement fails the batch, as it would anywhere in it."""
    seed_demo(engine, 300)
    work = Slice(engine, PAYLOAD, limit=100)

    def cancelled(conn, *args):  # type: ignore[no-untyped-def]
        conn.execute(text("SET LOCAL statement_timeout = '10ms'"))
        conn.execute(text("SELECT pg_sleep(1)"))

    monkeypatch.setattr(BackfillRange, "_versions", staticmethod(cancelled))
    with pytest.raises(DBAPIError) as raised:
        work.batch()
    assert sqlstate(raised.value) == "57014"
    assert work.kind._no_versions == {}  # not taken for a source without row versions
    monkeypatch.undo()
    work.rest()
    assert work.used == 2 and troops_checksum(engine) == clean_run_checksum(engine)  # batches 2 and 3
