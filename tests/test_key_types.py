"""Every key type at every concurrency: each key in ``[from, to)`` processed exactly once.

Key columns of every supported type (timestamptz, timestamp, date, smallint, integer,
bigint), in a database whose time zone is America/New_York, with keys that cross the
2024 DST changes there (timestamps in the spring-forward gap and the fall-back hour),
integers at the edges of their widths, duplicate keys, bounds given as naive and as
offset strings. A real pool (`tidegate worker --drain`) runs the jobs, its processes
in yet other time zones (TZ, and PGTZ, which changes their sessions' zone too).

The oracle is plain Python over the keys the test inserted, so no time zone of the
database or of the worker can bend it.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from tests import pg
from tests.conftest import run_cli
from worker import control
from worker.db import make_engine

pytestmark = pytest.mark.xdist_group("key_types")

NY = ZoneInfo("America/New_York")
SPRING = datetime(2024, 3, 10, 7, tzinfo=UTC)  # 02:00 EST becomes 03:00 EDT
FALL = datetime(2024, 11, 3, 6, tzinfo=UTC)  # 02:00 EDT becomes 01:00 EST
SPRING_WALL = datetime(2024, 3, 10, 2, 0)  # local 02:00-03:00 does not exist in New York that day
FALL_WALL = datetime(2024, 11, 3, 1, 0)  # local 01:00-02:00 happens twice
WIDTHS = {"smallint": (-(2**15), 2**15 - 1), "integer": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
TYPES = ("timestamptz", "timestamp", "date", "smallint", "integer", "bigint")
SQL_HANDLER = "INSERT INTO derived (tbl, id) SELECT tbl, id FROM {src} WHERE k > :lo AND k <= :hi"
PY_HANDLER = "tests.handlers:copy_row_id"
MICRO = timedelta(microseconds=1)


def setup_tables(engine: Engine, types: tuple[str, ...] = TYPES, db_zone: str = "America/New_York") -> None:
    with engine.begin() as conn:
        name = conn.execute(text("SELECT current_database()")).scalar_one()
        # not copied from the template: each clone is set here (new sessions read it)
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone = '{db_zone}'"))
        conn.execute(text("CREATE TABLE derived (tbl text NOT NULL, id int NOT NULL)"))
        for t in types:
            conn.execute(text(f"CREATE TABLE src_{t} (id serial PRIMARY KEY, tbl text NOT NULL DEFAULT '{t}',"
                              f" k {t} NOT NULL)"))
            conn.execute(text(f"CREATE INDEX ON src_{t} (k)"))


def insert_keys(engine: Engine, t: str, values: list[Any]) -> list[tuple[int, Any]]:
    """The keys as rows; (id, key) of each, as the test knows them (never read back)."""
    if not values:
        return []
    with engine.begin() as conn:
        ids = [r[0] for r in conn.execute(text(f"INSERT INTO src_{t} (k) SELECT unnest(CAST(:ks AS {t}[]))"
                                               " RETURNING id"), {"ks": values})]
        conn.execute(text(f"ANALYZE src_{t}"))
    return list(zip(ids, values, strict=True))


def payload(t: str, frm: Any, to: Any, *, batch_size: int, concurrency: int, python: bool = False,
            row_limit: int | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"source": f"src_{t}", "key": "k", "from": frm, "to": to, "batch_size": batch_size,
                         "concurrency": concurrency, "owner": "key-types"}
    if python:
        p["handler"] = PY_HANDLER
    else:
        p["sql"] = SQL_HANDLER.format(src=f"src_{t}")
    if row_limit is not None:
        p["row_limit"] = row_limit
    return p


def queue(engine: Engine, p: dict[str, Any]) -> str:
    with engine.begin() as conn:
        return str(conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('backfill_range',"
                                     " CAST(:p AS jsonb)) RETURNING id"), {"p": json.dumps(p)}).scalar_one())


def drain(url: str, env: dict[str, str] | None = None) -> None:
    run_cli(url, "worker", "--concurrency", "2", "--drain", "--poll", "0.1", timeout=300, env=env)


def derived_ids(engine: Engine, t: str) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT id FROM derived WHERE tbl = :t ORDER BY id"), {"t": t})]


def job_state(engine: Engine, job: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT q.status AS queue_status, q.last_error, j.status, j.processed_count, j.from_ts, j.to_ts,"
            " (SELECT count(*) FROM backfill_slices s WHERE s.job_id = q.id) AS slices"
            " FROM queue_jobs q LEFT JOIN backfill_jobs j ON j.job_id = q.id WHERE q.id = :j"), {"j": job}).one()


def raise_concurrency(engine: Engine, job: str, concurrency: int) -> bool:
    """Lift a paused canary's limit, raise its concurrency and resume it; False if it was not paused."""
    with engine.begin() as conn:
        if conn.execute(text("SELECT status FROM backfill_jobs WHERE job_id = :j"), {"j": job}).scalar() != "paused":
            return False
        control.set_knobs(conn, job, {"row_limit": None, "concurrency": concurrency}, "tests")
        control.transition(conn, job, "resume", "tests")
    return True


# -- the oracle's reading of a bound --------------------------------------------------------------


def bound_value(t: str, given: Any) -> Any:
    """What a bound means, independent of any session: naive text on a timestamptz column is UTC; an
    offset on a timestamp column is converted to UTC."""
    if t in WIDTHS:
        return int(given)
    if t == "date":
        return date.fromisoformat(given)
    ts = datetime.fromisoformat(given)
    if t == "timestamptz":
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


def expected_ids(t: str, rows: list[tuple[int, Any]], frm: Any, to: Any) -> list[int]:
    lo, hi = bound_value(t, frm), bound_value(t, to)
    return sorted(i for i, k in rows if lo <= k < hi)


# -- strategies ---------------------------------------------------------------------------------


def key_pool(t: str) -> st.SearchStrategy[Any]:
    micro = st.sampled_from([-1, 0, 1]).map(lambda n: n * MICRO)
    minutes = st.integers(-150, 150).map(lambda n: timedelta(minutes=n))
    if t == "timestamptz":
        return st.builds(lambda b, m, u: b + m + u, st.sampled_from([SPRING, FALL]), minutes, micro)
    if t == "timestamp":
        return st.builds(lambda b, m, u: b + m + u, st.sampled_from([SPRING_WALL, FALL_WALL]), minutes, micro)
    if t == "date":
        near = st.builds(lambda b, d: b + timedelta(days=d), st.sampled_from([SPRING.date(), FALL.date()]),
                         st.integers(-4, 4))
        return st.one_of(near, st.sampled_from([date(1, 1, 2), date(9999, 12, 30)]))
    w = WIDTHS[t]
    return st.one_of(st.integers(w[0], w[0] + 4), st.integers(w[1] - 4, w[1]),
                     st.integers(-4, 4))


def bound_text(t: str, value: Any, form: int) -> Any:
    """A bound as a user writes it: forms are naive, Z, New York offset, +05:45 (ints: number or text)."""
    if t in WIDTHS:
        return value if form % 2 else str(value)
    if t == "date":
        return value.isoformat()
    if t == "timestamp":  # a naive wall time; with an offset, the same instant read as UTC
        value = value.replace(tzinfo=UTC)
    utc = value.astimezone(UTC)
    return [utc.replace(tzinfo=None).isoformat(), utc.replace(tzinfo=None).isoformat() + "Z",
            utc.astimezone(NY).isoformat(), utc.astimezone(ZoneInfo("Asia/Kathmandu")).isoformat()][form % 4]


@st.composite
def jobs(draw: st.DrawFn, t: str) -> dict[str, Any]:
    distinct = draw(st.lists(key_pool(t), min_size=1, max_size=10))
    values = draw(st.lists(st.sampled_from(distinct), max_size=40))  # duplicates on purpose
    near = st.sampled_from(distinct)
    if t in WIDTHS:
        w = WIDTHS[t]
        beyond = st.sampled_from([w[0] - 1, w[0] - 10**12, w[1] + 1, w[1] + 2,
                                  w[1] + 10**12, 10**20, -(10**20), 0])
        shifted = st.builds(lambda k, d: k + d, near, st.sampled_from([-1, 0, 1]))
    else:
        unit = timedelta(days=1) if t == "date" else MICRO
        beyond = key_pool(t)
        shifted = st.builds(lambda k, d: k + d * unit, near, st.sampled_from([-1, 0, 1]))
    a, b = draw(st.one_of(shifted, beyond)), draw(st.one_of(shifted, beyond))
    frm, to = (a, b) if a <= b else (b, a)
    return {"values": values, "from": bound_text(t, frm, draw(st.integers(0, 3))),
            "to": bound_text(t, to, draw(st.integers(0, 3))),
            "batch_size": draw(st.integers(1, 6)), "concurrency": draw(st.sampled_from([1, 2, 8])),
            "python": draw(st.booleans()),
            "row_limit": draw(st.integers(1, 8)),  # with `split`: a canary, then its concurrency raised
            "raise_to": draw(st.sampled_from([2, 8]))}


def expected_error(t: str, case: dict[str, Any]) -> str | None:
    lo, hi = bound_value(t, case["from"]), bound_value(t, case["to"])
    if t == "date" and not date(1, 1, 2) <= lo <= hi <= date(9999, 12, 30):  # one day kept free at each end
        return "expected a date from 0001-01-02 to 9999-12-30"
    if not lo < hi:
        return "empty or reversed range"
    if t in WIDTHS and (lo > WIDTHS[t][1] or hi <= WIDTHS[t][0]):
        return f"holds no {t} key"
    return None


# -- the property ---------------------------------------------------------------------------------


def _every_type_once(pg_server: str, template: str, cases: dict[str, dict[str, Any]], split: bool,
                     worker_env: dict[str, str]) -> None:
    """``split``: each job first runs as a canary of ``row_limit`` rows, then resumes with a higher
    concurrency, so its running slices are cut (keys.midpoint) on the way."""
    name = pg.clone(pg_server, template)
    url = pg.with_database(pg_server, name)
    engine = make_engine(url)
    try:
        setup_tables(engine)
        rows = {t: insert_keys(engine, t, c["values"]) for t, c in cases.items()}
        ids = {t: queue(engine, payload(t, c["from"], c["to"], batch_size=c["batch_size"],
                                        concurrency=c["concurrency"], python=c["python"],
                                        row_limit=c["row_limit"] if split else None))
               for t, c in cases.items()}
        drain(url, worker_env)
        if split and any([raise_concurrency(engine, ids[t], c["raise_to"]) for t, c in cases.items()]):
            drain(url, worker_env)
        for t, c in cases.items():
            state = job_state(engine, ids[t])
            error = expected_error(t, c)
            if error is not None:
                assert state.queue_status == "failed" and error in state.last_error, (t, c, state)
                assert derived_ids(engine, t) == []
                continue
            want = expected_ids(t, rows[t], c["from"], c["to"])
            assert (state.status, derived_ids(engine, t)) == ("done", want), (t, c, state)
            assert state.processed_count == len(want)
    finally:
        engine.dispose()
        pg.drop(pg_server, name)


ZONES = {"worker_tz": st.sampled_from(["UTC", "Asia/Kathmandu", "America/Los_Angeles", "Australia/Lord_Howe"]),
         "worker_pgtz": st.sampled_from([None, "Asia/Kathmandu", "Australia/Lord_Howe", "America/New_York"])}
CASES = st.fixed_dictionaries({t: jobs(t) for t in TYPES})


def _env(worker_tz: str, worker_pgtz: str | None) -> dict[str, str]:
    return {"TZ": worker_tz, **({"PGTZ": worker_pgtz} if worker_pgtz else {})}


@settings(max_examples=8, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate], suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases=CASES, split=st.booleans(), **ZONES)
def test_every_key_type_at_every_concurrency(pg_server, template, cases, split, worker_tz, worker_pgtz):
    _every_type_once(pg_server, template, cases, split, _env(worker_tz, worker_pgtz))


@pytest.mark.chaos  # make test-chaos: more examples
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases=CASES, split=st.booleans(), **ZONES)
def test_every_key_type_at_every_concurrency_long(pg_server, template, cases, split, worker_tz, worker_pgtz):
    _every_type_once(pg_server, template, cases, split, _env(worker_tz, worker_pgtz))
