"""tidegate on a Citus cluster: a coordinator and two worker nodes (tests/citus.py).

tidegate's own tables are plain tables on the coordinator; the backfills read and write distributed
tables. A batch's writes on the shards and its checkpoint on the coordinator commit in one
distributed transaction (Citus's two-phase commit), so every proof here is the one of
tests/test_crash_safety.py: the final tables equal a result computed independently from the
source, with nothing missing and nothing doubled. ops/citus.md is the user's side of this file.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

from tests.citus import ENV, ROOT, ROWS, Cluster
from tests.conftest import job_row, kill_storm, run_cli, wait_for
from tests.fixtures import clean_run_checksum, troops_checksum

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("citus")]


USER_TROOPS = """
CREATE TABLE user_troops (
    user_id bigint NOT NULL, troop_id integer NOT NULL, level integer NOT NULL, amount integer NOT NULL,
    ascension integer NOT NULL DEFAULT 0, snapshot_id bigint NOT NULL, snapshot_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, troop_id));
SELECT create_distributed_table('user_troops', 'user_id', colocate_with => 'hero_snapshots');
"""
# targets of tests/citus_handlers.py's _TroopCount: no unique key, so a doubled batch shows
TARGETS = {
    "troop_log": "SELECT create_distributed_table('troop_log', 'user_id', colocate_with => 'hero_snapshots')",
    "troop_ref": "SELECT create_reference_table('troop_ref')",
    "troop_other": "SELECT create_distributed_table('troop_other', 'snapshot_id', colocate_with => 'none')",
}
# the SQL handler of the same transformation (bad items skipped rather than recorded)
TROOP_LOG_SQL = """
INSERT INTO {table} (user_id, snapshot_id, troops)
SELECT user_id, id, jsonb_array_length(raw->'ProfileData'->'Troops') FROM hero_snapshots
WHERE created_at > :lo AND created_at <= :hi AND jsonb_typeof(raw->'ProfileData'->'Troops') = 'array'
"""
# what the transformation must leave, straight from the source
GOOD = "jsonb_typeof(raw->'ProfileData'->'Troops') = 'array'"
EXPECTED = (f"SELECT user_id, id, jsonb_array_length(raw->'ProfileData'->'Troops') FROM hero_snapshots"
            f" WHERE {GOOD} AND created_at > :lo AND created_at <= :hi")
BAD = ("SELECT count(*) FROM hero_snapshots WHERE jsonb_typeof(raw->'ProfileData'->'Troops') IS DISTINCT FROM 'array'"
       " AND created_at > :lo AND created_at <= :hi")
EVERYTHING = {"lo": "2000-01-01Z", "hi": "2100-01-01Z"}


def _target(cluster: Cluster, table: str = "troop_log") -> None:
    with cluster.engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (user_id bigint NOT NULL, snapshot_id bigint NOT NULL, troops int)"))
        conn.execute(text(TARGETS[table]))


def _enqueue(cluster: Cluster, handler: str, *extra: str, concurrency: int = 3, url: str | None = None) -> str:
    return run_cli(url or cluster.url, "enqueue", "backfill-range", "--source", "hero_snapshots", "--key", "created_at",
                   "--from", "2024-01-01", "--to", "2025-01-01", "--handler", handler, "--batch-size", "200",
                   "--concurrency", str(concurrency), "--owner", "tests", *extra, env=ENV).stdout.strip()


def _done(cluster: Cluster, job_id: str) -> bool:
    return job_row(cluster.engine, job_id).status == "done"


def _rows(cluster: Cluster, sql: str, **params: object) -> list[tuple]:
    with cluster.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def _scalar(cluster: Cluster, sql: str, **params: object) -> Any:
    return _rows(cluster, sql, **params)[0][0]


def _assert_exactly_once(cluster: Cluster, table: str, ranges: list[tuple[str, str]] | None = None) -> None:
    """``table`` holds exactly the expected row of every good snapshot in ``ranges`` (``(lo, hi]``; default
    all of them): none missing, none twice, none outside."""
    expected: Counter[tuple] = Counter()
    for lo, hi in ranges or [(EVERYTHING["lo"], EVERYTHING["hi"])]:
        expected.update(_rows(cluster, EXPECTED, lo=lo, hi=hi))
    logged = Counter(_rows(cluster, f"SELECT user_id, snapshot_id, troops FROM {table}"))
    missing, extra = expected - logged, logged - expected
    assert (len(missing), len(extra)) == (0, 0), f"missing {sorted(missing)[:5]}..., doubled or stray {sorted(extra)[:5]}"
    assert logged == expected


def _assert_python_job_exact(cluster: Cluster, job_id: str, table: str = "troop_log") -> None:
    _assert_exactly_once(cluster, table)
    bad = _scalar(cluster, BAD, **EVERYTHING)
    row = job_row(cluster.engine, job_id)
    assert (row.status, row.processed_count, row.error_count) == ("done", ROWS, bad)
    # each bad snapshot recorded once, in the coordinator's etl_errors, by the batch that committed
    assert _rows(cluster, "SELECT count(*), count(DISTINCT item_key) FROM etl_errors") == [(bad, bad)]


def _assert_no_prepared_transactions_after_recovery(cluster: Cluster) -> None:
    cluster.recover_prepared()
    assert cluster.prepared_xacts() == {"coordinator": 0, "worker1": 0, "worker2": 0}


# -- (a) SIGKILL storms --------------------------------------------------------------------------

# small batches (the last --batch-size given wins): at 200 a quiet machine ran the 60 batches in about a
# second, and a storm of kills at most a second apart found the job done after two
STORM_BATCHES = ("--batch-size", "25")


def test_sigkilled_workers_on_distributed_tables_end_with_exactly_the_expected_rows(cluster, start_pool):
    _target(cluster)
    job = _enqueue(cluster, "tests.citus_handlers:troop_log", *STORM_BATCHES)
    pool = start_pool("--concurrency", "3", "--lease", "2")
    kills = kill_storm(pool, cluster.engine, job, kills=6, rng=random.Random(11))
    wait_for(lambda: _done(cluster, job), timeout=180, what="job done after the kill storm")
    assert pool.terminate() == 0
    assert kills >= 3
    _assert_python_job_exact(cluster, job)
    _assert_no_prepared_transactions_after_recovery(cluster)


def test_a_sql_handler_pushed_down_to_colocated_shards_survives_a_kill_storm(cluster, start_pool, tmp_path):
    _target(cluster)
    handler = tmp_path / "troop_log.sql"
    handler.write_text(TROOP_LOG_SQL.format(table="troop_log"))
    job = _enqueue(cluster, f"sql:{handler}", *STORM_BATCHES)
    pool = start_pool("--concurrency", "3", "--lease", "2")
    kills = kill_storm(pool, cluster.engine, job, kills=6, rng=random.Random(12))
    wait_for(lambda: _done(cluster, job), timeout=180, what="job done after the kill storm")
    assert pool.terminate() == 0
    assert kills >= 3
    _assert_exactly_once(cluster, "troop_log")
    assert job_row(cluster.engine, job).processed_count == ROWS
    _assert_no_prepared_transactions_after_recovery(cluster)


# -- (b) Citus worker nodes restarted mid-run ------------------------------------------------------


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_both_worker_nodes_restarted_mid_run_end_exact_with_no_prepared_transaction_left(cluster, start_pool, mode):
    _target(cluster)
    job = _enqueue(cluster, "tests.citus_handlers:troop_log")
    pool = start_pool("--concurrency", "3", "--retry-backoff", "0.5")
    progress = 0
    for node in cluster.workers:
        progress += 2000
        wait_for(lambda p=progress: job_row(cluster.engine, job).processed_count >= p, timeout=120, what=f"{progress} rows")
        node.restart(mode)  # batches in flight lose their connection to the node: rolled back and retried
        assert job_row(cluster.engine, job).status == "running"  # mid-run, not after it
    wait_for(lambda: _done(cluster, job), timeout=180, what="job done after the restarts")
    assert pool.terminate() == 0
    # the restarts cut the coordinator's connections to the nodes under the pool's batches. Citus says so
    # with SQLSTATE 08006 ("connection to the remote node ... failed"), or, when a fast shutdown reached
    # the node's backend first, passes on the node's own 57P01 ("terminating connection due to
    # administrator command"): tidegate takes both for an outage (reconnect, no attempt counted). Or the
    # health gates, which ask every node before a batch, saw the node down first and held the job.
    out = pool.output()
    seen = ("connection to the remote node", "terminating connection due to administrator command", "held by gate unreachable@")
    assert any(sign in out for sign in seen), out[-3000:]
    # a batch whose checkpoint committed while a node restarted between PREPARE and COMMIT PREPARED has
    # its rows there only once Citus recovers it: compare after recovery (the maintenance daemon does it
    # within citus.recover_2pc_interval; the test asks for it now)
    _assert_no_prepared_transactions_after_recovery(cluster)
    _assert_python_job_exact(cluster, job)


# -- (c) pause and resume by the runbook's SQL ------------------------------------------------------


def test_runbook_pause_and_resume_on_the_coordinator_keep_data_and_checkpoints_in_step(cluster, start_pool):
    _target(cluster)
    job = _enqueue(cluster, "tests.citus_handlers:troop_log", concurrency=2)
    pool = start_pool("--concurrency", "2")
    wait_for(lambda: job_row(cluster.engine, job).processed_count >= 2000, timeout=120, what="progress")
    with cluster.engine.begin() as conn:  # the runbook's pause, for a job that is running
        assert conn.execute(text("UPDATE backfill_jobs SET status = 'paused' WHERE job_id = :j AND status = 'running'"),
                            {"j": job}).rowcount == 1
    wait_for(lambda: _scalar(cluster, "SELECT count(*) FROM backfill_slices WHERE job_id = :j AND locked_by IS NOT NULL",
                             j=job) == 0, what="the pool lets go of the paused job")
    paused = job_row(cluster.engine, job)
    assert paused.status == "paused" and 0 < paused.processed_count < ROWS

    # the distributed rows and the coordinator's checkpoints agree: each slice's (start, checkpoint] is in
    # troop_log, exactly once, and nothing beyond it
    ranges = _rows(cluster, "SELECT start_key, checkpoint FROM backfill_slices WHERE job_id = :j", j=job)
    _assert_exactly_once(cluster, "troop_log", ranges)
    done_rows = sum(_scalar(cluster, "SELECT count(*) FROM hero_snapshots WHERE created_at > :lo AND created_at <= :hi",
                            lo=lo, hi=hi) for lo, hi in ranges)
    assert paused.processed_count == done_rows

    with cluster.engine.begin() as conn:  # the runbook's resume, verbatim
        resume = f"UPDATE backfill_jobs SET status = 'running' WHERE job_id = '{job}' AND status = 'paused';"
        assert conn.execute(text(resume)).rowcount == 1
    wait_for(lambda: _done(cluster, job), timeout=120, what="job done after resume")
    assert pool.terminate() == 0
    _assert_python_job_exact(cluster, job)


# -- (d) the demo's ItemHandler on distributed tables -------------------------------------------------


def test_the_demos_item_handler_on_colocated_distributed_tables_matches_a_clean_run(cluster, start_pool):
    with cluster.engine.begin() as conn:
        conn.execute(text(USER_TROOPS))
    # reference: the demo's SQL over every snapshot, one distributed statement
    clean = clean_run_checksum(cluster.engine)
    assert clean[0] > ROWS  # about ten troops per user
    job = _enqueue(cluster, "hero_troops")
    pool = start_pool("--concurrency", "3", "--lease", "2")
    kill_storm(pool, cluster.engine, job, kills=3, rng=random.Random(13))
    wait_for(lambda: _done(cluster, job), timeout=180, what="job done")
    assert pool.terminate() == 0
    assert troops_checksum(cluster.engine) == clean
    malformed = _scalar(cluster, "SELECT count(*) FROM hero_snapshots WHERE jsonb_typeof(raw->'ProfileData'->'Troops')"
                                 " IS DISTINCT FROM 'array' OR raw->'ProfileData'->'Troops' @> '[{\"Level\": \"max\"}]'")
    row = job_row(cluster.engine, job)
    assert (row.processed_count, row.error_count) == (ROWS, malformed)


# -- (e) a reference table, a table not colocated --------------------------------------------------------


@pytest.mark.parametrize("table", ["troop_ref", "troop_other"])
def test_a_python_handler_writing_a_reference_or_non_colocated_table_is_exact(cluster, start_pool, table):
    """Row-by-row writes from the coordinator: a reference table gets each row on every node, a table
    distributed on another column gets it on that column's shard; both in the batch's 2PC."""
    _target(cluster, table)
    job = _enqueue(cluster, f"tests.citus_handlers:{table}")
    pool = start_pool("--concurrency", "3", "--lease", "2")
    kill_storm(pool, cluster.engine, job, kills=3, rng=random.Random(14))
    wait_for(lambda: _done(cluster, job), timeout=180, what="job done")
    assert pool.terminate() == 0
    _assert_python_job_exact(cluster, job, table)
    _assert_no_prepared_transactions_after_recovery(cluster)


@pytest.mark.parametrize("table", ["troop_ref", "troop_other"])
def test_a_sql_handler_into_a_reference_or_non_colocated_table_is_refused_at_enqueue(cluster, tmp_path, table):
    """What a user sees today: tidegate's plan check (jobs/sql_check.py) EXPLAINs the statement with
    :lo and :hi bound, which Citus refuses for an INSERT ... SELECT it must pull to the coordinator
    (reference target) or repartition (non-colocated target). Nothing is enqueued."""
    _target(cluster, table)
    handler = tmp_path / f"{table}.sql"
    handler.write_text(TROOP_LOG_SQL.format(table=table))
    out = run_cli(cluster.url, "enqueue", "backfill-range", "--source", "hero_snapshots", "--key", "created_at",
                  "--from", "2024-01-01", "--to", "2025-01-01", "--handler", f"sql:{handler}", "--owner", "tests",
                  check=False, env=ENV)
    assert out.returncode != 0
    # Citus cannot EXPLAIN this INSERT ... SELECT with parameters (its message blames "parameters in SQL
    # functions"), although it runs it with them
    assert out.stderr.strip().splitlines()[-1] == (
        "error: sql handler does not plan: could not create distributed plan (on Citus a SQL handler must read and"
        " write colocated distributed tables; into a reference or non-colocated table, use a Python handler:"
        " ops/citus.md)")
    assert _scalar(cluster, "SELECT count(*) FROM queue_jobs") == 0


# -- (f) a batch that writes one worker node, and the coordinator crashing at its commit ----------------

# A deferred trigger on troop_log's shards that, while the test holds an advisory lock on the node, sleeps in
# the commit of each transaction that wrote the shard (in COMMIT when Citus commits one-phase, in PREPARE
# TRANSACTION when two-phase): the window between a node's commit and the coordinator's own, held open.
# Created on the coordinator: Citus propagates the function to the nodes and the trigger to the shards.
ARMED = 7_311_018  # the advisory lock key that arms it
HOLD_COMMIT = [f"""
CREATE OR REPLACE FUNCTION public.hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('tidegate_test.held', true) IS DISTINCT FROM 'yes'
       AND NOT pg_try_advisory_xact_lock_shared({ARMED}) THEN
        PERFORM set_config('tidegate_test.held', 'yes', true);
        PERFORM pg_sleep(8);
    END IF;
    RETURN NULL;
END $$""",
               "SET citus.enable_unsafe_triggers TO on",  # a trigger on a distributed table: on every shard
               "CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON troop_log DEFERRABLE INITIALLY DEFERRED"
               " FOR EACH ROW EXECUTE FUNCTION public.hold_commit()"]  # one statement each: Citus sends them on


def _keep_one_node(cluster: Cluster) -> int:
    """Delete the snapshots of every user whose shard is not on the first worker node: each batch then
    writes that node only, through single-shard INSERTs (which Citus alone commits one-phase). The rows left."""
    port = cluster.workers[0].port
    with cluster.engine.begin() as conn:
        users = conn.execute(text(
            "SELECT user_id, get_shard_id_for_distribution_column('hero_snapshots', user_id)"
            " FROM (SELECT DISTINCT user_id FROM hero_snapshots) u")).all()
        here = set(conn.execute(text(
            "SELECT shardid FROM citus_shards WHERE table_name = 'hero_snapshots'::regclass AND nodeport = :p"),
            {"p": port}).scalars())
        others = [u for u, shard in users if shard not in here]
        conn.execute(text("DELETE FROM hero_snapshots WHERE user_id = ANY(:u)"), {"u": others})
        return conn.execute(text("SELECT count(*) FROM hero_snapshots")).scalar_one()


def test_a_coordinator_crash_while_a_one_node_batch_commits_neither_loses_nor_doubles_it(cluster, start_pool):
    """Every batch writes one worker node. The node is made to hold the batch's commit open and the
    coordinator is crashed (-m immediate) in that window. Committed one-phase (Citus's choice for such a
    transaction) the node kept the rows while the checkpoint was lost, and the rerun doubled them (troop_log
    has no unique key). tidegate has each batch copy nothing into tidegate_two_phase (migration 0018), which
    makes Citus commit in two phases: the node's transaction is only prepared, recovery aborts it by the
    coordinator's record, and the rerun writes the rows once."""
    _target(cluster)
    rows = _keep_one_node(cluster)
    assert 0 < rows < ROWS
    with cluster.coordinator.connect() as conn:
        for statement in HOLD_COMMIT:
            conn.execute(statement)
    job = _enqueue(cluster, "tests.citus_handlers:troop_log", concurrency=1)
    pool = start_pool("--concurrency", "1", "--retry-backoff", "0.5")
    wait_for(lambda: job_row(cluster.engine, job).processed_count >= 600, timeout=120, what="progress")
    node = cluster.workers[0]
    with node.connect() as arm:
        arm.execute("SELECT pg_advisory_lock(%s)", (ARMED,))
        wait_for(lambda: node.query("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")[0][0] > 0,
                 timeout=60, what="a batch's commit held open on the worker node")
    assert job_row(cluster.engine, job).status == "running"
    cluster.coordinator.stop("immediate")  # the coordinator crashes before its own commit
    wait_for(lambda: node.query("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")[0][0] == 0,
             timeout=60, what="the node's side of that commit to end")
    cluster.coordinator.start()
    cluster.engine.dispose()
    wait_for(lambda: _done(cluster, job), timeout=240, what="job done after the coordinator's crash")
    assert pool.terminate() == 0
    _assert_no_prepared_transactions_after_recovery(cluster)
    _assert_exactly_once(cluster, "troop_log")
    assert job_row(cluster.engine, job).processed_count == rows


def test_every_batch_on_a_citus_coordinator_commits_two_phase(cluster):
    """The two-phase commit is every batch's, also one that wrote a single shard (batches of one user):
    Citus records each in pg_dist_transaction, until its recovery clears the records."""
    _target(cluster)
    _keep_one_node(cluster)
    cluster.coordinator.query("ALTER SYSTEM SET citus.recover_2pc_interval = -1")
    cluster.coordinator.query("SELECT pg_reload_conf()")
    try:
        cluster.recover_prepared()
        before = _scalar(cluster, "SELECT count(*) FROM pg_dist_transaction")
        job = run_cli(cluster.url, "enqueue", "backfill-range", "--source", "hero_snapshots", "--key", "created_at",
                      "--from", "2024-01-01", "--to", "2024-01-01T01:00:00", "--handler",
                      "tests.citus_handlers:troop_log", "--batch-size", "1", "--min-batch-size", "1",
                      "--max-batch-size", "1", "--concurrency", "1", "--owner", "tests", env=ENV).stdout.strip()
        run_cli(cluster.url, "worker", "--concurrency", "1", "--drain", env=ENV)
        row = job_row(cluster.engine, job)
        assert row.status == "done" and row.processed_count >= 10
        # a record per batch that wrote the node (the last, empty one wrote nothing); one-phase: none
        assert _scalar(cluster, "SELECT count(*) FROM pg_dist_transaction") - before >= row.processed_count - row.error_count
    finally:
        cluster.coordinator.query("ALTER SYSTEM RESET citus.recover_2pc_interval")
        cluster.coordinator.query("SELECT pg_reload_conf()")


def test_the_cluster_is_what_the_tests_say(citus):
    """Three nodes, two of them workers holding the shards; tidegate's tables local to the coordinator."""
    nodes = citus.coordinator.query("SELECT nodeport, groupid, shouldhaveshards FROM pg_dist_node ORDER BY groupid")
    assert [(port, group) for port, group, _ in nodes] == [(n.port, i) for i, n in enumerate(citus.nodes)]
    # tidegate's one distributed table: always empty, a batch copies nothing into it (migration 0018)
    assert citus.coordinator.query("SELECT logicalrelid::text FROM pg_dist_partition") == [("tidegate_two_phase",)]
    assert citus.coordinator.query("SELECT to_regclass('backfill_jobs') IS NOT NULL") == [(True,)]
    assert all(w.query("SELECT to_regclass('backfill_jobs')") == [(None,)] for w in citus.workers)
    assert citus.coordinator.query("SELECT citus_version()")[0][0].startswith("Citus 13.2")


@contextmanager
def _roles(cluster: Cluster) -> Iterator[tuple[str, dict[str, str]]]:
    """ops/roles.sql applied on the coordinator with this test's own role names: (prefix, a URL for the
    enqueue and the worker login)."""
    _target(cluster)
    prefix = f"tg{uuid.uuid4().hex[:6]}_"
    with cluster.engine.begin() as conn:
        conn.execute(text((ROOT / "ops/roles.sql").read_text().replace("tg_", prefix)))
        conn.execute(text(f"ALTER ROLE {prefix}enqueue LOGIN; ALTER ROLE {prefix}worker LOGIN"))
        conn.execute(text(f"GRANT SELECT ON hero_snapshots TO {prefix}enqueue, {prefix}worker"))
        conn.execute(text(f"GRANT INSERT ON troop_log TO {prefix}worker"))
    try:
        yield prefix, {r: cluster.url.replace("postgres@", f"{prefix}{r}@") for r in ("enqueue", "worker")}
    finally:
        with cluster.engine.begin() as conn:
            for role in ("enqueue", "operator", "worker", "maintenance", "sql_author"):
                conn.execute(text(f"DROP OWNED BY {prefix}{role}; DROP ROLE {prefix}{role}"))


def test_ops_roles_applied_on_the_coordinator_reach_the_nodes_and_a_worker_login_runs_the_backfill(cluster):
    """ops/roles.sql on the coordinator: Citus creates the roles on every node and grants on distributed
    tables reach their shards, so a tg_worker login runs batches whose writes land on the workers."""
    with _roles(cluster) as (prefix, as_role):
        for node in cluster.nodes:
            assert node.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", f"{prefix}worker") == [(True,)]
        job = _enqueue(cluster, "tests.citus_handlers:troop_log", concurrency=2, url=as_role["enqueue"])
        out = run_cli(as_role["worker"], "worker", "--concurrency", "2", "--drain", env=ENV)
        _assert_python_job_exact(cluster, job)
        assert "tidegate_two_phase" not in out.stdout + out.stderr  # granted: nothing to warn of


def test_a_worker_role_made_before_migration_0018_warns_once_with_the_grant_and_runs_its_jobs(cluster):
    """Roles applied before `tidegate db upgrade` reached 0018 have no INSERT on tidegate_two_phase (ops/roles.sql
    grants it only where the table exists). The worker's COPY there would fail every batch of every job:
    instead it says once which login lacks what and the GRANT that mends it, and commits as Citus would."""
    with _roles(cluster) as (prefix, as_role):
        with cluster.engine.begin() as conn:
            conn.execute(text(f"REVOKE INSERT ON tidegate_two_phase FROM {prefix}worker"))
        job = _enqueue(cluster, "tests.citus_handlers:troop_log", concurrency=2, url=as_role["enqueue"])
        out = run_cli(as_role["worker"], "worker", "--concurrency", "2", "--drain", env=ENV)
        _assert_python_job_exact(cluster, job)
        log = out.stdout + out.stderr
        warned = log.count(f"this login ({prefix}worker) may not insert into tidegate_two_phase")
        assert 1 <= warned <= 2, log  # once per worker process (two), not once per batch
        assert "GRANT INSERT ON tidegate_two_phase to the worker role" in log
