"""ItemHandler's built-in bulk write (jobs/handlers.py): COPY into a temporary table, one upsert from it.

A record whose data the database refuses costs the batch one per-row pass (each row in a SAVEPOINT): the
bad row lands in etl_errors, the others are written. Any other database error is the batch's: rolled
back and retried, nothing filed as a bad item, no row lost.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.conftest import job_row, run_cli, scalar
from tests.fixtures import seed_demo, troops_checksum
from tidegate.jobs import handlers
from tidegate.jobs.handlers import ItemHandler
from tidegate.worker.errors import InvalidIdentifier
from tidegate.worker.sql import load

RANGE = ("--from", "2024-01-01T00:00:00Z", "--to", "2025-01-01T00:00:00Z")
SQL_HANDLER = (handlers.__file__.rsplit("/", 1)[0]) + "/demo/hero_troops.sql"


def _demo_job(url: str, *extra: str) -> str:
    return run_cli(url, "enqueue", "backfill-range", *RANGE, "--handler", "hero_troops", "--owner", "tests",
                   *extra).stdout.strip()


def _overflow(engine, ids: list[int]) -> None:  # type: ignore[no-untyped-def]
    """A troop Level past int4 in each snapshot: a number to transform(), a data error (22003) to the upsert."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE hero_snapshots SET raw = jsonb_set(raw, '{ProfileData,Troops,0,Level}',"
                          " '99999999999') WHERE id = ANY(:ids)"), {"ids": ids})


def _expected_without(engine, ids: list[int]) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """user_troops as the SQL handler leaves it over every snapshot but ``ids`` (rolled back)."""
    with engine.connect() as conn, conn.begin() as tx:
        conn.execute(text("DELETE FROM hero_snapshots WHERE id = ANY(:ids)"), {"ids": ids})
        conn.execute(text(open(SQL_HANDLER).read()), {"lo": "2000-01-01Z", "hi": "2100-01-01Z"})
        row = conn.execute(text(load("tidegate.jobs.demo", "demo.sql")["troops_checksum"])).one()
        tx.rollback()
    return int(row.rows), int(row.checksum)


def _good_ids(engine, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """``n`` snapshots spread over the range that transform() accepts."""
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT id FROM hero_snapshots WHERE jsonb_typeof(raw->'ProfileData'->'Troops') = 'array'"
            " AND jsonb_typeof(raw->'ProfileData'->'Troops'->0->'Level') = 'number'"
            " AND NOT raw->'ProfileData'->'Troops' @> '[{\"Level\": \"max\"}]'"
            " ORDER BY id % 7, id LIMIT :n"), {"n": n}).scalars())


def test_a_record_the_database_refuses_is_a_bad_item_and_the_rest_of_its_batch_is_written(engine, db_url):
    seed_demo(engine, 1500)
    bad = _good_ids(engine, 3)
    _overflow(engine, bad)
    expected = _expected_without(engine, bad)
    with engine.begin() as conn:  # the demo's own bad snapshots (PARSE_ERROR) are not part of this test
        parse_errors = conn.execute(text(
            "SELECT count(*) FROM hero_snapshots WHERE jsonb_typeof(raw->'ProfileData'->'Troops') IS DISTINCT FROM"
            " 'array' OR raw->'ProfileData'->'Troops' @> '[{\"Level\": \"max\"}]'")).scalar()
    job = _demo_job(db_url, "--batch-size", "400")
    run_cli(db_url, "worker", "--drain")
    row = job_row(engine, job)
    assert (row.status, row.processed_count, row.error_count) == ("done", 1500, parse_errors + 3)
    with engine.connect() as conn:
        refused = conn.execute(text("SELECT item_key, error_type, message FROM etl_errors"
                                    " WHERE error_type <> 'PARSE_ERROR'")).all()
    assert sorted(int(r.item_key) for r in refused) == sorted(bad)
    assert {r.error_type for r in refused} == {"NumericValueOutOfRange"}
    assert all("out of range" in r.message for r in refused)
    assert troops_checksum(engine) == expected  # every other snapshot of those batches written, as a clean run


def test_a_database_error_that_is_not_the_datas_rolls_the_batch_back_and_loses_nothing(engine, db_url):
    """A full disk (SQLSTATE 53100) on one row: no bad item filed, the batch retried, then the job paused;
    once the disk is fine again, resume ends with the clean run's rows."""
    seed_demo(engine, 1200)
    clean = _expected_without(engine, [])
    victim = _good_ids(engine, 1)[0]
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE disk (is_full boolean NOT NULL)"))
        conn.execute(text("INSERT INTO disk VALUES (true)"))
        conn.execute(text(f"""
            CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.snapshot_id = {int(victim)} AND (SELECT is_full FROM disk) THEN
                    RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full';
                END IF;
                RETURN NEW;
            END $$"""))
        conn.execute(text("CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON user_troops"
                          " FOR EACH ROW EXECUTE FUNCTION disk_full()"))
    job = _demo_job(db_url, "--batch-size", "300")
    run_cli(db_url, "worker", "--drain", "--retry-backoff", "0.05", "--pause-after-failures", "2")
    row = job_row(engine, job)
    assert row.status == "paused" and "could not extend file" in (row.status_reason or ""), row
    assert scalar(engine, "SELECT count(*) FROM etl_errors WHERE error_type <> 'PARSE_ERROR'") == 0
    assert scalar(engine, "SELECT count(*) FROM user_troops WHERE snapshot_id = :v", v=victim) == 0
    assert row.processed_count < 1200  # the victim's batch was not checkpointed past

    with engine.begin() as conn:
        conn.execute(text("UPDATE disk SET is_full = false"))
    run_cli(db_url, "resume", job)
    run_cli(db_url, "worker", "--drain")
    row = job_row(engine, job)
    assert (row.status, row.processed_count) == ("done", 1200)
    assert scalar(engine, "SELECT count(*) FROM etl_errors WHERE error_type <> 'PARSE_ERROR'") == 0
    assert troops_checksum(engine) == clean


# -- the bulk write on its own, in a transaction --------------------------------------------------------


class _Events(ItemHandler):
    name = "test_events"
    table = "bulk_events"
    columns = ("id", "at", "note")
    conflict = ("id",)

    def transform(self, row: Any) -> list[Any]:
        return list(row["records"])


class _Log(ItemHandler):
    name = "test_log"
    table = "bulk_events"
    columns = ("id", "at", "note")

    def transform(self, row: Any) -> list[Any]:
        return list(row["records"])


@pytest.fixture
def events(engine):  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text('CREATE TABLE bulk_events (id bigint PRIMARY KEY, at timestamptz NOT NULL, note text, "we""ird" int)'))
    return engine


def _run(engine, handler: ItemHandler, rows: list[dict]) -> list:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        return handlers.run(conn, handlers.Resolved(handler.name, handler=handler), rows, ["k"])


AT = datetime(2024, 5, 1, tzinfo=UTC)


def test_plain_insert_keeps_every_record_in_order_with_hostile_text(events):
    notes = ["tab\there", "new\nline", "back\\slash", "\\N", None, "ünï", "'; DROP TABLE bulk_events; --"]
    rows = [{"k": i, "records": [(i, AT, note)]} for i, note in enumerate(notes)]
    assert _run(events, _Log(), rows) == []
    with events.connect() as conn:
        got = conn.execute(text("SELECT id, at, note FROM bulk_events ORDER BY id")).all()
    assert [tuple(r) for r in got] == [(i, AT, n) for i, n in enumerate(notes)]


def test_upsert_keeps_the_last_record_of_a_key_and_strings_for_timestamps_still_work(events):
    """Without newer_by the last record of a key wins. A str for a timestamptz column cannot go in the binary
    COPY; the per-row pass (text COPY, the server parses it) writes those rows: nothing is a bad item."""
    rows = [{"k": 1, "records": [(1, AT, "first"), (2, AT, "x")]},
            {"k": 2, "records": [(1, AT, "second")]},
            {"k": 3, "records": [(3, "2024-05-02T00:00:00Z", "a string")]}]
    assert _run(events, _Events(), rows) == []
    with events.connect() as conn:
        got = {r.id: (r.at, r.note) for r in conn.execute(text("SELECT id, at, note FROM bulk_events"))}
    assert got == {1: (AT, "second"), 2: (AT, "x"), 3: (datetime(2024, 5, 2, tzinfo=UTC), "a string")}
    assert _run(events, _Events(), [{"k": 4, "records": [(1, AT, "third")]}]) == []
    assert scalar(events, "SELECT note FROM bulk_events WHERE id = 1") == "third"


def test_bad_records_of_every_kind_are_their_rows_items(events):
    rows = [{"k": "ok1", "records": [(1, AT, "fine")]},
            {"k": "null", "records": [(2, None, "NOT NULL column")]},
            {"k": "short", "records": [(3, AT)]},
            {"k": "long", "records": [(4, AT, "x", "extra")]},
            {"k": "huge", "records": [(2**70, AT, "past bigint")]},
            {"k": "object", "records": [(5, AT, object())]},
            {"k": "ok2", "records": [(6, AT, "fine"), (7, AT, "also")]}]
    errors = _run(events, _Events(), rows)
    assert sorted(e.item_key for e in errors) == ["huge", "long", "null", "object", "short"]
    with events.connect() as conn:
        assert sorted(conn.execute(text("SELECT id FROM bulk_events")).scalars()) == [1, 6, 7]


def test_a_table_or_column_that_is_not_there_fails_the_batch_not_its_rows(events):
    class Missing(_Events):
        name = "test_missing"
        columns = ("id", "at", "nope")

    with pytest.raises(InvalidIdentifier):
        _run(events, Missing(), [{"k": 1, "records": [(1, AT, "x")]}])

    class Hostile(_Events):
        name = "test_hostile"
        table = 'bulk_events; DROP TABLE bulk_events; --'

    with pytest.raises(InvalidIdentifier):
        _run(events, Hostile(), [{"k": 1, "records": [(1, AT, "x")]}])
    assert scalar(events, "SELECT count(*) FROM bulk_events") == 0


def test_a_quoted_column_name_is_written(events):
    class Weird(ItemHandler):
        name = "test_weird"
        table = "bulk_events"
        columns = ("id", "at", 'we"ird')

        def transform(self, row: Any) -> list[Any]:
            return [(row["k"], AT, 7)]

    assert _run(events, Weird(), [{"k": 1}, {"k": 2}]) == []
    assert scalar(events, 'SELECT sum("we""ird") FROM bulk_events') == 14
    assert Weird.writes == ("bulk_events",)


@pytest.mark.parametrize("value", [2**31, -2**31 - 1, 2**40, 99999999999, 2**63])
def test_an_integer_out_of_its_columns_range_is_a_bad_item_never_wrapped(events, value):
    """psycopg's binary int4 dumper wraps 2**31 to -2**31 without a word: the bulk write must not."""
    class Small(_Events):
        name = "test_small"
        columns = ("id", "at", 'we"ird')

    rows = [{"k": k, "records": [(k, AT, n)]} for k, n in ((1, 5), (2, value), (3, -7))]
    errors = _run(events, Small(), rows)
    assert [(e.item_key, e.error_type) for e in errors] == [("2", "NumericValueOutOfRange")]
    assert "out of range" in errors[0].message
    with events.connect() as conn:
        assert dict(conn.execute(text('SELECT id, "we""ird" FROM bulk_events')).all()) == {1: 5, 3: -7}


def test_a_role_without_temporary_fails_the_batch_and_files_no_item(events, db_url):
    """The bulk write needs TEMPORARY on the database: without it the write's error is the batch's
    (42501, retried, then the job pauses), never a row's."""
    import uuid

    from tidegate.worker.db import sqlstate

    role = f"tg_notemp_{uuid.uuid4().hex[:8]}"
    database = make_url(db_url).database
    with events.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}"'))
        conn.execute(text(f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC'))
        conn.execute(text(f'GRANT SELECT, INSERT, UPDATE ON bulk_events TO "{role}"'))
    try:
        with events.begin() as conn:
            conn.execute(text(f'SET LOCAL ROLE "{role}"'))
            with pytest.raises(Exception) as raised:
                handlers.run(conn, handlers.Resolved("test_events", handler=_Events()),
                             [{"k": 1, "records": [(1, AT, "x")]}], ["k"])
        assert sqlstate(raised.value) == "42501"
        assert scalar(events, "SELECT count(*) FROM bulk_events") == 0
    finally:
        with events.begin() as conn:
            conn.execute(text(f'GRANT TEMPORARY ON DATABASE "{database}" TO PUBLIC'))
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))


# -- the write's round trips and the batch's read (issue 18.2) ----------------------------------------------


def test_a_name_with_percent_survives_the_statements_sent_together(events):
    """The write's statements go to the server together, through the driver's paramstyle: a % in
    a quoted column name is the name, not a placeholder."""
    with events.begin() as conn:
        conn.execute(text('ALTER TABLE bulk_events ADD COLUMN "50%x" int'))

    class Percent(_Events):
        name = "test_percent"
        columns = ("id", "at", "50%x")

    rows = [{"k": k, "records": [(k, AT, k * 10)]} for k in (1, 2)]
    assert _run(events, Percent(), rows) == []
    assert _run(events, Percent(), [{"k": 3, "records": [(1, AT, 99)]}]) == []  # an update: the conflict path
    with events.connect() as conn:
        assert dict(conn.execute(text('SELECT id, "50%x" FROM bulk_events')).all()) == {1: 99, 2: 20}


def test_an_engine_that_prepares_statements_sends_them_one_by_one(events, db_url):
    """A prepared statement holds one command: on an engine whose psycopg prepares (not tidegate's), the
    write's statements go one by one, the bad record is still its row's item, the rest written."""
    from sqlalchemy import create_engine

    preparing = create_engine(events.url, connect_args={"prepare_threshold": 0})
    try:
        for batch in range(3):  # past any threshold: every statement prepared
            rows = [{"k": f"{batch}-{i}", "records": [(batch * 10 + i, AT, "x")]} for i in range(3)]
            rows.append({"k": f"{batch}-bad", "records": [(batch * 10 + 9, None, "NOT NULL column")]})
            errors = _run(preparing, _Events(), rows)
            assert [e.item_key for e in errors] == [f"{batch}-bad"]
        assert scalar(events, "SELECT count(*) FROM bulk_events") == 9
    finally:
        preparing.dispose()


def test_a_statement_timeout_in_the_write_is_the_batchs_never_an_item(events):
    """The upsert runs out of statement_timeout (57014, SET LOCAL by the runner for a job): the error is
    the batch's (raised: rolled back, retried), no row filed as a bad item; the savepoint the write set is
    not left behind for the next batch's write."""
    from tidegate.worker.db import sqlstate

    with events.begin() as conn:
        conn.execute(text("""
            CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.note = 'slow' THEN PERFORM pg_sleep(5); END IF;
                RETURN NEW;
            END $$"""))
        conn.execute(text("CREATE TRIGGER slow_write BEFORE INSERT ON bulk_events FOR EACH ROW"
                          " EXECUTE FUNCTION slow_write()"))
    rows = [{"k": 1, "records": [(1, AT, "fine")]}, {"k": 2, "records": [(2, AT, "slow")]}]
    with events.connect() as conn:
        tx = conn.begin()
        conn.execute(text("SET LOCAL statement_timeout = '200ms'"))
        with pytest.raises(Exception) as raised:
            handlers.run(conn, handlers.Resolved("test_events", handler=_Events()), rows, ["k"])
        assert sqlstate(raised.value) == "57014"
        tx.rollback()
    assert scalar(events, "SELECT count(*) FROM bulk_events") == 0
    # the same handler, same connection pool, next batch: written whole
    assert _run(events, _Events(), [{"k": 3, "records": [(3, AT, "fine")]}]) == []
    assert scalar(events, "SELECT count(*) FROM bulk_events") == 1


def test_a_failing_record_then_a_good_batch_in_one_transaction(events):
    """After a record fault the write's savepoint is rolled back to and released: a second write in the
    same transaction (the next adaptive step) sets its own, and the transaction commits both."""
    with events.begin() as conn:
        first = handlers.run(conn, handlers.Resolved("test_events", handler=_Events()),
                             [{"k": "a", "records": [(1, AT, "x")]}, {"k": "b", "records": [(2, None, "bad")]}], ["k"])
        second = handlers.run(conn, handlers.Resolved("test_events", handler=_Events()),
                              [{"k": "c", "records": [(3, AT, "y")]}], ["k"])
    assert [e.item_key for e in first] == ["b"] and second == []
    with events.connect() as conn:
        assert sorted(conn.execute(text("SELECT id FROM bulk_events")).scalars()) == [1, 3]


JSON_DOCS = ['{"n": 99999999999999999999999}', '{"n": 9223372036854775807}', '{"n": -9223372036854775809}',
             '{"n": 18446744073709551616}', '{"f": 1e400}', '{"f": -0.0, "g": 0.1, "h": 5e-324}',
             '{"s": "1234567890123456789012 in a string"}', '{"u": "\\u00e9\\ud83d\\ude00 \\"q\\""}',
             '[' * 300 + ']' * 300, '{"n": 123456789012345678.5}']


@pytest.mark.parametrize("doc", JSON_DOCS)
def test_a_batchs_json_reads_as_json_loads_reads_it(engine, doc):
    """The batch's rows are read with orjson where it reads what json.loads reads, json.loads elsewhere (a
    25-digit integer stays an int, never a float): the handler sees the same values either way."""
    import json

    with engine.connect() as conn:
        got = handlers.fetch_rows(conn, text("SELECT CAST(:d AS json) AS j, CAST(:d AS jsonb) AS jb, 1 AS one"),
                                  {"d": doc})
        as_text = conn.execute(text("SELECT CAST(:d AS json)::text, CAST(:d AS jsonb)::text"), {"d": doc}).one()
    assert got == [{"j": json.loads(as_text[0]), "jb": json.loads(as_text[1]), "one": 1}]
    assert repr(got[0]["jb"]) == repr(json.loads(as_text[1]))  # same types: 1 vs 1.0, int vs float


@pytest.mark.parametrize("number", [digit * 21 for digit in "123456789"] + ["1" + "0" * 20, "-" + "7" * 19 + "0"])
def test_a_long_number_of_any_digits_reads_as_an_int(number):
    """The scan for 19 digits in a row catches each digit (orjson alone reads these as floats)."""
    import json

    doc = f'{{"n": {number}, "s": "{number}"}}'.encode()
    got = handlers._loads(doc)
    assert got == json.loads(doc) and type(got["n"]) is int

