"""Issue 13, points 4 and 5, as attackers: each role of ops/roles.sql (the `roles` fixture) tries
to move jobs where the state machine does not go, to read rows it has no right to, or to make
tidegate print a password. Every attempt is refused with nothing changed, or leaves nothing to read."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tests.conftest import run_cli, scalar
from tests.fixtures import make_items, seed_demo
from tests.test_runbook_sql import RUNBOOK_INSERT, RUNBOOK_PAUSE, RUNBOOK_RESUME
from tidegate.worker import kinds, store
from tidegate.worker.db import make_engine
from tidegate.worker.web import Api

pytestmark = pytest.mark.slow
FAKE_WORKER = "test-host:1:abcdef"


def planned_job(engine: Engine, *, start: bool = True) -> str:
    """The runbook's job, planned by hand (one slice); started: a worker holds its slice, it is running."""
    seed_demo(engine, 400)
    with engine.begin() as conn:
        conn.execute(text(RUNBOOK_INSERT))
        job = store.claim_queue_job(conn, ["default"], [], [])
        assert job is not None
        store.store_plan(conn, job.id, job.type, kinds.kinds()["backfill_range"].plan(conn, job.payload()))
        if start:
            assert store.claim_slice(conn, FAKE_WORKER, ["default"], ["backfill_range"]) is not None
    return job.id


def as_role(url: str, sql: str, **params: object) -> DBAPIError | None:
    """Run ``sql`` logged in as ``url``'s role; the database's refusal, or None if it went through."""
    eng = make_engine(url)
    try:
        with eng.begin() as conn:
            conn.execute(text(sql), params)
        return None
    except DBAPIError as err:
        return err
    finally:
        eng.dispose()


def state(engine: Engine, job: str) -> tuple:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT j.status, j.status_by, j.finished_at, q.status, s.status, s.attempts, s.run_after,"
            " (SELECT count(*) FROM tidegate_audit a WHERE a.job_id = j.job_id)"
            " FROM backfill_jobs j JOIN queue_jobs q ON q.id = j.job_id JOIN backfill_slices s ON s.job_id = j.job_id"
            " WHERE j.job_id = :j"), {"j": job}).one()


def audit_rows(engine: Engine, job: str) -> list:
    with engine.connect() as conn:
        return conn.execute(text("SELECT actor, action, db_user, details FROM tidegate_audit WHERE job_id = :j"
                                 " ORDER BY id"), {"j": job}).all()


# -- point 5: operators' SQL powers are exactly their job ------------------------------------------


def test_operator_cannot_mark_a_running_job_done_by_hand(engine, roles):
    job = planned_job(engine)
    before = state(engine, job)
    assert before[0] == "running"
    err = as_role(roles["operator"], "UPDATE backfill_jobs SET status = 'done' WHERE job_id = :j", j=job)
    assert err is not None
    message = str(err.orig)
    assert "cannot go from running to done" in message and "1 slice(s) are not" in message
    assert "paused (pause), cancelled (cancel)" in message  # the allowed moves, named
    assert state(engine, job) == before


def test_planned_jobs_queue_row_cannot_be_sent_back_to_pending(engine, roles):
    job = planned_job(engine)
    before = state(engine, job)
    err = as_role(roles["operator"], "UPDATE queue_jobs SET status = 'pending' WHERE id = :j", j=job)
    assert err is not None and "it is planned, and its queue row follows backfill_jobs" in str(err.orig)
    assert state(engine, job) == before
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs") == 1  # no second planning possible


@pytest.mark.parametrize("assignment,words", [
    ("run_after = 'infinity'", "run_after cannot be set to infinity"),
    ("run_after = now() + interval '1 day'", "only now() or earlier"),
    ("attempts = attempts + 3", "attempts cannot go up from 0 to 3"),
], ids=["run-after-infinity", "run-after-tomorrow", "attempts-up"])
def test_operator_cannot_push_a_slice_out_of_reach(engine, roles, assignment, words):
    job = planned_job(engine)
    before = state(engine, job)
    err = as_role(roles["operator"], f"UPDATE backfill_slices SET {assignment} WHERE job_id = :j", j=job)
    assert err is not None and words in str(err.orig)
    assert state(engine, job) == before


def test_operator_may_retry_a_failed_slice_now(engine, roles):
    job = planned_job(engine)
    with engine.begin() as conn:  # the worker's own path: its batch failed, the slice backs off
        store.fail_attempt(conn, job, 0, FAKE_WORKER, "boom", backoff_base=600, backoff_max=600)
    assert scalar(engine, "SELECT attempts FROM backfill_slices WHERE job_id = :j", j=job) == 1
    assert scalar(engine, "SELECT run_after > now() + interval '5 minutes' FROM backfill_slices WHERE job_id = :j",
                  j=job)
    assert as_role(roles["operator"], "UPDATE backfill_slices SET run_after = now(), attempts = 0"
                                      " WHERE job_id = :j", j=job) is None
    assert scalar(engine, "SELECT attempts = 0 AND run_after <= now() FROM backfill_slices WHERE job_id = :j", j=job)


def test_runbook_pause_and_resume_by_operator_are_audited_with_its_login(engine, roles):
    job = planned_job(engine, start=False)
    login = roles["prefix"] + "operator"
    eng = make_engine(roles["operator"])
    with eng.begin() as conn:  # the runbook's SQL, verbatim
        assert conn.execute(text(RUNBOOK_PAUSE)).rowcount == 1
    with eng.begin() as conn:
        assert conn.execute(text(RUNBOOK_RESUME.replace("<job_id>", job))).rowcount == 1
    eng.dispose()
    rows = audit_rows(engine, job)
    assert [(r.action, r.actor, r.db_user, r.details["from"], r.details["to"]) for r in rows] == [
        ("pause", login, login, "pending", "paused"), ("resume", login, login, "paused", "running")]
    assert rows[0].details["reason"] == "pause by SQL"
    assert scalar(engine, "SELECT status_by FROM backfill_jobs WHERE job_id = :j", j=job) == login


def test_sql_cancel_and_retry_do_what_the_cli_does(engine, roles):
    job = planned_job(engine)
    with engine.begin() as conn:
        store.fail_attempt(conn, job, 0, FAKE_WORKER, "boom", backoff_base=600, backoff_max=600)
    assert as_role(roles["operator"], "UPDATE backfill_jobs SET status = 'cancelled' WHERE job_id = :j", j=job) is None
    job_status, _, finished, queue_status, *_ = state(engine, job)
    assert (job_status, queue_status) == ("cancelled", "cancelled") and finished is not None
    assert as_role(roles["operator"], "UPDATE backfill_jobs SET status = 'running' WHERE job_id = :j"
                                      " AND status IN ('failed', 'cancelled')", j=job) is None
    job_status, _, finished, queue_status, slice_status, attempts, *_ = state(engine, job)
    assert (job_status, queue_status, slice_status, attempts, finished) == ("running", "running", "pending", 0, None)
    assert [r.action for r in audit_rows(engine, job)] == ["cancel", "retry"]
    done = as_role(roles["operator"], "UPDATE backfill_jobs SET status = 'failed' WHERE job_id = :j", j=job)
    assert done is not None and "a job fails when a slice has used its attempts" in str(done.orig)


def test_cli_actions_are_audited_once_with_the_given_name_and_the_login(engine, roles):
    job = planned_job(engine)
    login = roles["prefix"] + "operator"
    run_cli(roles["operator"], "pause", job, "--by", "sre-alice", "--reason", "db cpu high")
    run_cli(roles["operator"], "resume", job, "--by", "sre-alice")
    run_cli(roles["operator"], "cancel", job, "--by", "sre-bob")
    rows = audit_rows(engine, job)
    assert [(r.action, r.actor, r.db_user) for r in rows] == [
        ("pause", "sre-alice", login), ("resume", "sre-alice", login), ("cancel", "sre-bob", login)]
    assert rows[0].details["reason"] == "db cpu high" and rows[1].details["reason"] == "resume by sre-alice"
    assert scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=job) == "cancelled"


def test_unplanned_queue_rows_move_only_as_the_state_machine_says(engine, roles):
    seed_demo(engine, 50)
    job = run_cli(roles["enqueue"], "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2025-01-01",
                  "--owner", "qa").stdout.strip()
    for forged in ("done", "running", "failed"):
        err = as_role(roles["operator"], "UPDATE queue_jobs SET status = :s WHERE id = :j", s=forged, j=job)
        assert err is not None and "allows: paused (pause), cancelled (cancel)" in str(err.orig), forged
    assert scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=job) == "pending"
    assert as_role(roles["operator"], "UPDATE queue_jobs SET status = 'paused' WHERE id = :j", j=job) is None
    assert as_role(roles["operator"], "UPDATE queue_jobs SET status = 'pending' WHERE id = :j", j=job) is None
    assert [r.action for r in audit_rows(engine, job)] == ["enqueue", "pause", "resume"]
    run_cli(roles["worker"], "worker", "--drain", "--no-maintenance")  # the worker's own moves still work
    assert scalar(engine, "SELECT status FROM backfill_jobs WHERE job_id = :j", j=job) == "done"


def test_no_login_can_forge_done_not_the_worker_role_nor_the_owner(engine, roles, db_url):
    job = planned_job(engine)
    before = state(engine, job)
    for url in (roles["worker"], db_url):  # a SQL payload runs as the worker role; a one-role deployment as owner
        err = as_role(url, "UPDATE backfill_jobs SET status = 'done', finished_at = now() WHERE job_id = :j", j=job)
        assert err is not None and "a job is done when every slice is done" in str(err.orig)
        err = as_role(url, "UPDATE backfill_slices SET status = 'done' WHERE job_id = :j", j=job)
        assert err is not None and "a slice is done when its owner finishes its last batch" in str(err.orig)
    assert state(engine, job) == before


def test_an_audit_row_names_the_login_whatever_the_insert_claims(engine, roles):
    assert as_role(roles["enqueue"], "INSERT INTO tidegate_audit (actor, action, db_user)"
                                     " VALUES ('root', 'forged', 'postgres')") is None
    assert scalar(engine, "SELECT db_user FROM tidegate_audit WHERE action = 'forged'") == roles["prefix"] + "enqueue"


# -- point 4: nothing leaks across grants ----------------------------------------------------------


def test_enqueue_and_operator_logins_cannot_read_samples(engine, db_url, roles):
    seed_demo(engine, 600)  # the demo has malformed snapshots: PARSE_ERROR items, each with a sample
    job = run_cli(db_url, "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2025-01-01",
                  "--owner", "qa").stdout.strip()
    run_cli(db_url, "worker", "--drain", "--no-maintenance")
    samples = [s for (s,) in engine.connect().execute(text("SELECT sample FROM etl_errors"))]
    assert samples and all(samples)
    for role in ("enqueue", "operator"):
        err = as_role(roles[role], "SELECT sample FROM etl_errors")
        assert err is not None and "permission denied" in str(err.orig)
        assert as_role(roles[role], "SELECT item_key, error_type, message FROM etl_errors") is None
    # enqueue may read the source (granted by the fixture) but not the column; operator neither
    shown = run_cli(roles["enqueue"], "errors", job).stdout
    assert "sample hidden: no SELECT on etl_errors.sample" in shown
    with engine.begin() as conn:  # the column alone is not enough: the source decides
        conn.execute(text(f"GRANT SELECT (sample) ON etl_errors TO {roles['prefix']}operator"))
    shown = run_cli(roles["operator"], "errors", job).stdout
    assert "sample hidden: no SELECT on hero_snapshots" in shown
    as_json = json.loads(run_cli(roles["operator"], "errors", job, "--json").stdout)
    assert as_json and all(r["sample"] is None and r["sample_hidden"] for r in as_json)
    for text_out in (shown, json.dumps(as_json)):
        assert not any(s[:40] in text_out for s in samples)
    assert samples[0][:40] in run_cli(db_url, "errors", job).stdout  # the owner reads them


def test_a_cast_error_in_a_sql_handler_leaves_no_row_data_in_last_error(engine, db_url, tmp_path):
    make_items(engine, 300)
    handler = tmp_path / "cast.sql"
    handler.write_text("INSERT INTO processed_log (k) SELECT CAST(v AS bigint) FROM items"
                       " WHERE k > CAST(:lo AS bigint) AND k <= CAST(:hi AS bigint)")
    job = run_cli(db_url, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to",
                  "301", "--handler", f"sql:{handler}", "--max-attempts", "1", "--owner", "qa").stdout.strip()
    pool = run_cli(db_url, "worker", "--drain", "--no-maintenance", check=False)
    values = [v for (v,) in engine.connect().execute(text("SELECT v FROM items"))]
    with engine.connect() as conn:
        stored = conn.execute(text(
            "SELECT j.status, j.last_error, j.status_reason, q.last_error, s.last_error FROM backfill_jobs j"
            " JOIN queue_jobs q ON q.id = j.job_id JOIN backfill_slices s ON s.job_id = j.job_id")).one()
    assert stored[0] == "failed"
    status_json = run_cli(db_url, "status", job, "--json").stdout
    assert "InvalidTextRepresentation [22P02]: invalid input syntax for type bigint" in stored[1]
    for out in (*[s for s in stored[1:] if s], status_json, pool.stdout + pool.stderr):
        assert not any(v in out for v in values), out


def test_passwords_never_printed_even_when_a_handler_echoes_the_url(engine, db_url, tmp_path):
    make_items(engine, 40)
    secret = "s3cr3t-" + uuid.uuid4().hex[:8]
    url = make_url(db_url).set(password=secret).render_as_string(hide_password=False)  # trust auth ignores it
    items = ["--source", "items", "--key", "k", "--from", "1", "--to", "41", "--owner", "qa"]
    echo = run_cli(url, "enqueue", "backfill-range", *items, "--handler", "tests.trust_handlers:echo_url"
                   ).stdout.strip()
    batch = run_cli(url, "enqueue", "backfill-range", *items, "--max-attempts", "1",
                    "--handler", "tests.trust_handlers:parser_then_write_fails").stdout.strip()
    pool = run_cli(url, "--log-level", "DEBUG", "worker", "--drain", "--no-maintenance", check=False)
    log = pool.stdout + pool.stderr
    assert "sync-tool: error: unrecognized arguments" in log  # the handler's parser did echo argv...
    assert "postgresql://" in log and secret not in log  # ...masked
    with engine.connect() as conn:
        messages = [m for (m,) in conn.execute(text("SELECT message FROM etl_errors WHERE job_id = :j"), {"j": echo})]
        last = conn.execute(text("SELECT j.last_error, j.status_reason, q.last_error, s.last_error FROM backfill_jobs j"
                                 " JOIN queue_jobs q ON q.id = j.job_id JOIN backfill_slices s ON s.job_id = j.job_id"
                                 " WHERE j.job_id = :j"), {"j": batch}).one()
    assert len(messages) == 40 and all(":***@" in m and "password=***" in m for m in messages)
    assert all(last) and all("refused" in t and ":***@" in t for t in last)
    outputs = [run_cli(url, "status", "--json").stdout, run_cli(url, "errors", echo, "--json").stdout,
               run_cli(url, "errors", echo).stdout, run_cli(url, "status", batch).stdout,
               json.dumps(Api(engine, None).errors(echo), default=str), *messages, *last]
    for out in outputs:
        assert secret not in out and "pw-1)" not in out
