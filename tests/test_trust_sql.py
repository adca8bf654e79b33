"""Ad-hoc SQL is a privilege (issue 13, point 2), tried as attackers logged in as the roles of ops/roles.sql.

A job's own statement runs only on a pool started with --allow-sql and only for an enqueuer in the
sql-author role, as recorded by the database; an approved file runs for anyone; validation never runs
the statement; no session setting a statement makes outlives its batch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, ProgrammingError

from tests.conftest import enqueue_items, role_env, run_cli, scalar
from tests.fixtures import LOG_HANDLER, make_items, seed_demo, troops_checksum
from tidegate.worker.db import make_engine

pytestmark = pytest.mark.slow

ITEMS = {"source": "items", "key": "k", "from": 0, "to": 1000, "batch_size": 50, "owner": "mallory"}
RANGE = "WHERE user_id > CAST(:lo AS bigint) AND user_id <= CAST(:hi AS bigint)"
DESTROY = f"UPDATE user_troops SET level = -1 {RANGE}"


def _setup(engine, roles) -> None:  # type: ignore[no-untyped-def]
    """items 1..100 and an empty processed_log, readable by enqueuers, writable by the worker."""
    make_items(engine, 100)
    p = roles["prefix"]
    with engine.begin() as conn:
        conn.execute(text(f"GRANT SELECT ON items TO {p}enqueue, {p}worker"))
        conn.execute(text(f"GRANT INSERT ON processed_log TO {p}worker"))


def _insert(url: str, payload: dict, **columns: str) -> str:
    """The runbook's enqueue INSERT, by the login of ``url``; extra columns as given."""
    eng = make_engine(url)
    try:
        names = "".join(f", {c}" for c in columns)
        values = "".join(f", :{c}" for c in columns)
        with eng.begin() as conn:
            return str(conn.execute(text(f"INSERT INTO queue_jobs (type, payload{names})"
                                         f" VALUES ('backfill_range', CAST(:p AS jsonb){values}) RETURNING id"),
                                    {"p": json.dumps(payload), **columns}).scalar_one())
    finally:
        eng.dispose()


def _job(engine, job_id: str):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(text("SELECT q.status AS queue_status, q.last_error, q.enqueued_by, j.status,"
                                 " j.processed_count, j.enqueued_by AS job_enqueued_by"
                                 " FROM queue_jobs q LEFT JOIN backfill_jobs j ON j.job_id = q.id AND j.planned WHERE q.id = :i"),
                            {"i": job_id}).one()


def _one_line_error(proc, code: int, words: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr, proc.stderr


# (case, who inserts it: enqueue | author, statement, words of the failed job's last_error)
ATTACKS = [
    ("destroy-as-enqueuer", "enqueue", DESTROY, "is not a member of"),
    ("analyze-update", "enqueue", f"ANALYZE {DESTROY}", "not ANALYZE"),
    ("explain-analyze", "author", f"EXPLAIN ANALYZE {DESTROY}", "not EXPLAIN"),
    ("analyze-update-by-author", "author", f"ANALYZE {DESTROY}", "not ANALYZE"),
    ("select-set-config", "author",
     "SELECT set_config('default_transaction_read_only', 'on', false), CAST(:lo AS bigint), CAST(:hi AS bigint)",
     "not SELECT"),
    ("set-config-inside-update", "author",
     f"{DESTROY} AND set_config('default_transaction_read_only', 'on', false) = 'on'", "may not call set_config()"),
    ("set-config-unicode-spelling", "author",
     f"{DESTROY} AND U&\"set\\005fconfig\"('default_transaction_read_only', 'on', false) = 'on'",
     "may not call set_config()"),
    ("dynamic-sql", "author", f"{DESTROY} AND query_to_xml('select 1', true, true, '') IS NOT NULL",
     "may not call query_to_xml()"),
    ("session-advisory-lock", "author", f"{DESTROY} AND pg_try_advisory_lock(42)", "may not call pg_try_advisory_lock()"),
    ("two-statements", "author", f"{DESTROY}; DELETE FROM user_troops", "one statement only"),
    ("commit-first", "author", f"COMMIT; {DESTROY}", "one statement only"),
    ("second-statement-after-comment", "author", f"{DESTROY} /* ; */; DELETE FROM user_troops -- x", "one statement only"),
    ("do-block", "author", "DO $$BEGIN UPDATE user_troops SET level = -1 WHERE :lo < :hi; END$$", "not DO"),
    ("set", "author", "SET default_transaction_read_only = on -- :lo :hi", "not SET"),
    ("copy", "author", "COPY (SELECT CAST(:lo AS bigint), CAST(:hi AS bigint)) TO STDOUT", "not COPY"),
    ("call", "author", "CALL nothing(CAST(:lo AS bigint), CAST(:hi AS bigint))", "not CALL"),
    ("with-ending-in-select", "author", f"WITH u AS ({DESTROY} RETURNING 1) SELECT count(*) FROM u",
     "must modify a table"),
]


def test_attackers_statements_never_run(engine, roles):
    seed_demo(engine, 300)
    hero_troops = (Path(__file__).resolve().parent.parent / "jobs/demo/hero_troops.sql").read_text()
    with engine.begin() as conn:  # derived rows an attacker would like to destroy
        conn.execute(text(hero_troops), {"lo": "2000-01-01Z", "hi": "2100-01-01Z"})
    before = troops_checksum(engine)
    assert before[0] > 0
    _setup(engine, roles)
    ids = {case: _insert(roles[who], {**ITEMS, "sql": sql}) for case, who, sql, _ in ATTACKS}
    # an INSERT that claims to come from the superuser: the trigger records the real login
    ids["claims-postgres"] = _insert(roles["enqueue"], {**ITEMS, "sql": DESTROY}, enqueued_by="postgres")
    operator = make_engine(roles["operator"])
    # payloads that try to skip the checks: pin a hash nobody approved, smuggle a list of statements
    others = {
        "pinned-hash": ({**ITEMS, "sql_approved": "x", "sql_sha256": "0" * 64}, "unknown payload field(s): sql_sha256"),
        "statement-list": ({**ITEMS, "sql": [DESTROY, "DELETE FROM user_troops"]}, "must be a string, got list"),
        "sql-and-approved": ({**ITEMS, "sql": DESTROY, "sql_approved": "x"}, "give one of handler, sql or sql_approved"),
        "approved-not-a-name": ({**ITEMS, "sql_approved": "x'; DROP TABLE items; --"}, "sql_approved must name"),
    }
    for case, (payload, _) in others.items():
        ids[case] = _insert(roles["enqueue"], payload)
    with pytest.raises(ProgrammingError, match="permission denied"), operator.begin() as conn:
        conn.execute(text("UPDATE queue_jobs SET enqueued_by = 'postgres'"))  # not the operator's to change
    operator.dispose()
    with engine.begin() as conn:  # nor anyone's: the trigger keeps the recorded value
        conn.execute(text("UPDATE queue_jobs SET enqueued_by = 'postgres' WHERE id = :i"), {"i": ids["claims-postgres"]})

    run_cli(roles["worker"], "worker", "--drain", "--no-maintenance", env=role_env(roles, allow_sql=True))

    p = roles["prefix"]
    for case, who, _, words in [*ATTACKS, ("claims-postgres", "enqueue", "", "is not a member of")]:
        job = _job(engine, ids[case])
        assert job.queue_status == "failed" and job.status is None, (case, job)
        assert job.last_error.startswith("invalid job:") and words in job.last_error, (case, job.last_error)
        assert job.enqueued_by == f"{p}{who}", (case, job.enqueued_by)
    for case, (_, words) in others.items():
        job = _job(engine, ids[case])
        assert job.queue_status == "failed" and words in job.last_error, (case, job.last_error)
    assert f"role '{p}enqueue', which enqueued the job, is not a member of {p}sql_author" in _job(
        engine, ids["claims-postgres"]).last_error
    assert troops_checksum(engine) == before  # nothing ran: not at validation, not as a job
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE planned") == 0


def test_an_authors_statement_runs_only_on_a_pool_that_allows_sql(engine, roles, tmp_path):
    _setup(engine, roles)
    env = role_env(roles, allow_sql=True)
    handler = tmp_path / "log.sql"
    handler.write_text(LOG_HANDLER)
    args = ["enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to", "1000",
            "--batch-size", "30", "--owner", "data-team", "--handler", f"sql:{handler}"]

    # a plain enqueuer: refused by the CLI, one line, nothing queued
    _one_line_error(run_cli(roles["enqueue"], *args, env=env, check=False), 6, "is not a member of")
    bad = tmp_path / "bad.sql"
    for statement in (f"ANALYZE {DESTROY}", "SELECT set_config('work_mem', '64kB', false), :lo, :hi"):
        bad.write_text(statement)
        _one_line_error(run_cli(roles["enqueue"], *args[:-1], f"sql:{bad}", env=env, check=False), 2, "sql handler:")
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 0

    # a sql author: the CLI plans the statement as the author, who needs the grants it uses
    _one_line_error(run_cli(roles["author"], *args, env=env, check=False), 6,
                    "does not plan: permission denied for table processed_log")
    with engine.begin() as conn:
        conn.execute(text(f"GRANT INSERT ON processed_log TO {roles['prefix']}author"))
    # queued (validation planned it, ran nothing), then refused by a pool without --allow-sql
    off = run_cli(roles["author"], *args, env=env).stdout.strip()
    assert scalar(engine, "SELECT count(*) FROM processed_log") == 0
    run_cli(roles["worker"], "worker", "--drain", "--no-maintenance", env=role_env(roles, allow_sql=False))
    job = _job(engine, off)
    assert job.queue_status == "failed" and "ad-hoc SQL is off in this worker" in job.last_error
    assert scalar(engine, "SELECT count(*) FROM processed_log") == 0

    # the same on a pool with --allow-sql: runs; status and the audit say who enqueued it
    on = run_cli(roles["author"], *args, env=env).stdout.strip()
    run_cli(roles["worker"], "worker", "--drain", "--no-maintenance", "--allow-sql",
            env={"TIDEGATE_SQL_AUTHOR_ROLE": env["TIDEGATE_SQL_AUTHOR_ROLE"]})
    job = _job(engine, on)
    assert job.status == "done" and job.processed_count == 100 and job.job_enqueued_by == f"{roles['prefix']}author"
    assert scalar(engine, "SELECT count(*) FROM processed_log") == 100
    status = json.loads(run_cli(roles["operator"], "status", on, "--json").stdout)
    assert status["enqueued_by"] == f"{roles['prefix']}author"
    assert f"{roles['prefix']}author" in run_cli(roles["operator"], "status").stdout
    assert scalar(engine, "SELECT details->>'enqueued_by' FROM tidegate_audit WHERE job_id = :j AND action = 'enqueue'",
                  j=on) == f"{roles['prefix']}author"

    # membership counts when the job runs: revoked, the author's next job is refused
    with engine.begin() as conn:
        conn.execute(text(f"REVOKE {roles['prefix']}sql_author FROM {roles['prefix']}author"))
    revoked = _insert(roles["author"], {**ITEMS, "sql": LOG_HANDLER})
    run_cli(roles["worker"], "worker", "--drain", "--no-maintenance", env=env)
    assert "is not a member of" in _job(engine, revoked).last_error
    assert scalar(engine, "SELECT count(*) FROM processed_log") == 100


def test_an_approved_file_runs_for_a_plain_enqueuer(engine, roles, tmp_path):
    _setup(engine, roles)
    env = role_env(roles, allow_sql=False)  # approved statements need no --allow-sql
    approved = tmp_path / "relog.sql"
    approved.write_text(LOG_HANDLER + ";\n")
    digest = hashlib.sha256(approved.read_bytes()).hexdigest()

    # only an operator approves, and only a valid statement
    _one_line_error(run_cli(roles["enqueue"], "sql", "approve", str(approved), env=env, check=False), 6,
                    "permission denied for table tidegate_sql_approved")
    bad = tmp_path / "bad.sql"
    bad.write_text(f"ANALYZE {DESTROY}")
    _one_line_error(run_cli(roles["operator"], "sql", "approve", str(bad), env=env, check=False), 2, "not ANALYZE")
    out = run_cli(roles["operator"], "sql", "approve", str(approved), env=env)
    assert f"approved relog sha256:{digest} by {roles['prefix']}operator" in out.stdout
    assert "relog" in run_cli(roles["enqueue"], "sql", "list", env=env).stdout
    with pytest.raises(IntegrityError), engine.begin() as conn:  # the hash must be the text's
        conn.execute(text("INSERT INTO tidegate_sql_approved (name, sha256, sql) VALUES ('relog', :s, 'DELETE FROM items')"),
                     {"s": digest})

    # a plain enqueuer names it (CLI, and the runbook's INSERT by sha256); a pool without --allow-sql runs both
    by_name = run_cli(roles["enqueue"], "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1",
                      "--to", "51", "--handler", "sql-approved:relog", "--owner", "o", env=env).stdout.strip()
    by_sha = _insert(roles["enqueue"], {**ITEMS, "from": 51, "to": 1000, "sql_approved": digest})
    _one_line_error(run_cli(roles["enqueue"], "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from",
                            "1", "--to", "5", "--handler", "sql-approved:nope", "--owner", "o", env=env, check=False),
                    2, "no approved statement 'nope'; approved: relog")
    run_cli(roles["worker"], "worker", "--drain", "--no-maintenance", env=env)
    for job_id in (by_name, by_sha):
        job = _job(engine, job_id)
        assert job.status == "done", job
    assert scalar(engine, "SELECT count(*) FROM processed_log") == 100

    # revoked: a job naming it is refused
    run_cli(roles["operator"], "sql", "revoke", "relog", env=env)
    gone = _insert(roles["enqueue"], {**ITEMS, "sql_approved": "relog"})
    run_cli(roles["worker"], "worker", "--drain", "--no-maintenance", env=env)
    assert "no approved statement 'relog'" in _job(engine, gone).last_error
    assert scalar(engine, "SELECT count(*) FROM processed_log") == 100
    assert scalar(engine, "SELECT string_agg(action, ',' ORDER BY id) FROM tidegate_audit WHERE action LIKE 'sql-%'") == (
        "sql-approve,sql-revoke")


def test_a_jobs_session_setting_does_not_outlive_its_batch(engine, db_url, tmp_path):
    """A deployment's own function that changes session settings passes validation (it is not on the
    deny-list); what it sets still ends with the batch."""
    make_items(engine, 50)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE leak_log (k bigint, seen text)"))
        conn.execute(text(
            "CREATE FUNCTION leak() RETURNS text LANGUAGE plpgsql AS $$ DECLARE prev text; BEGIN"
            " prev := current_setting('tidegate_test.leak', true);"
            " PERFORM set_config('tidegate_test.leak', 'yes', false);"
            " PERFORM set_config('default_transaction_read_only', 'on', false);"  # crashed the next transaction
            " PERFORM set_config('statement_timeout', '1', false);"
            " RETURN prev; END $$"))
    job = enqueue_items(db_url, tmp_path, "INSERT INTO leak_log SELECT k, leak() FROM items WHERE k > :lo AND k <= :hi",
                        batch_size=10)
    run_cli(db_url, "worker", "--concurrency", "1", "--drain", "--no-maintenance")
    row = _job(engine, job)
    assert row.status == "done" and row.processed_count == 50, row
    assert scalar(engine, "SELECT sum(attempts) FROM backfill_slices WHERE job_id = :j", j=job) == 0
    # within a batch the rows after the first see the setting; the first row of each of the 5 batches does not
    assert scalar(engine, "SELECT count(*) FROM leak_log WHERE seen IS DISTINCT FROM 'yes'") == 5
    assert scalar(engine, "SELECT count(*) FROM leak_log") == 50
