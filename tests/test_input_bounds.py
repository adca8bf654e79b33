"""What people really type, bounded: database URLs, an unmigrated database, hostile knob values, huge values.

Each gets one line and its exit code (2: bad input, 5: the database is not ready), no traceback, nothing
written; a payload inserted by SQL fails its job at planning with a short, clear last_error. Every knob's
range at every entry point is tests/test_knobs.py's; here are what JSON and the real process add.
"""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests import pg
from tests.conftest import run_cli, scalar
from tests.fixtures import seed_demo
from tidegate.worker import kinds, schema, throttle
from tidegate.worker.cliutil import Database
from tidegate.worker.db import make_engine, mask_url
from tidegate.worker.errors import MESSAGE_CHARS, InvalidInput, SchemaNotReady, quote
from tidegate.worker.knobs import KNOBS, MAX_BATCH
from tidegate.worker.store import Knobs

SECRET = "pw-s3cret"
MB = "x" * 1_000_000


@pytest.fixture(scope="module")
def cli():  # type: ignore[no-untyped-def]
    """The whole CLI in process (job kinds' commands included): one interpreter start per case would
    cost a second each. run_cli turns the TidegateError these raise into its exit code."""
    from tidegate.worker import cli as cli_module

    for command in kinds.plugin_commands():
        group = cli_module.enqueue if getattr(command, "tidegate_enqueue", False) else cli_module.cli
        if command.name not in group.commands:
            group.add_command(command)
    return cli_module.cli


def invoke(cli, args: list[str], env: dict[str, str | None] | None = None) -> BaseException | None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(cli, args, env=env)
    return result.exception


# -- database URLs ------------------------------------------------------------------

BAD_URLS = [
    ("mysql", f"mysql://u:{SECRET}@localhost/db", "'mysql' is not PostgreSQL"),
    ("sqlite", "sqlite:///tmp/x.db", "'sqlite' is not PostgreSQL"),
    ("no-scheme", "localhost/db", "no scheme"),
    ("key-value", f"host=localhost dbname=db password={SECRET}", "no scheme"),
    ("port-too-big", "postgresql://localhost:99999/db", "port '99999' is not a port number"),
    ("port-zero", "postgresql://localhost:0/db", "port '0' is not a port number"),
    ("port-text", "postgresql://localhost:abc/db", "port 'abc' is not a port number"),
    ("port-of-second-host", "postgresql://a:5432,b:x/db", "port 'x' is not a port number"),
    ("at-in-password", f"postgresql://u:{SECRET}@x@localhost/db", "percent-encode them"),
    ("slash-in-password", f"postgresql://u:{SECRET}/x@localhost/db", "percent-encode them"),
    ("space-in-password", "postgresql://u:pw s3cret@localhost/db", "percent-encoded spaces"),
    ("bad-percent", "postgresql://u:pw%s3cret@localhost/db", "invalid percent-encoded token"),
    ("unknown-parameter", "postgresql://localhost/db?colour=blue", "invalid URI query parameter"),
    ("empty", "", "is empty"),
    ("blank", "   ", "is empty"),
    ("megabyte", MB, "no scheme"),
]


@pytest.mark.parametrize("via", ["option", "env"])
@pytest.mark.parametrize("url,words", [c[1:] for c in BAD_URLS], ids=[c[0] for c in BAD_URLS])
def test_a_malformed_database_url_is_one_line_exit_2_with_the_password_masked(cli, url, words, via):
    if via == "option":
        err = invoke(cli, ["status", "--database-url", url], env={"DATABASE_URL": None})
    else:
        err = invoke(cli, ["status"], env={"DATABASE_URL": url})
    assert isinstance(err, InvalidInput) and err.exit_code == 2, err
    message = str(err)
    assert words in message and ("DATABASE_URL" if via == "env" else "--database-url") in message
    assert SECRET not in message and "s3cret" not in message
    assert "\n" not in message and len(message) < 600


@pytest.mark.parametrize("args", [["status"], ["worker", "--drain"], ["db", "upgrade"], ["set", "abc", "--concurrency", "2"],
                                  ["enqueue", "backfill-range", "--from", "1", "--to", "2", "--owner", "qa"]],
                         ids=["status", "worker", "db-upgrade", "set", "enqueue"])
def test_every_command_refuses_a_mysql_url_without_a_traceback(args):
    proc = run_cli(f"mysql://u:{SECRET}@localhost/db", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "is not PostgreSQL" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


# -- an unmigrated (or older) database ----------------------------------------------------


def test_a_worker_on_an_unmigrated_database_exits_5_at_once_even_with_drain(empty_db):
    for args in (["worker", "--drain"], ["worker"], ["status"], ["pause", "--all"],
                 ["enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2024-02-01", "--owner", "qa"]):
        proc = run_cli(empty_db, *args, check=False, timeout=60)  # the worker without --drain used to wait forever
        assert proc.returncode == 5, (args, proc.stderr)
        assert proc.stderr.strip().splitlines() == [
            f"error: database {mask_url(empty_db)} has no tidegate tables: run `tidegate db upgrade`"], proc.stderr
    with make_engine(empty_db).connect() as conn:  # nothing was created by trying
        assert conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar_one() == 0


def test_a_database_at_an_older_revision_exits_5_with_both_revisions(empty_db):
    run_cli(empty_db, "db", "upgrade", "0002")
    head = ",".join(schema.revisions()[0])
    proc = run_cli(empty_db, "worker", "--drain", check=False, timeout=60)
    assert proc.returncode == 5
    assert f"is at schema revision 0002, this tidegate needs {head}: run `tidegate db upgrade`" in proc.stderr
    run_cli(empty_db, "db", "upgrade")
    assert run_cli(empty_db, "worker", "--drain").returncode == 0


def test_the_message_says_when_the_database_is_the_embedded_default(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("TIDEGATE_HOME", str(tmp_path))
    assert Database(None).described == (f"the embedded database in {tmp_path / 'pgdata'} (the default: no"
                                        " --database-url or DATABASE_URL given)")
    monkeypatch.setenv("DATABASE_URL", "embedded")
    assert Database(None).described == f"the embedded database in {tmp_path / 'pgdata'}"
    assert Database("postgresql://u:pw@h/db").described == "database postgresql://u:***@h/db"
    assert SchemaNotReady.exit_code == 5


# -- knobs out of range, through the real process -----------------------------------------------


def test_set_refuses_1e_minus_300_through_the_real_cli_and_changes_nothing(engine, db_url):
    seed_demo(engine, 50)
    job = run_cli(db_url, "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2024-02-01",
                  "--owner", "qa", "--limit", "10").stdout.strip()
    run_cli(db_url, "worker", "--drain")
    before = scalar(engine, "SELECT to_jsonb(j) - 'updated_at' FROM backfill_jobs j")
    proc = run_cli(db_url, "set", job[:8], "--max-rows-per-second", "1e-300", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == ("error: --max-rows-per-second must be between 0.001 and 1e+09, got 1e-300;"
                           " or give 'none' to lift it\n")
    assert scalar(engine, "SELECT to_jsonb(j) - 'updated_at' FROM backfill_jobs j") == before
    assert scalar(engine, "SELECT count(*) FROM tidegate_audit WHERE action = 'set'") == 0


# -- the same bounds for payloads inserted by SQL, and for a runbook's UPDATE ---------------------

GOOD = {"from": "2024-01-01T00:00:00Z", "to": "2024-02-01T00:00:00Z", "batch_size": 100, "owner": "qa"}
# what JSON adds to every knob's range (tests/test_knobs.py): numbers Python reads oddly, text, a boolean
PAYLOADS = [
    # jsonb keeps 1e400 as a 401-digit integer: too big for a float
    ("rate-1e400", "max_rows_per_second_1e400", "max_rows_per_second must be between 0.001 and 1e+09, got 1000"),
    ("rate-text-nan", {"max_rows_per_second": "nan"}, "max_rows_per_second must be between 0.001 and 1e+09"),
    ("rate-text-inf", {"max_rows_per_second": "Infinity"}, "max_rows_per_second must be between"),
    ("batch-int8", {"batch_size": 2**63}, "batch_size must be between 1 and 100000"),
    ("row-limit-beyond-int8", {"row_limit": 2**64}, "row_limit must be between 1 and 1000000000000000"),
    ("batch-5000-digits", "batch_size_5000_digits", "batch_size must be an integer between 1 and 100000, got"),
    ("rate-bool", {"max_rows_per_second": True}, "max_rows_per_second must be a number between"),
]


def _payload_text(spec: object) -> str:
    if spec == "max_rows_per_second_1e400":  # JSON allows it; Python reads it as inf
        return json.dumps(GOOD)[:-1] + ', "max_rows_per_second": 1e400}'
    if spec == "batch_size_5000_digits":
        return json.dumps({**GOOD, "batch_size": "9" * 5000})
    return json.dumps({**GOOD, **spec})  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def planned(pg_server, template):  # type: ignore[no-untyped-def]
    """Every hostile payload inserted by SQL among a good one, then one pool run."""
    with pg.cloned(pg_server, template) as (url, engine):
        seed_demo(engine, 300)
        ids = {}
        with engine.begin() as conn:
            cases = [*[(c, _payload_text(spec)) for c, spec, _ in PAYLOADS], ("good", json.dumps(GOOD)),
                     ("owner-1mb", json.dumps({**GOOD, "owner": MB})),
                     ("handler-1mb", json.dumps({**GOOD, "handler": MB})),
                     ("source-1mb", json.dumps({**GOOD, "source": MB})), ("field-1mb", json.dumps({**GOOD, MB: 1})),
                     ("from-1mb", json.dumps({**GOOD, "from": MB}))]
            for case, payload in cases:
                ids[case] = str(conn.execute(text(
                    "INSERT INTO queue_jobs (type, payload) VALUES ('backfill_range', CAST(:p AS jsonb)) RETURNING id"),
                    {"p": payload}).scalar_one())
        pool = run_cli(url, "worker", "--concurrency", "2", "--drain")
        yield engine, ids, pool


def _queue_row(engine, job_id: str):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(text("SELECT status, last_error FROM queue_jobs WHERE id = :i"), {"i": job_id}).one()


@pytest.mark.parametrize("case,words", [(c, w) for c, _, w in PAYLOADS], ids=[c for c, _, _ in PAYLOADS])
def test_a_payload_inserted_by_sql_with_a_knob_out_of_range_fails_at_planning(planned, case, words):
    engine, ids, _ = planned
    row = _queue_row(engine, ids[case])
    assert row.status == "failed" and row.last_error.startswith("invalid job: ") and words in row.last_error
    assert len(row.last_error) < 400


@pytest.mark.parametrize("case", ["owner-1mb", "handler-1mb", "source-1mb", "field-1mb", "from-1mb"])
def test_a_megabyte_value_is_quoted_short_in_last_error_and_the_log(planned, case):
    engine, ids, pool = planned
    row = _queue_row(engine, ids[case])
    assert row.status == "failed" and "(1,000,000 characters)" in row.last_error
    assert len(row.last_error) < 600
    assert "x" * 1000 not in pool.stdout + pool.stderr


def test_the_good_job_among_them_runs_and_nothing_else_is_planned(planned):
    engine, ids, _ = planned
    assert _queue_row(engine, ids["good"]).status == "done"
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE planned") == 1
    # the others' rows, made at enqueue (migration 0013), followed their queue rows to failed, with the reason
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE NOT planned AND status = 'failed'"
                          " AND status_reason LIKE 'invalid job: %'") == len(ids) - 1
    assert scalar(engine, "SELECT count(*) FROM queue_jobs WHERE status = 'failed'") == len(ids) - 1


# NaN and infinities, which no knob's range holds (tests/test_knobs.py tries every knob's edges)
RUNBOOK_UPDATES = [
    ("max_rows_per_second = 'NaN'", "max_rows_per_second_range"),
    ("max_rows_per_second = 'Infinity'", "max_rows_per_second_range"),
    ("target_batch_seconds = 'Infinity'", "target_batch_seconds_range"),
    ("sleep_between_batches = 'NaN'", "sleep_between_batches"),
    ("error_rate_threshold = 'NaN'", "error_rate_threshold"),
]


@pytest.mark.parametrize("assignment,constraint", RUNBOOK_UPDATES, ids=[a for a, _ in RUNBOOK_UPDATES])
def test_a_runbook_update_out_of_range_is_refused_by_a_check_constraint(planned, assignment, constraint):
    engine, ids, _ = planned
    with pytest.raises(IntegrityError, match=constraint), engine.begin() as conn:
        conn.execute(text(f"UPDATE backfill_jobs SET {assignment}"))


def test_the_migration_pulls_existing_rows_into_range_and_audits_it(empty_db):
    run_cli(empty_db, "db", "upgrade", "0004")
    engine = make_engine(empty_db)
    with engine.begin() as conn:
        for i, values in enumerate(["1000000, 100, 1e-300, 'NaN', 1000000000000000000, 200000, 300000",
                                    "500, 2, 10, 1, 5, 1, 100"]):
            job = f"{i}1111111-1111-1111-1111-111111111111"
            conn.execute(text("INSERT INTO queue_jobs (id, type) VALUES (:j, 'backfill_range')"), {"j": job})
            conn.execute(text("INSERT INTO backfill_jobs (job_id, kind, batch_size, concurrency, max_rows_per_second,"
                              " target_batch_seconds, row_limit, min_batch_size, max_batch_size)"
                              f" VALUES (:j, 'backfill_range', {values})"), {"j": job})
    run_cli(empty_db, "db", "upgrade")
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(
            "SELECT batch_size, concurrency, max_rows_per_second, target_batch_seconds, row_limit, min_batch_size,"
            " max_batch_size FROM backfill_jobs ORDER BY job_id"))]
        audit = conn.execute(text("SELECT actor, action, job_id::text, details FROM tidegate_audit")).all()
    assert rows == [(100_000, 64, 0.001, None, 10**15, 100_000, 100_000), (500, 2, 10, 1, 5, 1, 100)]
    assert len(audit) == 1 and audit[0][:3] == ("migration 0009", "clamp-knobs", "01111111-1111-1111-1111-111111111111")
    assert audit[0][3]["batch_size"] == 1_000_000 and audit[0][3]["target_batch_seconds"] == "NaN"
    run_cli(empty_db, "db", "downgrade", "0004")  # and back
    engine.dispose()


# -- the runtime, whatever slipped past ------------------------------------------------------------

SLIPPED = [Knobs(500, 1, 1e-300), Knobs(500, 1, math.inf), Knobs(500, 1, math.nan), Knobs(500, 1, -5.0),
           Knobs(10**9, 10**6, None, math.nan, math.nan, 0, 10**9, 10**30),
           Knobs(100_000, 64, 0.001), Knobs(500, 0, 10.0, math.inf, math.inf), Knobs(-3, -3, None, -1.0, -1.0)]


@pytest.mark.parametrize("knobs", SLIPPED, ids=[str(i) for i in range(len(SLIPPED))])
def test_the_throttle_never_crashes_on_a_knob_that_slipped_past(knobs):
    wait = throttle.pause_after(knobs, 1e12)
    assert 0 <= wait <= throttle.MAX_PAUSE
    assert 1 <= throttle.batch_size(knobs, None, 0) <= MAX_BATCH
    sane = throttle.sane(knobs)
    for name, bound in KNOBS.items():
        value = getattr(sane, name, None)
        assert value is None or bound.lo <= value <= bound.hi, (name, value)
    if knobs.target_batch_seconds:
        box = throttle.TimeBox(knobs, None, 1000)
        assert 1 <= box.first_step() <= 1000 and box.next_step(10, 0.1, 0.1) >= 0
        assert throttle.statement_timeout_ms(knobs) <= 2**31 - 1


def test_quote_keeps_a_few_hundred_characters_of_anything():
    assert quote(MB).endswith("... (1,000,000 characters)") and len(quote(MB)) < 300
    assert quote(10**5000) == "an integer of about 5,000 digits"
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    assert quote(nested) == "a list nested too deep to show"
    assert len(str(InvalidInput(MB))) <= MESSAGE_CHARS


def test_the_schema_check_reads_the_same_revisions_as_alembic():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from tests.conftest import ROOT

    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"), ini_section="alembic"))
    heads, every = schema.revisions()
    assert heads == tuple(sorted(script.get_heads()))
    assert every == {r.revision for r in script.walk_revisions()}
