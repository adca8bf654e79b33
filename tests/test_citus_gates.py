"""Health gates on a Citus coordinator look at the worker nodes too (worker/gates.py, ops/citus.md).

The condition is made on one worker node only (idle connections opened to it, a transaction left
open on it, the node stopped), so only the node's check can see it: the job is held by
``GATE@127.0.0.1:PORT``, the pool stays up, and once the condition clears the job ends with exactly the
rows the source says (tests/test_citus.py's proof: nothing missing, nothing doubled).
"""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.citus import Cluster, Node
from tests.conftest import job_row, run_cli, wait_for
from tests.test_citus import (
    _assert_no_prepared_transactions_after_recovery,
    _assert_python_job_exact,
    _enqueue,
    _target,
)
from tidegate.worker import gates

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("citus")]


def _used(node: Node) -> int:
    return int(node.query("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")[0][0])


def _held_by(cluster: Cluster, job: str) -> str | None:
    return job_row(cluster.engine, job).held_by


def _open(node: Node, n: int) -> list[psycopg.Connection]:
    return [psycopg.connect(node.url, autocommit=True, application_name="someone-else") for _ in range(n)]


def _close(conns: list[psycopg.Connection]) -> None:
    while conns:
        conns.pop().close()


def test_connections_on_one_worker_node_hold_the_job_naming_that_node(cluster, start_pool):
    _target(cluster)
    job = _enqueue(cluster, "tests.citus_handlers:troop_log", concurrency=2)
    busy = cluster.workers[1]
    # the pool's own connections (a few on the coordinator, Citus's on the workers) stay under the share;
    # 30 idle ones on the second worker node go over it
    limit = 60  # tests/citus.py's max_connections
    share = (max(_used(n) for n in cluster.nodes) + 15) / limit
    opened = _open(busy, 30)
    try:
        pool = start_pool("--concurrency", "2", "--poll", "0.1", "--gate-connections", f"{share:.4f}")
        where = f"connections@127.0.0.1:{busy.port}"
        wait_for(lambda: _held_by(cluster, job) == where, timeout=60, what=f"the job held by {where}")
        row = job_row(cluster.engine, job)
        assert row.processed_count == 0 and row.status in ("pending", "running")  # waiting, not failed
        shown = json.loads(run_cli(cluster.url, "status", job, "--json").stdout)
        assert shown["held_by"] == where
        assert f"held by gate {where}" in run_cli(cluster.url, "status").stdout
        assert pool.proc.poll() is None
        _close(opened)
        wait_for(lambda: job_row(cluster.engine, job).status == "done", timeout=180, what="done once the gate lets go")
    finally:
        _close(opened)
    assert pool.terminate() == 0
    assert job_row(cluster.engine, job).held_by is None
    assert "held by gate connections@127.0.0.1" in pool.output()  # the log names the node, with the counts
    assert f"worker node 127.0.0.1:{busy.port}: " in pool.output()
    _assert_python_job_exact(cluster, job)


def test_a_long_transaction_on_a_worker_node_holds_the_job_until_it_ends(cluster, start_pool):
    _target(cluster)
    job = _enqueue(cluster, "tests.citus_handlers:troop_log", concurrency=2)
    node = cluster.workers[0]
    other = psycopg.connect(node.url, application_name="someone-else")
    try:
        other.execute("SELECT txid_current()")  # a transaction open on the worker node only
        wait_for(lambda: node.query("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'someone-else'"
                                    " AND now() - xact_start > interval '1 second'")[0][0], what="an old transaction")
        pool = start_pool("--concurrency", "2", "--poll", "0.1", "--gate-long-transactions", "1")
        where = f"long_transactions@127.0.0.1:{node.port}"
        wait_for(lambda: _held_by(cluster, job) == where, timeout=60, what=f"the job held by {where}")
        assert job_row(cluster.engine, job).processed_count == 0
        other.commit()
        # tidegate's own batches are transactions on the worker nodes too (citus_internal sessions): they
        # must not hold the job, so it runs to the end with the 1 s threshold
        wait_for(lambda: job_row(cluster.engine, job).status == "done", timeout=180, what="done once committed")
    finally:
        other.close()
    assert pool.terminate() == 0
    _assert_python_job_exact(cluster, job)


def test_a_worker_node_down_holds_the_job_as_unreachable_without_stopping_the_pool(cluster, start_pool):
    _target(cluster)
    job = _enqueue(cluster, "tests.citus_handlers:troop_log", concurrency=2)
    pool = start_pool("--concurrency", "2", "--retry-backoff", "0.5")
    wait_for(lambda: job_row(cluster.engine, job).processed_count >= 2000, timeout=120, what="progress")
    down = cluster.workers[1]
    down.stop("fast")
    try:
        where = f"unreachable@127.0.0.1:{down.port}"
        wait_for(lambda: _held_by(cluster, job) == where, timeout=60, what=f"the job held by {where}")
        assert pool.proc.poll() is None and len(pool.workers()) == 2  # the pool and its workers stay up
        assert job_row(cluster.engine, job).status == "running"
        assert f"Citus worker node 127.0.0.1:{down.port} did not answer" in pool.output()
    finally:
        down.start()
    wait_for(lambda: job_row(cluster.engine, job).status == "done", timeout=180, what="done once the node is back")
    assert pool.terminate() == 0
    assert job_row(cluster.engine, job).held_by is None
    _assert_no_prepared_transactions_after_recovery(cluster)
    _assert_python_job_exact(cluster, job)


def test_the_gates_read_every_worker_node_and_only_on_a_citus_coordinator(cluster, engine):
    """One run_command_on_workers round answers for every worker node; on a plain server no node is asked."""
    with cluster.engine.connect() as conn:
        nodes = gates.store.worker_node_health(conn, 5000)
        assert sorted(n.node for n in nodes) == sorted(f"127.0.0.1:{w.port}" for w in cluster.workers)
        assert all(n.health and n.health["max_connections"] == 60 and n.health["used"] >= 1 for n in nodes)
        # a threshold nothing reaches: go; one every node is over: held by the first node
        assert gates.Gates([gates.Connections(1.0)]).holding_node(conn) is None
        held = gates.Gates([gates.Connections(0.01), gates.Autovacuum()]).holding_node(conn)
        assert held is not None and held[0] == f"connections@{nodes[0].node}"
        assert gates.Gates([gates.Autovacuum()]).holding_node(conn) is None  # no gate that judges nodes
    with engine.connect() as conn:  # the shared test server has no Citus
        assert gates.Gates([gates.Connections(0.01)]).holding_node(conn) is None


@pytest.mark.parametrize("health", [
    {}, {"used": "many", "max_connections": 60}, {"used": None, "max_connections": 60},
    {"used": 1, "max_connections": 60, "oldest": {"pid": 1}}, {"used": 1, "max_connections": 60, "replica": []},
])
def test_an_answer_of_another_shape_is_no_reason_to_hold_or_crash(health):
    """A node's answer is read defensively: a gate that cannot read it says nothing (Gates skips it)."""
    for gate in (gates.Connections(0.99), gates.LongTransactions(1000), gates.ReplicationLag(1000)):
        try:
            verdict = gate.check_node(health)
        except (KeyError, TypeError, ValueError):
            continue
        assert verdict.state != gates.GateState.HOLD
