"""Jobs no worker has planned yet (issue 17.3 and 17.6): the runbook's pause catches them, `set` reaches
their payload, and a pause racing the planners (with a worker killed) never lets a paused job run."""

from __future__ import annotations

import json
import random
import signal

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import enqueue_items, job_row, role_env, run_cli, scalar, wait_for
from tests.fixtures import LOG_HANDLER, log_report, make_items
from tests.test_runbook_sql import RUNBOOK_PAUSE, RUNBOOK_RESUME  # seed 003's runbook, verbatim


def _execute(url_or_engine, sql: str, **params: object) -> int:  # type: ignore[no-untyped-def]
    engine = create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.begin() as conn:
            return conn.execute(text(sql), params).rowcount
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


def _logged(engine, lo: int, hi: int) -> int:  # type: ignore[no-untyped-def]
    return int(scalar(engine, "SELECT count(*) FROM processed_log WHERE k > :lo AND k <= :hi", lo=lo, hi=hi))


def _statuses(engine, job: str) -> tuple[str, str, bool]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return tuple(conn.execute(text("SELECT q.status, j.status, j.planned FROM queue_jobs q JOIN backfill_jobs j"
                                       " ON j.job_id = q.id WHERE q.id = :j"), {"j": job}).one())


def test_the_runbook_pause_catches_a_queued_job_and_its_resume_runs_it_exactly(engine, db_url, tmp_path):
    make_items(engine, 500)
    job = enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=50)
    assert _statuses(engine, job) == ("pending", "pending", False)  # its row from the start, unplanned

    assert _execute(engine, RUNBOOK_PAUSE) == 1  # was UPDATE 0, and a worker then ran the job to the end
    assert _statuses(engine, job) == ("paused", "paused", False)
    assert "paused" in run_cli(db_url, "status", job).stdout
    run_cli(db_url, "worker", "--concurrency", "2", "--drain", "--poll", "0.1")  # a paused job is no work
    assert _statuses(engine, job) == ("paused", "paused", False)  # not planned, nothing run
    assert _logged(engine, 0, 10**9) == 0
    assert scalar(engine, "SELECT count(*) FROM backfill_slices WHERE job_id = :j", j=job) == 0
    bad = run_cli(db_url, "pause", job, check=False)
    assert bad.returncode == 4 and "paused" in bad.stderr

    assert _execute(engine, RUNBOOK_RESUME.replace("<job_id>", job)) == 1
    assert _statuses(engine, job) == ("pending", "running", False)  # claimable by a planner again
    run_cli(db_url, "worker", "--concurrency", "2", "--drain", "--poll", "0.1")
    assert job_row(engine, job).status == "done" and job_row(engine, job).processed_count == 500
    assert log_report(engine) == {"logged": 500, "distinct_keys": 500, "items": 500, "missing": 0}
    actions = [r[0] for r in engine.connect().execute(
        text("SELECT action FROM tidegate_audit WHERE job_id = :j ORDER BY id"), {"j": job})]
    assert actions == ["enqueue", "pause", "resume", "plan"]  # each move audited once


def test_by_sql_as_the_roles_insert_pause_resume_and_a_pool_runs_it(engine, db_url, roles, tmp_path):
    """A queue row INSERTed by plain SQL as tg_enqueue (the trigger works for it: SECURITY DEFINER),
    paused by the runbook as tg_operator, planned and run by tg_worker once resumed."""
    make_items(engine, 300)
    with engine.begin() as conn:
        conn.execute(text(f"GRANT SELECT ON items TO {roles['prefix']}worker, {roles['prefix']}author"))
        conn.execute(text(f"GRANT SELECT, INSERT ON processed_log TO {roles['prefix']}worker"))
    payload = {"source": "items", "key": "k", "from": 1, "to": 1000, "batch_size": 40, "owner": "sql",
               "sql": LOG_HANDLER}
    author = create_engine(roles["author"])
    with author.begin() as conn:  # the runbook's INSERT, by an SQL author (enqueue + sql_author)
        job = str(conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('backfill_range', CAST(:p AS jsonb))"
                                    " RETURNING id"), {"p": json.dumps(payload)}).scalar())
    author.dispose()
    assert _statuses(engine, job) == ("pending", "pending", False)
    assert _execute(roles["operator"], RUNBOOK_PAUSE) == 1
    env = role_env(roles)
    run_cli(roles["worker"], "worker", "--drain", "--poll", "0.1", env=env)
    assert _statuses(engine, job) == ("paused", "paused", False) and _logged(engine, 0, 300) == 0
    # tg_operator cannot finish it by hand, or start it: an unplanned job has no batches
    for status in ("done", "failed"):
        with pytest.raises(Exception, match="no worker has planned this job yet|cannot go from"):
            _execute(roles["operator"], "UPDATE backfill_jobs SET status = :s WHERE job_id = :j", s=status, j=job)
    assert _execute(roles["operator"], RUNBOOK_RESUME.replace("<job_id>", job)) == 1
    run_cli(roles["worker"], "worker", "--drain", "--poll", "0.1", env=env)
    assert job_row(engine, job).status == "done"
    assert log_report(engine) == {"logged": 300, "distinct_keys": 300, "items": 300, "missing": 0}
    assert scalar(engine, "SELECT db_user FROM tidegate_audit WHERE job_id = :j AND action = 'pause'",
                  j=job) == f"{roles['prefix']}operator"


def test_a_pause_racing_the_planners_with_a_kill_never_lets_a_paused_job_run(engine, db_url, tmp_path, pools):
    """Twelve queued jobs over disjoint keys; planners at work, the runbook's pause lands in the middle, a
    worker is killed. Every job the pause caught (planned or not) runs nothing until resumed; then every
    job runs to an exact result (each key once)."""
    make_items(engine, 1200)
    jobs = [enqueue_items(db_url, tmp_path, LOG_HANDLER, "--max-rows-per-second", "400", batch_size=20,
                          frm=str(i * 100 + 1), to=str((i + 1) * 100 + 1)) for i in range(12)]
    pool = pools("--concurrency", "3", "--poll", "0.05", "--lease", "2")
    wait_for(lambda: scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE planned") >= 1, what="planning")
    with engine.begin() as conn:
        caught = [str(r[0]) for r in conn.execute(text(RUNBOOK_PAUSE.strip().rstrip(";") + " RETURNING job_id"))]
    random.Random(17).choice(pool.wait_workers(3)).send_signal(signal.SIGKILL)
    assert caught, "the pause caught nothing: the race was not run"
    # nothing pending is left behind: a job a planner held was waited for and paused planned; every other
    # job not caught had started (before migration 0013, planners made new pending rows after the pause)
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE status = 'pending'") == 0
    spans = {job: (i * 100, (i + 1) * 100) for i, job in enumerate(jobs)}
    was = {job: _logged(engine, *spans[job]) for job in caught}
    assert set(was.values()) == {0}  # pending: not one batch had started
    others = [j for j in jobs if j not in caught]
    wait_for(lambda: all(scalar(engine, "SELECT status FROM backfill_jobs WHERE job_id = :j", j=j) == "done"
                         for j in others), timeout=120, what="the jobs the pause missed to finish")
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE status = 'pending'") == 0
    for job in caught:  # paused, planned or not; never claimed
        queue, status, _ = _statuses(engine, job)
        assert status == "paused" and queue in ("paused", "running"), (job, queue, status)
        assert _logged(engine, *spans[job]) == 0, job
    for job in caught:
        assert _execute(engine, RUNBOOK_RESUME.replace("<job_id>", job)) == 1
    wait_for(lambda: all(scalar(engine, "SELECT status FROM backfill_jobs WHERE job_id = :j", j=j) == "done"
                         for j in jobs), timeout=180, what="every job done")
    assert log_report(engine) == {"logged": 1200, "distinct_keys": 1200, "items": 1200, "missing": 0}
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE NOT planned") == 0


def test_set_on_a_queued_job_changes_the_payload_the_plan_uses(engine, db_url, tmp_path):
    make_items(engine, 100)
    job = enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=50)
    before = scalar(engine, "SELECT payload FROM queue_jobs WHERE id = :j", j=job)
    for args, code, message in [  # out of range, inconsistent, nothing: refused, nothing changed
        (("--max-rows-per-second", "1e-300"), 2, "between 0.001 and 1e+09"),
        (("--concurrency", "65"), 2, "between 1 and 64"),
        (("--batch-size", "nan"), 2, "batch-size"),
        (("--min-batch-size", "500", "--max-batch-size", "100"), 2, "min_batch_size must not exceed max_batch_size"),
        (("--limit", "1" + "0" * 40), 2, "limit"),
        ((), 2, "nothing to change"),
    ]:
        out = run_cli(db_url, "set", job[:8], *args, check=False)
        assert out.returncode == code and message in out.stderr, (args, out.stderr)
    assert scalar(engine, "SELECT payload FROM queue_jobs WHERE id = :j", j=job) == before

    out = run_cli(db_url, "set", job[:8], "--batch-size", "7", "--max-rows-per-second", "5000", "--limit", "30")
    assert "batch_size=7" in out.stdout
    payload = scalar(engine, "SELECT payload FROM queue_jobs WHERE id = :j", j=job)
    assert (payload["batch_size"], payload["max_rows_per_second"], payload["row_limit"]) == (7, 5000, 30)
    run_cli(db_url, "set", job[:8], "--max-rows-per-second", "none")  # lifted before it starts
    run_cli(db_url, "worker", "--drain", "--poll", "0.1")
    row = job_row(engine, job)
    assert (row.batch_size, row.max_rows_per_second, row.row_limit) == (7, None, 30)
    assert (row.status, row.processed_count) == ("paused", 30)  # the canary limit the plan took from set
    assert scalar(engine, "SELECT count(*) FROM tidegate_audit WHERE job_id = :j AND action = 'set'", j=job) == 2


def test_set_on_a_finished_job_is_exit_4_like_pause(engine, db_url, tmp_path):
    make_items(engine, 20)
    done = enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=50)
    run_cli(db_url, "worker", "--drain", "--poll", "0.1")
    assert job_row(engine, done).status == "done"
    cancelled = enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=50)
    run_cli(db_url, "cancel", cancelled)  # never planned
    for job, state in ((done, "done"), (cancelled, "cancelled")):
        out = run_cli(db_url, "set", job[:8], "--concurrency", "2", check=False)
        assert out.returncode == 4 and f"it is {state}" in out.stderr, out.stderr
    assert job_row(engine, done).concurrency == 1
    assert run_cli(db_url, "set", "0000aaaa", "--concurrency", "2", check=False).returncode == 3


def test_set_on_sql_inserted_payloads_a_worker_cannot_read(engine, db_url):
    """Payloads inserted by SQL: not an object (nothing to set: exit 2), nested deeper than Python reads
    (exit 2), or a knob of the wrong type (set repairs it; another knob is refused naming it). Nothing is
    changed by a refusal."""
    with engine.begin() as conn:
        array = str(conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('backfill_range', '[1, 2]')"
                                      " RETURNING id")).scalar())
        typed = str(conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('backfill_range',"
                                      " '{\"batch_size\": \"abc\", \"owner\": {\"deep\": [1]}}') RETURNING id")).scalar())
        deep = str(conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('backfill_range', CAST('{\"x\": '"
                                     " || repeat('[', 5000) || repeat(']', 5000) || '}' AS jsonb)) RETURNING id")).scalar())
    out = run_cli(db_url, "set", deep, "--concurrency", "2", check=False)  # Python cannot read it back
    assert out.returncode == 2 and "nested too deeply" in out.stderr, out.stderr
    assert scalar(engine, "SELECT payload ? 'concurrency' FROM queue_jobs WHERE id = :j", j=deep) is False
    out = run_cli(db_url, "set", array, "--concurrency", "2", check=False)
    assert out.returncode == 2 and "not a JSON object" in out.stderr
    assert scalar(engine, "SELECT payload FROM queue_jobs WHERE id = :j", j=array) == [1, 2]
    out = run_cli(db_url, "set", typed, "--concurrency", "2", check=False)
    assert out.returncode == 2 and "batch_size" in out.stderr
    run_cli(db_url, "set", typed, "--batch-size", "30")
    assert scalar(engine, "SELECT payload->>'batch_size' FROM queue_jobs WHERE id = :j", j=typed) == "30"
    # both still unplanned rows a pause catches; the owner that is no string shows as one
    assert scalar(engine, "SELECT owner FROM backfill_jobs WHERE job_id = :j", j=typed) == '{"deep": [1]}'
    assert _execute(engine, RUNBOOK_PAUSE) == 3


def test_unarchive_range_takes_the_pace_options_of_archive_range():
    import click

    from tidegate.jobs.archive.cli import enqueue_archive, enqueue_unarchive

    def flags(cmd: click.Command) -> set[str]:
        return {o for p in cmd.params for o in p.opts}

    pace = {"--max-rows-per-second", "--sleep-between-batches", "--concurrency", "--batch-size"}
    assert pace <= flags(enqueue_unarchive) and pace <= flags(enqueue_archive)
    assert flags(enqueue_archive) - flags(enqueue_unarchive) == {"--force", "--mark-only", "--move-marked"}  # two-phase archiving is archive-only
