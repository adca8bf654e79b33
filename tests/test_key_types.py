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
from tidegate.worker import control, keys
from tidegate.worker.db import make_engine

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
    # TIDEGATE_ALLOW_SQL: the jobs' own SQL handlers, enqueued by a superuser (main's worker/trust.py)
    run_cli(url, "worker", "--concurrency", "2", "--drain", "--poll", "0.1", timeout=300,
            env={"TIDEGATE_ALLOW_SQL": "1", **(env or {})})


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


# No shrinking: an example costs two pool runs, and shrinking one took over five minutes. A failure
# prints its example whole; the deterministic tests below hold the minimal ones found so far.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate]


@settings(max_examples=8, deadline=None, phases=PHASES, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases=CASES, split=st.booleans(), **ZONES)
def test_every_key_type_at_every_concurrency(pg_server, template, cases, split, worker_tz, worker_pgtz):
    _every_type_once(pg_server, template, cases, split, _env(worker_tz, worker_pgtz))


@pytest.mark.chaos  # make test-chaos: more examples
@settings(max_examples=60, deadline=None, phases=PHASES, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases=CASES, split=st.booleans(), **ZONES)
def test_every_key_type_at_every_concurrency_long(pg_server, template, cases, split, worker_tz, worker_pgtz):
    _every_type_once(pg_server, template, cases, split, _env(worker_tz, worker_pgtz))


# -- deterministic regressions: what the property found, and what the issue reported ----------------


def enqueue(url: str, t: str, frm: str, to: str, *extra: str, check: bool = True) -> Any:
    proc = run_cli(url, "enqueue", "backfill-range", "--source", f"src_{t}", "--key", "k", "--from", frm,
                   "--to", to, "--handler", PY_HANDLER, "--owner", "tests", *extra, check=check)
    return proc.stdout.strip() if check else proc


def test_naive_timestamps_at_concurrency_2_are_never_shifted_by_the_session_zone(engine, db_url):
    """Issue 12: `timestamp without time zone` keys failed at concurrency >= 2 ("can't compare
    offset-naive and offset-aware datetimes"), and at any concurrency the bounds were compared in the
    session's zone, so rows outside [from, to) were processed and rows inside were not."""
    setup_tables(engine, ("timestamp",))
    walls = [SPRING_WALL + timedelta(minutes=7 * i) for i in range(-20, 21)]  # 23:40 to 04:20, through the gap
    rows = insert_keys(engine, "timestamp", walls)
    frm, to = "2024-03-10T01:00:00", "2024-03-10T03:30:00"
    job = enqueue(db_url, "timestamp", frm, to, "--batch-size", "3", "--concurrency", "2")
    drain(db_url, {"TZ": "Asia/Kathmandu", "PGTZ": "Australia/Lord_Howe"})
    state = job_state(engine, job)
    assert state.status == "done", state
    assert derived_ids(engine, "timestamp") == expected_ids("timestamp", rows, frm, to)
    assert len(expected_ids("timestamp", rows, frm, to)) == 21  # 01:04 through 03:24, 02:xx included
    # store_plan's instants: the naive bounds read as UTC, not as New York time
    assert (state.from_ts, state.to_ts) == (datetime(2024, 3, 10, 1, tzinfo=UTC), datetime(2024, 3, 10, 3, 30, tzinfo=UTC))
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT from_key, to_key, params->>'from' FROM backfill_jobs")).one()
    assert tuple(stored) == (frm, to, frm)


def test_an_offset_bound_on_a_naive_column_is_converted_to_utc(engine, db_url):
    setup_tables(engine, ("timestamp",))
    rows = insert_keys(engine, "timestamp", [FALL_WALL + timedelta(minutes=10 * i) for i in range(12)])
    # 21:00 EDT the day before is 01:00 UTC, the first key; 02:40+00:00 cuts after 02:30
    frm, to = "2024-11-02T21:00:00-04:00", "2024-11-03T02:40:00+00:00"
    job = enqueue(db_url, "timestamp", frm, to, "--batch-size", "2", "--concurrency", "8")
    drain(db_url)
    assert job_state(engine, job).status == "done"
    assert derived_ids(engine, "timestamp") == expected_ids("timestamp", rows, frm, to) == [r[0] for r in rows[:10]]


def test_timestamptz_cut_at_the_end_of_the_spring_gap_loses_no_hour(engine, db_url):
    """A planner cut read back from a New York session is 03:00 EDT in a ZoneInfo; one microsecond below
    it, on the wall clock, is 02:59:59.999999, which New York reads as EST: an hour *after* the cut.
    The next slice started there, and the keys of that hour were never processed."""
    setup_tables(engine, ("timestamptz",))
    instants = [SPRING - timedelta(hours=1) + timedelta(minutes=i) for i in range(121)]  # median: 07:00Z
    rows = insert_keys(engine, "timestamptz", instants)
    frm, to = "2024-03-10T00:00:00Z", "2024-03-11T00:00:00Z"
    job = enqueue(db_url, "timestamptz", frm, to, "--batch-size", "10", "--concurrency", "2")
    drain(db_url)
    assert job_state(engine, job).status == "done"
    assert derived_ids(engine, "timestamptz") == [r[0] for r in rows]
    with engine.connect() as conn:  # the planner's second slice (idle workers may have cut more since)
        start = conn.execute(text("SELECT start_key FROM backfill_slices WHERE slice_no = 1")).scalar()
    assert start == "2024-03-10T06:59:59.999999+00:00"


def test_key_arithmetic_holds_across_dst_in_a_zoneinfo():
    """Python compares and subtracts two datetimes of one tzinfo on the wall clock: keys from a
    New York session must be taken to UTC before any of it."""
    spring = SPRING.astimezone(NY)  # 03:00 EDT
    assert keys.before(spring) < spring and keys.before(spring) == SPRING - MICRO
    assert keys.after(keys.before(spring)) == spring
    first = datetime(2024, 11, 3, 5, 50, tzinfo=UTC).astimezone(NY)  # 01:50 EDT
    second = datetime(2024, 11, 3, 6, 10, tzinfo=UTC).astimezone(NY)  # 01:10 EST, twenty minutes later
    cut = keys.midpoint(first, second)
    assert cut == datetime(2024, 11, 3, 6, 0, tzinfo=UTC)
    # (== between zones is always False for a time in the repeated hour: compare with UTC)
    assert keys.decode("timestamptz", keys.encode(second)) == datetime(2024, 11, 3, 6, 10, tzinfo=UTC)
    assert keys.encode(second) == "2024-11-03T06:10:00+00:00"
    assert keys.decode("timestamptz", keys.encode(SPRING_WALL)) == SPRING_WALL  # naive stays naive
    assert keys.decode("timestamptz", keys.encode(date(2024, 3, 10))) == date(2024, 3, 10)


def test_integer_ranges_past_the_column_width_are_clipped(engine, db_url):
    setup_tables(engine, ("smallint", "integer", "bigint"))
    every = {}
    for t, (lo, hi) in WIDTHS.items():
        every[t] = insert_keys(engine, t, [lo, lo, lo + 1, -1, 0, 1, hi - 1, hi, hi])
    jobs_ = [enqueue(db_url, "smallint", "-40000", "32768", "--concurrency", "8", "--batch-size", "1"),
             enqueue(db_url, "integer", str(-(10**20)), "99999999999", "--concurrency", "2", "--batch-size", "2"),
             enqueue(db_url, "bigint", str(-(2**63)), str(2**63), "--concurrency", "8", "--batch-size", "1")]
    drain(db_url)
    for job, t in zip(jobs_, WIDTHS, strict=True):
        assert job_state(engine, job).status == "done"
        assert derived_ids(engine, t) == [r[0] for r in every[t]]
    with engine.connect() as conn:
        ranges = conn.execute(text("SELECT from_key, to_key FROM backfill_jobs ORDER BY created_at")).all()
    assert [tuple(r) for r in ranges] == [("-32768", "32768"), ("-2147483648", "2147483648"),
                                          (str(-(2**63)), str(2**63))]


@pytest.mark.parametrize(("t", "frm", "to", "message"), [
    ("smallint", "32768", "40000", "range [32768, 40000) holds no smallint key"),
    ("integer", "-5", "-" + "9" * 30, "empty or reversed range"),
    ("bigint", "--5", "10", "from: expected an integer, got '--5'"),
    ("bigint", "\u00b2", "10", "from: expected an integer"),  # isdigit() but not int()
    ("bigint", "1", "9" * 5000, "to: expected an integer, got '99999"),
    ("date", "2024-03-10T01:00:00", "2024-04-01", "from: expected a date"),
    ("date", "0001-01-01", "2024-04-01", "from: expected a date from 0001-01-02 to 9999-12-30"),
    ("timestamptz", "0001-01-01T00:00:00+01:00", "2024-04-01", "from: '0001-01-01T00:00:00+01:00' is out of range"),
    ("timestamp", "2024-01-01", "9999-12-31T23:59:59", "to: '9999-12-31T23:59:59' is out of range"),
    ("numeric", "1", "10", "key column type 'numeric' is not supported"),
])
def test_bad_bounds_are_one_line_errors(engine, db_url, t, frm, to, message):
    if t == "numeric":
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE src_numeric (id int PRIMARY KEY, tbl text, k numeric UNIQUE)"))
    else:
        setup_tables(engine, (t,))
    proc = enqueue(db_url, t, frm, to, check=False)
    assert proc.returncode == 2, proc
    assert message in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert len(proc.stderr) < 400  # a 5,000-digit bound is not echoed whole
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM queue_jobs")).scalar() == 0


def test_raising_concurrency_on_a_running_job_cuts_its_slices_for_every_type(engine, db_url):
    """The split path (keys.midpoint via store.cut_slice): each job runs as a canary of 5 rows at
    concurrency 1, then resumes at 8; its one running slice is cut into many."""
    setup_tables(engine)
    samples = {
        "timestamptz": [SPRING + timedelta(minutes=9 * i) for i in range(-20, 20)] * 2,
        "timestamp": [FALL_WALL + timedelta(minutes=9 * i) for i in range(-20, 20)] * 2,
        "date": [date(2024, 3, 1) + timedelta(days=i) for i in range(40)] * 2,
        "smallint": [-(2**15) + 3 * i for i in range(40)] * 2,
        "integer": [2**31 - 1 - 3 * i for i in range(40)] * 2,
        "bigint": [2**63 - 1 - 3 * i for i in range(40)] * 2,
    }
    bounds = {"timestamptz": ("2024-03-09", "2024-03-11T00:00:00-05:00"), "timestamp": ("2024-11-02", "2024-11-04"),
              "date": ("2024-03-01", "2024-04-10"), "smallint": ("-32768", "-32648"),
              "integer": ("2147483528", "2147483648"), "bigint": ("9223372036854775688", "9223372036854775808")}
    rows = {t: insert_keys(engine, t, v) for t, v in samples.items()}
    ids = {t: enqueue(db_url, t, *bounds[t], "--batch-size", "2", "--concurrency", "1", "--limit", "5")
           for t in TYPES}
    drain(db_url)
    for job in ids.values():
        assert job_state(engine, job).status == "paused"
        run_cli(db_url, "set", job, "--limit", "none", "--concurrency", "8")
        run_cli(db_url, "resume", job)
    drain(db_url, {"TZ": "America/Los_Angeles"})
    for t, job in ids.items():
        state = job_state(engine, job)
        assert state.status == "done" and state.slices > 1, (t, state)
        assert derived_ids(engine, t) == expected_ids(t, rows[t], *bounds[t]) == sorted(r[0] for r in rows[t])


def test_a_timestamp_jobs_tail_is_cut_at_most_once_a_batch_not_down_to_the_microsecond(engine, db_url):
    """Issue 15: one worker, a job of 200 timestamps at concurrency 2. Its second slice runs alone, short
    of slices, so it cuts itself for an idle worker. Cut before each batch, it was halved down to three
    microseconds of key (some 30 slices, most of them empty); cut after a full batch, only a slice with keys
    left after it is cut."""
    setup_tables(engine, ("timestamptz",))
    rows = insert_keys(engine, "timestamptz", [SPRING + timedelta(minutes=i) for i in range(200)])
    frm, to = "2024-03-10T07:00:00Z", "2024-03-10T10:20:00Z"
    job = enqueue(db_url, "timestamptz", frm, to, "--batch-size", "50", "--concurrency", "2")
    run_cli(db_url, "worker", "--concurrency", "1", "--drain", "--poll", "0.1", timeout=300, env={"TIDEGATE_ALLOW_SQL": "1"})
    state = job_state(engine, job)
    assert state.status == "done"
    assert derived_ids(engine, "timestamptz") == expected_ids("timestamptz", rows, frm, to) == sorted(i for i, _ in rows)
    assert 2 < state.slices <= 2 + 200 // 50, state.slices
