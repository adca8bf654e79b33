"""Every knob at every entry point, against the one table (worker/knobs.py).

A value reaches a knob's column by five ways: the enqueue commands, `tidegate set`, a payload inserted
by SQL, the admin API, and a runbook's own UPDATE (or INSERT, for the queue options). For every knob
and every way that takes it, a value below the range, one above it, one of the wrong type and both
edges: a bad one is refused with a message naming the knob and the range (the database's constraint,
for SQL) and writes nothing; an edge is stored as given. The database's CHECK constraints are read
from the catalog and compared with the table, and the knob queries name exactly the table's knobs.
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.error
import urllib.request
from dataclasses import fields
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from tests import pg
from tests.conftest import run_cli
from tests.event_stores import build
from tests.fixtures import seed_demo
from tidegate.worker import kinds, knobs, web
from tidegate.worker.errors import InvalidInput
from tidegate.worker.knobs import Knob
from tidegate.worker.sql import raw
from tidegate.worker.store import Knobs

TOKEN = "knob-tests-token"
DEMO = {"from": "2024-01-01T00:00:00Z", "to": "2024-02-01T00:00:00Z", "owner": "qa"}  # seed_demo's rows
EMPTY = {"from": "2000-01-01T00:00:00Z", "to": "2000-02-01T00:00:00Z", "owner": "qa"}  # no rows: done at once
ARCHIVE = ["--layout", "tidegate", "--reason", "knob tests", "--owner", "qa", "--apply", "--all", "--yes"]
ENQUEUE = {"backfill-range": ["--from", DEMO["from"], "--to", DEMO["to"], "--owner", "qa"],
           "archive-range": ARCHIVE, "unarchive-range": ARCHIVE[:2] + ARCHIVE[4:]}


def _values(knob: Knob, as_json: bool) -> list[tuple[str, Any, bool]]:
    """(case, value, allowed): below, above, the wrong type, both edges. As typed on a command line,
    or as a JSON value."""
    below = knob.lo - 1 if knob.integer else (knob.lo / 2 if knob.lo > 0 else knob.lo - 0.5)
    above = knob.hi + 1 if knob.integer else knob.hi * 2
    wrong = (1.5 if as_json else "1.5") if knob.integer else "abc"
    cases = [("below", below, False), ("above", above, False), ("wrong-type", wrong, False),
             ("lo", knob.lo, True), ("hi", knob.hi, True)]
    return [(c, v if as_json or isinstance(v, str) else str(v), ok) for c, v, ok in cases]


def _cases(entry: str, chosen: tuple[Knob, ...] | list[Knob], as_json: bool) -> list[Any]:
    return [pytest.param(entry, k, v, ok, id=f"{entry}-{k.name}-{c}") for k in chosen for c, v, ok in
            _values(k, as_json)]


def _refusal(message: str, label: str, knob: Knob) -> None:
    assert f"{label} must be" in message and knob.describe() in message, message
    assert "\n" not in message and len(message) < 400


def _same(stored: Any, value: Any) -> None:
    assert stored == (float(value) if isinstance(value, str) else value), (stored, value)


@pytest.fixture(scope="module")
def db(pg_server, template):  # type: ignore[no-untyped-def]
    """One database for the module: the demo source, tidegate's demo event store, and one planned job
    (a canary, paused after its first row) for `set` and the runbook's UPDATE."""
    with pg.cloned(pg_server, template) as (url, engine):
        seed_demo(engine, 50)
        build(engine, url, "tidegate", 5)
        job = run_cli(url, "enqueue", "backfill-range", *ENQUEUE["backfill-range"], "--limit", "1").stdout.strip()
        run_cli(url, "worker", "--drain")
        reason = _scalar(engine, "SELECT status_reason FROM backfill_jobs WHERE job_id = :j", j=job)
        assert reason == "canary limit reached"
        yield engine, url, job


def _scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def _newest_queue_row(engine: Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT payload, priority, max_attempts FROM queue_jobs"
                                 " ORDER BY created_at DESC, id LIMIT 1")).one()


@pytest.fixture(scope="module")
def cli():  # type: ignore[no-untyped-def]
    """The whole CLI in process (the job kinds' commands included)."""
    from tidegate.worker import cli as cli_module

    for command in kinds.plugin_commands():
        group = cli_module.enqueue if getattr(command, "tidegate_enqueue", False) else cli_module.cli
        if command.name not in group.commands:
            group.add_command(command)
    return cli_module.cli


# -- the enqueue commands ------------------------------------------------------------------------

ENQUEUE_CASES = [
    *[pytest.param(command, *p.values, id=f"{command}-{p.id}")
      for command, kind in (("backfill-range", "backfill_range"), ("archive-range", "archive_range"),
                            ("unarchive-range", "archive_range"))
      for p in _cases("enqueue", [k for k in (*knobs.for_kind(kind), *knobs.QUEUE_KNOBS)
                                  if not (kind == "archive_range" and k.name == "row_limit")], as_json=False)],
]


@pytest.mark.parametrize("command,entry,knob,value,ok", ENQUEUE_CASES)
def test_enqueue_commands(db, cli, command, entry, knob, value, ok):
    engine, url, _ = db
    queued = _scalar(engine, "SELECT count(*) FROM queue_jobs")
    result = CliRunner().invoke(cli, ["enqueue", command, *ENQUEUE[command], knob.flag, value, "--database-url", url])
    if not ok:
        assert isinstance(result.exception, InvalidInput) and result.exception.exit_code == 2, result.output
        _refusal(str(result.exception), knob.flag, knob)
        assert _scalar(engine, "SELECT count(*) FROM queue_jobs") == queued
        return
    assert result.exit_code == 0, (result.output, result.exception)
    row = _newest_queue_row(engine)
    _same(getattr(row, knob.name) if knob.table == knobs.QUEUE else row.payload[knob.name], value)


# -- `tidegate set` and a runbook's UPDATE, on a planned job ---------------------------------------


def _knob_row(engine: Engine, job: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT to_jsonb(j) - 'updated_at' FROM backfill_jobs j WHERE job_id = :j"),
                                 {"j": job}).scalar_one())


def _restore(engine: Engine, job: str, before: dict[str, Any], knob: Knob) -> None:
    with engine.begin() as conn:  # the next case starts from the same row (min_batch_size <= max_batch_size)
        conn.execute(text(f"UPDATE backfill_jobs SET {knob.name} = CAST(:v AS {_column_type(knob)})"
                          " WHERE job_id = :j"), {"v": before[knob.name], "j": job})


def _column_type(knob: Knob) -> str:
    return {"row_limit": "bigint"}.get(knob.name, "integer" if knob.integer else "float8")


@pytest.mark.parametrize("entry,knob,value,ok", _cases("set", knobs.LIVE_KNOBS, as_json=False))
def test_set_command(db, cli, entry, knob, value, ok):
    engine, url, job = db
    before = _knob_row(engine, job)
    audits = _scalar(engine, "SELECT count(*) FROM tidegate_audit WHERE action = 'set'")
    result = CliRunner().invoke(cli, ["set", job[:8], knob.flag, value, "--database-url", url])
    if not ok:
        assert isinstance(result.exception, InvalidInput) and result.exception.exit_code == 2, result.output
        _refusal(str(result.exception), knob.flag, knob)
        assert _knob_row(engine, job) == before
        assert _scalar(engine, "SELECT count(*) FROM tidegate_audit WHERE action = 'set'") == audits
        return
    assert result.exit_code == 0, (result.output, result.exception)
    _same(_knob_row(engine, job)[knob.name], value)
    _restore(engine, job, before, knob)


@pytest.mark.parametrize("entry,knob,value,ok", _cases("update", knobs.LIVE_KNOBS, as_json=False))
def test_runbook_update(db, entry, knob, value, ok):
    engine, _, job = db
    before = _knob_row(engine, job)
    update = text(f"UPDATE backfill_jobs SET {knob.name} = :v WHERE job_id = :j")
    if not ok:
        with pytest.raises(DBAPIError) as refused, engine.begin() as conn:
            conn.execute(update, {"v": value, "j": job})
        words = (f"backfill_jobs_{knob.name}_", "invalid input syntax")
        assert any(w in str(refused.value.orig) for w in words), refused.value.orig
        assert _knob_row(engine, job) == before
        return
    with engine.begin() as conn:
        conn.execute(update, {"v": value, "j": job})
    _same(_knob_row(engine, job)[knob.name], value)
    _restore(engine, job, before, knob)


# -- the queue options in a runbook's INSERT ---------------------------------------------------------


@pytest.mark.parametrize("entry,knob,value,ok", _cases("insert", knobs.QUEUE_KNOBS, as_json=False))
def test_runbook_insert_of_a_queue_option(db, entry, knob, value, ok):
    engine, _, _ = db
    queued = _scalar(engine, "SELECT count(*) FROM queue_jobs")
    insert = text(f"INSERT INTO queue_jobs (type, payload, {knob.name}) VALUES ('backfill_range', CAST(:p AS jsonb),"
                  f" :v) RETURNING id, {knob.name} AS stored")
    params = {"p": json.dumps({**EMPTY, "owner": "insert"}), "v": value}
    if not ok:
        with pytest.raises(DBAPIError) as refused, engine.begin() as conn:
            conn.execute(insert, params)
        words = (f"queue_jobs_{knob.name}_", "out of range for type integer", "invalid input syntax")
        assert any(w in str(refused.value.orig) for w in words), refused.value.orig
        assert _scalar(engine, "SELECT count(*) FROM queue_jobs") == queued
        return
    with engine.begin() as conn:
        row = conn.execute(insert, params).one()
        conn.execute(text("DELETE FROM queue_jobs WHERE id = :j"), {"j": row.id})  # never run by another test
    _same(row.stored, value)


# -- a payload inserted by SQL: the worker plans it, or fails it with the knob's range --------------

SQL_CASES = _cases("payload", knobs.for_kind("backfill_range"), as_json=True)


@pytest.fixture(scope="module")
def inserted(pg_server, template):  # type: ignore[no-untyped-def]
    """Every case's payload inserted by SQL (over a range with no rows), then one pool run."""
    with pg.cloned(pg_server, template) as (url, engine):
        seed_demo(engine, 10)  # the default handler's source table; the payloads' range holds none of its rows
        ids = {}
        with engine.begin() as conn:
            for case in SQL_CASES:
                _, knob, value, _ = case.values
                ids[case.id] = str(conn.execute(text(
                    "INSERT INTO queue_jobs (type, payload) VALUES ('backfill_range', CAST(:p AS jsonb)) RETURNING id"),
                    {"p": json.dumps({**EMPTY, knob.name: value})}).scalar_one())
        run_cli(url, "worker", "--concurrency", "2", "--drain")
        yield engine, ids


@pytest.mark.parametrize("entry,knob,value,ok", SQL_CASES)
def test_payload_inserted_by_sql(inserted, request, entry, knob, value, ok):
    engine, ids = inserted
    job = ids[request.node.callspec.id]
    with engine.connect() as conn:
        queue = conn.execute(text("SELECT status, last_error FROM queue_jobs WHERE id = :j"), {"j": job}).one()
        planned = conn.execute(text(f"SELECT {knob.name} FROM backfill_jobs WHERE job_id = :j AND planned"),
                               {"j": job}).all()
    if not ok:
        assert queue.status == "failed" and queue.last_error.startswith("invalid job: "), queue
        _refusal(queue.last_error, knob.name, knob)
        assert planned == []
        return
    assert queue.status == "done", queue
    _same(planned[0][0], value)


# -- the admin API ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin(db):  # type: ignore[no-untyped-def]
    """`tidegate web`'s server, in this process, with an admin token."""
    engine, _, _ = db
    saved = os.environ.get("TIDEGATE_ADMIN_TOKEN")
    os.environ["TIDEGATE_ADMIN_TOKEN"] = TOKEN
    try:
        server = web.serve(engine, "127.0.0.1", 0)
    finally:
        if saved is None:
            os.environ.pop("TIDEGATE_ADMIN_TOKEN")
        else:
            os.environ["TIDEGATE_ADMIN_TOKEN"] = saved
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize("entry,knob,value,ok",
                         _cases("admin", (*knobs.for_kind("backfill_range"), *knobs.QUEUE_KNOBS), as_json=True))
def test_admin_api(db, admin, entry, knob, value, ok):
    engine, _, _ = db
    queued = _scalar(engine, "SELECT count(*) FROM queue_jobs")
    code, body = _post(f"{admin}/api/v1/admin/backfill", {**DEMO, knob.name: value})
    if not ok:
        assert code == 400, body
        _refusal(body["error"], knob.name, knob)
        assert _scalar(engine, "SELECT count(*) FROM queue_jobs") == queued
        return
    assert code == 201, body
    row = _newest_queue_row(engine)
    _same(getattr(row, knob.name) if knob.table == knobs.QUEUE else row.payload[knob.name], value)


# -- the table and the database --------------------------------------------------------------------


def _number(sql: str) -> float:
    return float(re.sub(r"::[\w ]+", "", sql).strip("()'"))


def test_the_check_constraints_in_the_catalog_are_the_table(db):
    engine, _, _ = db
    with engine.connect() as conn:
        checks = conn.execute(text(
            "SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def FROM pg_constraint"
            " WHERE contype = 'c' AND conname LIKE '%\\_range' AND conrelid::regclass::text IN"
            " ('backfill_jobs', 'queue_jobs')")).all()
        columns = {r.column_name: r for r in conn.execute(text(
            "SELECT column_name, data_type, column_default FROM information_schema.columns"
            " WHERE table_schema = 'public' AND (table_name, column_name) IN"
            f" ({', '.join(f'({k.table!r}, {k.name!r})' for k in knobs.TABLE)})"))}
    found = {}
    for c in checks:
        m = re.fullmatch(r"CHECK \(\(\((\w+) >= (.+)\) AND \(\1 <= (.+)\)\)\)", c[2])
        assert m, c
        found[m[1]] = (c.tbl, _number(m[2]), _number(m[3]))
    int4 = (-(2**31), 2**31 - 1)
    for knob in knobs.TABLE:
        if knob.name in found:
            assert found.pop(knob.name) == (knob.table, knob.lo, knob.hi), knob
        else:  # no CHECK: the column's type is the range
            assert (columns[knob.name].data_type, (knob.lo, knob.hi)) == ("integer", int4), knob
        assert columns[knob.name].data_type == ("double precision" if not knob.integer else
                                                "bigint" if knob.hi > int4[1] else "integer"), knob
        default = columns[knob.name].column_default
        assert (None if default is None else _number(default)) == knob.default, knob
    assert found == {}, f"a knob's CHECK in the database that the table lacks: {found}"


def test_the_knob_queries_name_exactly_the_table_s_knobs():
    live = {k.name for k in knobs.LIVE_KNOBS}
    set_columns = re.search(r"SET \(([^)]*)\)", raw("set_knobs"))
    assert set_columns and {c.strip() for c in set_columns[1].split(",")} == live | {"updated_at"}
    assert live <= set(re.findall(r":(\w+)", raw("insert_range_job")))
    read = set(re.findall(r"j\.(\w+)", raw("begin_batch")))
    assert {f.name for f in fields(Knobs)} <= live & read


HOSTILE = ["inf", "-inf", "nan", "NaN", "1e-300", "-1", "0", "1e400", "9" * 5000, "abc", "", "none", " 7 ",
           "1e10", "1.5", str(2**63)]


@pytest.mark.parametrize("knob", knobs.TABLE, ids=[k.name for k in knobs.TABLE])
def test_anything_typed_is_in_range_or_refused_with_the_range(knob):
    for value in HOSTILE:
        try:
            parsed = knob.parse(value, knob.flag, clearing=True)
        except InvalidInput as err:
            _refusal(str(err), knob.flag, knob)
            continue
        if parsed is None:
            assert knob.clearable and value == "none"
        else:
            assert knob.lo <= parsed <= knob.hi, (value, parsed)
