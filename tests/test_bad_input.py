"""Bad input gets a clear error and changes nothing: payloads by SQL, CLI flags, hostile names."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests import pg
from tests.conftest import ROOT, run_cli, scalar
from tests.event_stores import build, fingerprint
from tests.fixtures import seed_demo
from tidegate.worker.db import make_engine

pytestmark = pytest.mark.xdist_group("bad_input")

OK = {"from": "2024-01-01T00:00:00Z", "to": "2024-02-01T00:00:00Z", "batch_size": 100, "owner": "qa"}

# (case id, job type, payload as JSON text, words the job's last_error must contain)
SQL_CASES = [
    ("array-payload", "backfill_range", "[1, 2]", "must be a JSON object"),
    ("string-payload", "backfill_range", '"run it"', "must be a JSON object"),
    ("null-payload", "backfill_range", "null", "must be a JSON object"),
    ("missing-range", "backfill_range", '{"batch_size": 10, "owner": "qa"}', "missing 'from'"),
    ("missing-to", "backfill_range", '{"from_created_at": "2024-01-01T00:00:00Z"}', "missing 'to'"),
    ("reversed-range", "backfill_range", json.dumps({**OK, "from": "2024-06-01T00:00:00Z"}), "empty or reversed"),
    ("empty-range", "backfill_range", json.dumps({**OK, "to": OK["from"]}), "empty or reversed"),
    ("unknown-handler", "backfill_range", json.dumps({**OK, "handler": "no_such_handler"}), "unknown handler"),
    ("handler-of-a-module-not-loaded", "backfill_range", json.dumps({**OK, "handler": "os:no_such"}), "is not available"),
    ("not-a-handler", "backfill_range", json.dumps({**OK, "handler": "tests.handlers:not_a_handler"}),
     "its module is loaded, but a handler is a public function"),
    ("batch-size-bool", "backfill_range", json.dumps({**OK, "batch_size": True}), "batch_size must be an integer"),
    ("typo-field", "backfill_range", json.dumps({**OK, "batchsize": 5}), "unknown payload field(s): batchsize"),
    ("from-not-a-time", "backfill_range", json.dumps({**OK, "from": "yesterday"}), "ISO 8601"),
    ("int-range-on-time-key", "backfill_range", json.dumps({**OK, "from": 5}), "ISO 8601"),
    ("injection-in-source", "backfill_range",
     json.dumps({**OK, "source": "hero_snapshots; DROP TABLE user_troops"}), "does not exist"),
    ("quote-in-source", "backfill_range", json.dumps({**OK, "source": 'hero"snapshots'}), "does not exist"),
    ("unicode-source", "backfill_range", json.dumps({**OK, "source": "hérö_snäpshots"}), "does not exist"),
    ("injection-in-key", "backfill_range", json.dumps({**OK, "key": "created_at) OR (1=1"}), "does not exist"),
    ("unindexed-key", "backfill_range", json.dumps({**OK, "key": "size_bytes", "from": 1, "to": 9}), "no index"),
    ("text-key", "backfill_range", json.dumps({**OK, "source": "hero_snapshots", "key": "namecode"}),
     "not supported"),
    ("sql-with-other-binds", "backfill_range",
     json.dumps({**OK, "sql": "DELETE FROM user_troops WHERE user_id > :x"}), "must use the bind parameters"),
    ("sql-that-does-not-plan", "backfill_range",
     json.dumps({**OK, "sql": "INSERT INTO nowhere SELECT :lo, :hi"}), "does not plan"),
    ("sql-two-statements", "backfill_range",
     json.dumps({**OK, "sql": "SELECT CAST(:lo AS timestamptz); DROP TABLE user_troops; SELECT CAST(:hi AS timestamptz)"}),
     "one statement only"),
    ("sql-postgres-casts", "backfill_range",
     json.dumps({**OK, "sql": "SELECT :lo::timestamptz, :hi::timestamptz"}), "not :lo::type"),
    ("sql-and-handler", "backfill_range", json.dumps({**OK, "sql": "SELECT 1", "handler": "hero_troops"}),
     "give one of handler, sql or sql_approved"),
    ("empty-owner", "backfill_range", json.dumps({**OK, "owner": " "}), "owner must be"),
    ("unknown-type", "backfill_rnge", json.dumps(OK), "unknown job type 'backfill_rnge'"),
]


def _insert_and_run(engine, url: str, cases: list[tuple[str, str, str, str]]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Each case's payload inserted by SQL, as a user would, then one pool run over them; ids by case."""
    ids = {}
    with engine.begin() as conn:
        for case, job_type, payload, _ in cases:
            ids[case] = str(conn.execute(text(
                "INSERT INTO queue_jobs (type, payload) VALUES (:t, CAST(:p AS jsonb)) RETURNING id"),
                {"t": job_type, "p": payload}).scalar_one())
    run_cli(url, "worker", "--concurrency", "2", "--drain")
    return ids


@pytest.fixture(scope="module")
def rejected(pg_server, template):  # type: ignore[no-untyped-def]
    """Every bad payload inserted by SQL, then one worker pool run over them."""
    name = pg.clone(pg_server, template)
    url = pg.with_database(pg_server, name)
    engine = make_engine(url)
    seed_demo(engine, 500)
    ids = _insert_and_run(engine, url, SQL_CASES)
    yield engine, ids
    engine.dispose()
    pg.drop(pg_server, name)


@pytest.mark.parametrize("case,job_type,payload,words", SQL_CASES, ids=[c[0] for c in SQL_CASES])
def test_malformed_payload_inserted_by_sql_fails_the_job_clearly(rejected, case, job_type, payload, words):
    engine, ids = rejected
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, last_error FROM queue_jobs WHERE id = :i"), {"i": ids[case]}).one()
    assert row.status == "failed"
    assert words in row.last_error and row.last_error.startswith("invalid job:")


def test_rejected_payloads_touch_no_data(rejected):
    engine, ids = rejected
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE planned") == 0
    assert scalar(engine, "SELECT count(*) FROM user_troops") == 0
    assert scalar(engine, "SELECT count(*) FROM hero_snapshots") == 500
    assert scalar(engine, "SELECT count(*) FROM queue_jobs WHERE status <> 'failed'") == 0


@pytest.mark.parametrize(
    "sql,constraint",
    [
        ("INSERT INTO queue_jobs (type, status) VALUES ('backfill_range', 'runing')", "queue_jobs_status_check"),
        ("INSERT INTO queue_jobs (type) VALUES ('x; DROP TABLE queue_jobs')", "queue_jobs_type_check"),
        ("INSERT INTO queue_jobs (type, max_attempts) VALUES ('backfill_range', 0)", "queue_jobs_max_attempts_check"),
    ],
    ids=["status-typo", "type-injection", "max-attempts-zero"],
)
def test_the_database_refuses_values_that_do_not_exist(engine, sql, constraint):
    with pytest.raises(IntegrityError, match=constraint), engine.begin() as conn:
        conn.execute(text(sql))


def test_a_status_typo_in_a_manual_update_is_refused(engine, db_url):
    seed_demo(engine, 50)
    run_cli(db_url, "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2024-02-01", "--owner", "qa")
    run_cli(db_url, "worker", "--drain")
    with pytest.raises(IntegrityError, match="backfill_jobs_status_check"), engine.begin() as conn:
        conn.execute(text("UPDATE backfill_jobs SET status = 'puased'"))


CLI_CASES = [
    (["--from", "2024-06-01", "--to", "2024-01-01"], "empty or reversed range"),
    (["--from", "2024-01-01", "--to", "2024-01-01"], "empty or reversed range"),
    (["--from", "2024-01-01", "--to", "2024-06-01", "--handler", "nope"], "unknown handler 'nope'"),
    (["--from", "soon", "--to", "2024-06-01"], "ISO 8601"),
    (["--from", "2024-01-01", "--to", "2024-06-01", "--source", "users; DROP TABLE queue_jobs"], "does not exist"),
    (["--from", "2024-01-01", "--to", "2024-06-01", "--key", "created_at\"; --"], "does not exist"),
    (["--from", "2024-01-01", "--to", "2024-06-01", "--handler", "sql:/no/such/file.sql"], "cannot read SQL file"),
    (["--to", "2024-06-01"], "Missing option '--from'"),
]


@pytest.mark.parametrize("args,words", CLI_CASES, ids=[f"cli-{i}" for i in range(len(CLI_CASES))])
def test_bad_enqueue_flags_are_refused_and_queue_nothing(engine, db_url, args, words):
    proc = run_cli(db_url, "enqueue", "backfill-range", "--owner", "qa", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 0
    assert scalar(engine, "SELECT count(*) FROM tidegate_audit") == 0


def test_operator_commands_refuse_unknown_jobs_and_types(engine, db_url):
    missing = run_cli(db_url, "pause", "00000000-0000-0000-0000-000000000000", check=False)
    assert missing.returncode == 3 and "no job" in missing.stderr
    hostile = run_cli(db_url, "resume", "x' OR '1'='1", check=False)
    assert hostile.returncode == 2 and "is not a job id" in hostile.stderr
    types = run_cli(db_url, "worker", "--types", "backfill_range,nope", "--drain", check=False)
    assert types.returncode == 2 and "unknown job type(s) nope" in types.stderr


# archive-range: flags, layout files and SQL payloads. Each: exit 2 with the words, nothing queued,
# the event store untouched.
GOOD_LAYOUT = (ROOT / "jobs/archive/layouts/tidegate.toml").read_text()
LAYOUT_FILES = {
    "toml-syntax": ("layout.toml", "strategy = move\n[streams", "layout.toml"),
    "yaml-not-a-table": ("layout.yaml", "- just\n- a list\n", "expected a table of settings"),
    "unknown-key": ("layout.toml", GOOD_LAYOUT.replace('strategy = "move"', 'strategy = "move"\nshred = true'),
                    "unknown key(s) shred"),
    "bad-strategy": ("layout.toml", GOOD_LAYOUT.replace('strategy = "move"', 'strategy = "truncate"'),
                     "strategy must be 'move' or 'flag'"),
    "missing-table": ("layout.toml", GOOD_LAYOUT.replace('table = "es_streams"', 'table = "no_such_streams"'),
                      "does not exist"),
    "semicolon-name": ("layout.toml", GOOD_LAYOUT.replace('table = "es_events"\n', 'table = "es_events; DROP TABLE'
                                                           ' es_streams"\n'), "does not exist"),
    "quote-name": ("layout.toml", GOOD_LAYOUT.replace('key = "id"', 'key = "id\\" OR 1=1 --"'), "does not exist"),
    "unicode-name": ("layout.toml", GOOD_LAYOUT.replace('archive_table = "es_events_archive"',
                                                        'archive_table = "es_évents_archivé"'), "does not exist"),
    "move-without-archive": ("layout.toml", GOOD_LAYOUT.replace('archive_table = "es_events_archive"\n', ''),
                             "strategy 'move' needs [events].archive_table"),
}
ARCHIVE_FLAGS = [
    (["--layout", "cassandra"], "not a shipped layout"),
    (["--layout", "tidegate", "--before", "last tuesday"], "ISO 8601"),
    (["--layout", "tidegate", "--where", "type ~~ x"], "expected FIELD OP VALUE"),
    (["--layout", "tidegate", "--where", "type; DROP TABLE es_events = 1"], "expected FIELD OP VALUE"),
    (["--layout", "tidegate", "--limit", "0"], "limit must be between 1"),
]


@pytest.fixture(scope="module")
def store(pg_server, template):  # type: ignore[no-untyped-def]
    """One database with tidegate's demo event store for every archive case (each checks it changed nothing)."""
    name = pg.clone(pg_server, template)
    url = pg.with_database(pg_server, name)
    engine = make_engine(url)
    build(engine, url, "tidegate", 20)
    yield engine, url, fingerprint(engine, "tidegate")
    engine.dispose()
    pg.drop(pg_server, name)


@pytest.mark.parametrize("case", sorted(LAYOUT_FILES))
def test_bad_layout_files_are_refused_and_change_nothing(store, tmp_path, case):
    engine, db_url, before = store
    queued = scalar(engine, "SELECT count(*) FROM queue_jobs")
    name, body, words = LAYOUT_FILES[case]
    path = tmp_path / name
    path.write_text(body)
    for command in (["discover"], ["enqueue", "archive-range", "--reason", "r", "--owner", "qa", "--apply", "--all", "--yes"]):
        proc = run_cli(db_url, *command, "--layout", str(path), check=False)
        assert proc.returncode == 2, (command, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == queued
    assert fingerprint(engine, "tidegate") == before


@pytest.mark.parametrize("args,words", ARCHIVE_FLAGS, ids=[f"archive-cli-{i}" for i in range(len(ARCHIVE_FLAGS))])
def test_bad_archive_flags_are_refused_and_queue_nothing(store, args, words):
    engine, db_url, before = store
    queued = scalar(engine, "SELECT count(*) FROM queue_jobs")
    proc = run_cli(db_url, "enqueue", "archive-range", *args, "--reason", "r", "--owner", "qa", "--apply", "--all", "--yes",
                   check=False)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == queued
    assert fingerprint(engine, "tidegate") == before


ARCHIVE_PAYLOADS = [
    ("not-an-object", "archive_range", '["tidegate"]', "must be a JSON object"),
    ("no-layout", "archive_range", '{"owner": "qa"}', "missing 'layout'"),
    ("unknown-layout", "archive_range", '{"layout": "cassandra"}', "not a shipped layout"),
    ("raw-sql-where", "archive_range", '{"layout": "tidegate", "where": "1=1; DROP TABLE es_events"}',
     "where must be a list"),
    ("from-audit-on-archive", "archive_range", '{"layout": "tidegate", "from_audit": "x"}', "from_audit is for"),
    ("bad-from-audit", "unarchive_range", '{"layout": "tidegate", "from_audit": "last run"}', "must be a job id"),
    ("hostile-layout-document", "archive_range",
     json.dumps({"layout": {**{"strategy": "move"}, "streams": {"table": "es_streams\"; DROP TABLE es_events; --"}}}),
     "invalid job:"),
]


def test_bad_archive_payloads_inserted_by_sql_fail_clearly_and_touch_nothing(store):
    engine, db_url, before = store
    ids = _insert_and_run(engine, db_url, ARCHIVE_PAYLOADS)
    with engine.connect() as conn:
        for case, _, _, words in ARCHIVE_PAYLOADS:
            row = conn.execute(text("SELECT status, last_error FROM queue_jobs WHERE id = :i"), {"i": ids[case]}).one()
            assert row.status == "failed" and row.last_error.startswith("invalid job:"), case
            assert words in row.last_error, (case, row.last_error)
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE planned") == 0
    assert scalar(engine, "SELECT count(*) FROM archive_candidates") == 0
    assert fingerprint(engine, "tidegate") == before
