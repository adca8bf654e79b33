"""Seeds 001 and 003: the dry run rehearses (the real handler on a sample, always rolled back), and a
backfill's --where reaches into JSON (seed 001's "observations lacking rawLinkset" is a filter).

The data is seed 001's (tests/test_example_raw_linkset.py): advisory observations, some with rawLinkset,
one bad, run by examples/raw_linkset.py as a deployment loads it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.conftest import job_row, role_env, run_cli, scalar, wait_for
from tests.test_example_raw_linkset import BAD, HISTORICAL, backfilled, seed, snapshot

ENV = {"TIDEGATE_HANDLERS": "examples.raw_linkset,tests.rehearsal_handlers"}
RANGE = ("--from", "2000-01-01", "--to", "2025-10-31")
LACKING = "document.rawLinkset is null"
HAVE_IT = set(range(30, HISTORICAL + 1, 30))  # historical documents written with rawLinkset already (seed)
# everything a dry run could touch: the user's table, tidegate's queue, checkpoints, errors and audit
STATE = {
    "observations": "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM concelier.advisory_observations t",
    "queue_jobs": "SELECT count(*) || ':' || coalesce(max(updated_at)::text, '') FROM queue_jobs",
    "backfill_jobs": "SELECT count(*) FROM backfill_jobs",
    "backfill_slices": "SELECT count(*) FROM backfill_slices",
    "etl_errors": "SELECT count(*) FROM etl_errors",
    "tidegate_audit": "SELECT count(*) FROM tidegate_audit",
}


def state(engine: Engine, *extra: str) -> dict[str, Any]:
    queries = {**STATE, **{t: f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {t} t"
                           for t in extra}}
    with engine.connect() as conn:
        return {name: conn.execute(text(sql)).scalar() for name, sql in queries.items()}


def dry_run(url: str, *args: str, env: dict | None = None, check: bool = True):  # type: ignore[no-untyped-def]
    return run_cli(url, "enqueue", "backfill-range", *RANGE, "--owner", "tests", "--dry-run", *args,
                   env={**ENV, **(env or {})}, check=check)


def grant_observations(engine: Engine, role: str, privileges: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"GRANT USAGE ON SCHEMA concelier TO {role}"))
        conn.execute(text(f"GRANT {privileges} ON concelier.advisory_observations TO {role}"))


# -- 6. rehearsals that rehearse ----------------------------------------------------------------------


def test_seed_001_rehearsal_runs_the_real_handler_on_a_sample_as_a_role_that_can_write_and_keeps_nothing(
        engine, db_url, roles):
    """Seed 001's staging rehearsal as tidegate runs it: the dry run of the raw-linkset job, as the pool's
    own login (tg_worker of ops/roles.sql, granted UPDATE on the observations), runs the real handler on the
    sample, reports what it would write and fail, and leaves every table as it was. The same login then
    runs the real job, which writes: the role could have written all along."""
    seed(engine)
    worker = f"{roles['prefix']}worker"
    grant_observations(engine, worker, "SELECT, UPDATE")
    before_rows, before = snapshot(engine), state(engine)

    out = dry_run(roles["worker"], "--handler", "raw_linkset", "--where", LACKING, "--sample", "1000",
                  "--concurrency", "2", "--json")
    report = json.loads(out.stdout)
    lacking = HISTORICAL - len(HAVE_IT)
    sample = report["sample"]
    assert report["rows"] == lacking and sample["rows_read"] == lacking and sample["as_role"] == worker
    assert sample["method"] == "exact quantiles of the matching rows' keys"
    assert sample["would_fail"] == 1
    assert sample["failures"] == [{"item_key": str(BAD), "error_type": "ValueError",
                                   "message": "content.raw is missing or not an object"}]
    assert sample["written"] == {"concelier.advisory_observations": {"inserted": 0, "updated": lacking - 1,
                                                                       "deleted": 0}}
    assert sample["rows_written"] == lacking - 1
    per_row = report["seconds_per_row"]
    assert per_row > 0
    assert report["estimated_seconds"] == pytest.approx(lacking * per_row / 2, abs=0.051 + lacking * 1e-6)
    assert state(engine) == before and snapshot(engine) == before_rows

    # a smaller sample is spread over the range, not its first rows
    spread = json.loads(dry_run(roles["worker"], "--handler", "raw_linkset", "--where", LACKING, "--sample", "10",
                                "--json").stdout)
    assert spread["sample"]["keys"] == 10 and spread["sample"]["rows_read"] == 10
    first_ids = scalar(engine, "SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM concelier.advisory_observations"
                               " WHERE created_at >= :k ORDER BY created_at LIMIT 1) s", k=spread["sample"]["picked"][4])
    assert 100 < first_ids[0] < 200  # the fifth of ten sampled keys lies in the middle of the range
    assert state(engine) == before

    # the role can write: the real job, enqueued by the CLI and run by a pool logged in as it
    job = run_cli(db_url, "enqueue", "backfill-range", "--handler", "raw_linkset", *RANGE, "--where", LACKING,
                  "--batch-size", "40", "--owner", "tests", env=ENV).stdout.strip()
    run_cli(roles["worker"], "worker", "--drain", "--poll", "0.1", env=ENV)
    row = job_row(engine, job)
    assert (row.status, row.processed_count, row.error_count) == ("done", lacking, 1)
    assert snapshot(engine) == backfilled(before_rows)


@pytest.mark.parametrize("handler", ["tests.rehearsal_handlers:commits_in_write",
                                     "tests.rehearsal_handlers:commit_per_row"])
def test_a_handler_that_commits_in_a_dry_run_is_stopped_and_nothing_is_written(engine, db_url, handler):
    """As the superuser: an ItemHandler whose write commits, and a per-row function that sends COMMIT itself
    and writes again. The dry run's COMMIT guard fails their commit, every later transaction of the session is
    read-only, and the dry run says what the handler did; every table is as it was."""
    seed(engine)
    before = state(engine)
    out = dry_run(db_url, "--handler", handler, "--source", "concelier.advisory_observations", "--key", "created_at",
                  "--sample", "20", check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "the handler ended the dry run's transaction" in out.stderr and "nothing was written" in out.stderr
    assert state(engine) == before


def test_a_sql_handler_with_side_effects_is_rehearsed_and_rolled_back_under_the_real_run_s_checks(
        engine, db_url, roles, tmp_path):
    """A SQL handler whose statement calls a function that writes another table (and takes sequence values):
    as a sql author who may write, the rehearsal counts the writes of both tables and keeps none of them. As an
    enqueuer who is no sql author it is refused before anything runs (exit 6); a sql author without UPDATE
    must pass the plan check (exit 6), and then runs with that login's own privileges, never the worker's:
    the function's INSERT it may not make is reported as the batch that would fail."""
    seed(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE concelier.seen_log (n serial PRIMARY KEY, id bigint)"))
        conn.execute(text("CREATE FUNCTION concelier.note_seen(i bigint) RETURNS bigint LANGUAGE plpgsql AS"
                          " $$ BEGIN INSERT INTO concelier.seen_log (id) VALUES (i); RETURN 0; END $$"))
    statement = tmp_path / "bump.sql"
    statement.write_text("UPDATE concelier.advisory_observations SET version = version + concelier.note_seen(id)"
                         " WHERE created_at > :lo AND created_at <= :hi")
    args = ("--handler", f"sql:{statement}", "--source", "concelier.advisory_observations", "--key", "created_at",
            "--sample", "25", "--json")
    before = state(engine, "concelier.seen_log")

    report = json.loads(dry_run(db_url, *args).stdout)  # the superuser: a sql author who may write everything
    assert report["sample"]["written"] == {"concelier.advisory_observations": {"inserted": 0, "updated": 25,
                                                                                 "deleted": 0},
                                           "concelier.seen_log": {"inserted": 25, "updated": 0, "deleted": 0}}
    assert report["sample"]["would_fail"] == 0 and report["seconds_per_row"] > 0
    assert state(engine, "concelier.seen_log") == before

    for login in ("enqueue", "author"):
        grant_observations(engine, f"{roles['prefix']}{login}", "SELECT")
    refused = dry_run(roles["enqueue"], *args, env=role_env(roles), check=False)
    assert refused.returncode == 6 and "is not a member of" in refused.stderr
    unplanned = dry_run(roles["author"], *args, env=role_env(roles), check=False)  # the plan check, as at enqueue
    assert unplanned.returncode == 6 and "does not plan: permission denied" in unplanned.stderr
    grant_observations(engine, f"{roles['prefix']}author", "UPDATE")  # but nothing on seen_log
    own_rights = json.loads(dry_run(roles["author"], *args, env=role_env(roles)).stdout)
    failures = own_rights["sample"]["failures"]
    assert own_rights["sample"]["would_fail"] == 25 and all(f["error_type"] == "batch" for f in failures)
    assert "InsufficientPrivilege [42501]: permission denied" in failures[0]["message"]
    assert state(engine, "concelier.seen_log") == before


def test_a_dry_run_imports_only_handlers_the_deployment_loaded(engine, db_url):
    seed(engine)
    before = state(engine)
    for handler in ("os:system", "tests.not_loaded:anything"):
        out = dry_run(db_url, "--handler", handler, "--source", "concelier.advisory_observations",
                      "--key", "created_at", check=False)
        assert out.returncode == 2 and "is not available" in out.stderr
    assert state(engine) == before


def test_a_handler_waiting_on_a_lock_ends_at_the_dry_run_s_deadline_with_a_clear_message(engine, db_url):
    """Another session holds the rows' locks: the handler's UPDATE waits until the dry run's statement
    timeout (its deadline) cancels it. The dry run exits 1 with the reason; nothing was written."""
    seed(engine)
    before = state(engine)
    with engine.connect() as holder:
        holder.execute(text("SELECT 1 FROM concelier.advisory_observations FOR UPDATE"))
        out = dry_run(db_url, "--handler", "tests.rehearsal_handlers:update_row", "--source",
                      "concelier.advisory_observations", "--key", "created_at", "--sample", "5", "--deadline", "2",
                      check=False)
        holder.rollback()
    assert out.returncode == 1, out.stdout + out.stderr
    assert "ran past its deadline of 2s (--deadline) and its statement was cancelled" in out.stderr
    assert state(engine) == before


def test_a_handler_hanging_in_python_is_given_up_on_after_the_deadline_and_its_writes_roll_back(engine, db_url):
    """The handler writes, then sleeps in Python: no statement to cancel. The dry run gives up on it after its
    deadline and a grace, says so, and exits 1; the server rolls the write back as the connection closes."""
    seed(engine)
    before = state(engine)
    out = dry_run(db_url, "--handler", "tests.rehearsal_handlers:hang", "--source", "concelier.advisory_observations",
                  "--key", "created_at", "--sample", "3", "--deadline", "1", check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "did not come back" in out.stderr and "nothing was written" in out.stderr
    wait_for(lambda: scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
                                    " AND datname = current_database()") == 0, what="the dry run's backend to go")
    assert state(engine) == before


# -- 7. filters on JSON content -----------------------------------------------------------------------


def test_seed_001_lacking_rawlinkset_is_a_filter_and_processed_count_counts_only_those(engine, db_url):
    """The seed's pre-check (`rawLinkset: {$exists: false}`) as the job's own filter: the job reads only the
    observations lacking the field, counts only them, and leaves the table as a clean run does."""
    seed(engine)
    before_rows = snapshot(engine)
    lacking = HISTORICAL - len(HAVE_IT)
    assert scalar(engine, "SELECT count(*) FROM concelier.advisory_observations WHERE created_at < '2025-10-31'"
                          " AND NOT document ? 'rawLinkset'") == lacking
    job = run_cli(db_url, "enqueue", "backfill-range", "--handler", "raw_linkset", *RANGE, "--where", LACKING,
                  "--batch-size", "40", "--concurrency", "2", "--owner", "tests", env=ENV).stdout.strip()
    run_cli(db_url, "worker", "--concurrency", "2", "--drain", "--poll", "0.1", env=ENV)
    row = job_row(engine, job)
    assert (row.status, row.total_estimate, row.processed_count, row.error_count) == ("done", lacking, lacking, 1)
    # a filter on a nested value, run after the first job: run beside it, it could fill document 7 first and
    # take it out of the first job's filter (a race of two jobs on one row, not a miscount)
    everything = run_cli(db_url, "enqueue", "backfill-range", "--handler", "raw_linkset", *RANGE, "--where",
                         "document.upstream.documentId = GHSA-0007-q2w3", "--owner", "tests", env=ENV).stdout.strip()
    run_cli(db_url, "worker", "--concurrency", "2", "--drain", "--poll", "0.1", env=ENV)
    assert job_row(engine, everything).processed_count == 1  # one document has that upstream id
    assert snapshot(engine) == backfilled(before_rows)
    # the parity check: the processed rows match the filter no more (the handler filled the field), so the
    # count lies between the rows matching now (the bad one) and all the rows of the range
    verified = run_cli(db_url, "verify", job[:8], env=ENV).stdout
    assert f"processed_count {lacking}: 1 rows of the processed ranges match the job's where now, {HISTORICAL}" in verified
    assert "ok   sample recomputed: 50 source rows recomputed, 0 mismatch(es)" in verified
    assert json.loads(dry_run(db_url, "--handler", "raw_linkset", "--where", LACKING, "--sample", "0",
                              "--json").stdout)["rows"] == 1  # only the bad one lacks it now


DOCS = {1: {"a": 1}, 2: {"a": None}, 3: {}, 4: {"a": {"b": "x"}}, 5: {"a": "1"}, 6: {"a": True}, 7: None,
        8: {"a": [1]}, 9: {"it's": "q", "'; drop table docs; --": "y", "ключ": {"é": "ü"}}}


@pytest.fixture
def docs(engine: Engine) -> Engine:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE docs (k bigint PRIMARY KEY, doc jsonb, plain text DEFAULT 'x')"))
        conn.execute(text("CREATE TABLE processed_log (k bigint NOT NULL, pid int, at timestamptz DEFAULT now())"))
        conn.execute(text("INSERT INTO docs (k, doc) VALUES (:k, CAST(:d AS jsonb))"),
                     [{"k": k, "d": None if d is None else json.dumps(d)} for k, d in DOCS.items()])
    return engine


WHERES = [
    ("doc.a is null", {2, 3, 7, 9}),  # absent, JSON null, a NULL column
    ("doc.a is not null", {1, 4, 5, 6, 8}),
    ("doc.a = 1", {1, 5}),  # the text at the path: the number 1 and the string "1" alike
    ("doc.a != 1", {4, 6, 8}),  # a missing key matches neither = nor !=
    ("doc.a in true,x", {6}),
    ("doc.a.b = x", {4}),
    ("doc.a.0 = 1", {8}),  # an array index is an element too, as #>> reads it
    ("doc.it's = q", {9}),
    ("doc.ключ.é = ü", {9}),
]


def test_json_path_semantics(docs):
    """What each form matches, counted by the job's own plan (the CLI's dry run and the worker plan so)."""
    from tidegate.jobs import filters
    from tidegate.jobs.backfill_range import BackfillRange

    with docs.connect() as conn:
        for where, keys in WHERES:
            payload = {"source": "docs", "key": "k", "from": 1, "to": 100, "handler": "hero_troops",
                       "owner": "tests", "where": [filters.parse(where)]}
            assert BackfillRange().plan(conn, payload).total_estimate == len(keys), where
            conn.rollback()


def test_hostile_json_paths_are_bound_or_refused_and_nothing_is_written(docs, db_url, engine):
    """Quotes, a '; drop and unicode are keys looked up through a bound text[]: they match the one document
    holding them, and the table is still there. 1000 elements, an empty element, a control character,
    ordering on a path and a path on a column that is not jsonb are refused, by the CLI with exit 2 and in a
    payload by failing the job, with nothing written."""
    payload = {"source": "docs", "key": "k", "from": 1, "to": 100, "handler": "tests.handlers:log_all",
               "where": [{"field": "doc", "path": ["'; drop table docs; --"], "op": "=", "value": "y"}]}
    with engine.begin() as conn:
        bound = conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('backfill_range', CAST(:p AS jsonb))"
                                  " RETURNING id"), {"p": json.dumps(payload)}).scalar_one()
    run_cli(db_url, "worker", "--drain", "--poll", "0.1")
    assert job_row(engine, str(bound)).processed_count == 1
    assert scalar(engine, "SELECT array_agg(k) FROM processed_log") == [9]
    assert scalar(engine, "SELECT count(*) FROM docs") == len(DOCS)

    before = state_of_queue(engine)
    for where, says, dry in [("doc." + ".".join(["a"] * 1000) + " is null", "1 to 32 elements", []),
                             ("doc..a is null", "must be a non-empty string", ["--dry-run"]),
                             ("doc.a < 3", "would compare text", []),
                             ("plain.a is null", "is of type text: a JSON path", ["--dry-run"]),
                             ("plain.a is null", "is of type text: a JSON path", []),
                             ("nope.a is null", "does not exist", [])]:
        out = run_cli(db_url, "enqueue", "backfill-range", "--source", "docs", "--key", "k", "--from", "1", "--to",
                      "100", "--handler", "tests.handlers:log_all", "--owner", "tests", "--where", where, *dry,
                      check=False)
        assert out.returncode == 2 and says in out.stderr, (where, out.stderr)
    assert state_of_queue(engine) == before

    jobs = {}
    for bad_path, says in [(["a\x01b"], "control character"), (["a"] * 33, "1 to 32 elements"), ([], "1 to 32"),
                           ("a", "1 to 32"), ([7], "non-empty string")]:
        payload["where"] = [{"field": "doc", "path": bad_path, "op": "is null"}]
        with engine.begin() as conn:
            jobs[conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('backfill_range',"
                                   " CAST(:p AS jsonb)) RETURNING id"), {"p": json.dumps(payload)}).scalar_one()] = says
    run_cli(db_url, "worker", "--drain", "--poll", "0.1")
    with engine.connect() as conn:
        for job, says in jobs.items():
            status, error = conn.execute(text("SELECT status, last_error FROM queue_jobs WHERE id = :j"),
                                         {"j": job}).one()
            assert status == "failed" and says in error, (says, error)
    assert scalar(engine, "SELECT array_agg(k) FROM processed_log") == [9]


def state_of_queue(engine: Engine) -> tuple:
    with engine.connect() as conn:
        return tuple(conn.execute(text("SELECT (SELECT count(*) FROM queue_jobs), (SELECT count(*) FROM backfill_jobs),"
                                       " (SELECT count(*) FROM processed_log), (SELECT count(*) FROM tidegate_audit)"
                                       )).one())


