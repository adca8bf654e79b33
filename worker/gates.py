"""Health gates: checked between batches; while one holds, the job waits (it is not failed).

A gate is a small object: ``check(conn, written_tables) -> Verdict`` whose ``GateState`` is go, hold (with a
reason) or unknown (it could not tell, e.g. no privilege to read pg_stat_replication: unknown
never holds). The pool builds its gates from `tidegate worker --gate-*` options; add your own by
passing more objects to :class:`Gates`.

On a Citus coordinator (the citus extension, active worker nodes in pg_dist_node) the gates that
also know how to judge a node (``check_node(health) -> Verdict``: connections, long transactions,
replication lag) judge each worker node too, from one ``run_command_on_workers`` round per check;
the job is then held by ``GATE@host:port`` (``connections@10.0.0.2:5432``), and a node that does not
answer holds it as ``unreachable@host:port`` (ops/citus.md).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tidegate.worker import metrics, store
from tidegate.worker.db import first_line
from tidegate.worker.logs import job_ctx
from tidegate.worker.states import ACTIVE

log = logging.getLogger("tidegate.worker.runner")


class GateState(StrEnum):
    GO = "go"  # the job may run its next batch
    HOLD = "hold"  # the job waits (not failed) while the condition lasts; the reason says why
    UNKNOWN = "unknown"  # the gate could not tell (no privilege to look): never holds


@dataclass(frozen=True)
class Verdict:
    state: GateState
    reason: str = ""


GO = Verdict(GateState.GO)


class Gate(Protocol):
    name: str

    def check(self, conn: Connection, written: list[str]) -> Verdict: ...


@runtime_checkable
class NodeGate(Protocol):
    """A gate that also judges a Citus worker node from its answer to gate_node_health (store.NodeHealth)."""

    name: str

    def check_node(self, health: dict[str, Any]) -> Verdict: ...


@dataclass(frozen=True)
class Connections:
    """Hold while the server's connections exceed a share of max_connections (the runbook's 80%)."""

    share: float = 0.8
    name: str = "connections"

    def check(self, conn: Connection, written: list[str]) -> Verdict:
        used, limit = store.connections_in_use(conn)
        if used >= self.share * limit:
            return Verdict(GateState.HOLD, f"{used} of {limit} connections in use (hold at {self.share:.0%})")
        return GO

    def check_node(self, health: dict[str, Any]) -> Verdict:
        used, limit = int(health["used"]), int(health["max_connections"])
        if used >= self.share * limit:
            return Verdict(GateState.HOLD, f"{used} of {limit} connections in use (hold at {self.share:.0%})")
        return GO


@dataclass(frozen=True)
class LongTransactions:
    """Hold while another session's transaction in this database has been open longer than ``seconds``.

    Only this database: a transaction elsewhere does not hold back vacuum of our tables (its
    snapshot horizon is per database), and tidegate's own sessions are not counted."""

    seconds: float = 300.0
    name: str = "long_transactions"

    def check(self, conn: Connection, written: list[str]) -> Verdict:
        row = store.long_transaction(conn, self.seconds)
        if row is not None:
            return Verdict(GateState.HOLD, f"transaction of pid {row.pid} open for {row.age:.0f}s"
                                   f" (hold over {self.seconds:.0f}s)")
        return GO

    def check_node(self, health: dict[str, Any]) -> Verdict:
        oldest = health.get("oldest")
        if oldest is not None and float(oldest["age"]) > self.seconds:
            return Verdict(GateState.HOLD, f"transaction of pid {oldest['pid']} open for {float(oldest['age']):.0f}s"
                                   f" (hold over {self.seconds:.0f}s)")
        return GO


@dataclass(frozen=True)
class ReplicationLag:
    """Hold while any replica replays more than ``seconds`` behind.

    The lag is PostgreSQL's own measure in pg_stat_replication: the time since the primary
    flushed the oldest WAL a standby has not yet written, flushed or replayed (the largest of
    write_lag, flush_lag, replay_lag). It keeps growing while a standby's replay is stuck
    (paused, or blocked by a conflicting query), because the standby's receiver still reports
    in (every ``wal_receiver_status_interval``, 10 s by default). A standby that is not
    connected is not in the view, so it cannot hold a job. A role that can see the replicas
    but not their progress (neither superuser nor pg_read_all_stats) gets unknown.
    """

    seconds: float = 30.0
    name: str = "replication_lag"

    def worst(self, conn: Connection):  # type: ignore[no-untyped-def]
        """The replica furthest behind (name, lag in seconds, bytes not replayed), or None with
        no replica; with no privilege to see progress, a row whose ``hidden`` is true."""
        return store.worst_replica(conn)

    def lag_seconds(self, conn: Connection) -> float | None:
        """The largest lag of any replica; None with no replica (or none measured lately)."""
        row = self.worst(conn)
        return None if row is None or row.lag is None else float(row.lag)

    def check(self, conn: Connection, written: list[str]) -> Verdict:
        try:
            with conn.begin_nested():
                row = self.worst(conn)
        except DBAPIError:
            return Verdict(GateState.UNKNOWN, "cannot read pg_stat_replication")
        if row is not None and row.hidden:
            return Verdict(GateState.UNKNOWN, "cannot see the replicas' progress (needs pg_read_all_stats)")
        if row is not None and row.lag is not None and row.lag > self.seconds:
            return Verdict(GateState.HOLD, f"replica {row.replica} is {row.lag:.0f}s behind ({row.bytes or 0} bytes"
                                   f" not replayed; hold over {self.seconds:.0f}s)")
        return GO

    def check_node(self, health: dict[str, Any]) -> Verdict:
        row = health.get("replica")
        if row is not None and row["hidden"]:
            return Verdict(GateState.UNKNOWN, "cannot see the replicas' progress (needs pg_read_all_stats)")
        if row is not None and row["lag"] is not None and float(row["lag"]) > self.seconds:
            return Verdict(GateState.HOLD, f"replica {row['replica']} is {float(row['lag']):.0f}s behind"
                                   f" ({row['bytes'] or 0} bytes not replayed; hold over {self.seconds:.0f}s)")
        return GO


@dataclass(frozen=True)
class Autovacuum:
    """Hold while (auto)vacuum works on a table the job writes."""

    name: str = "autovacuum"

    def check(self, conn: Connection, written: list[str]) -> Verdict:
        if not written:
            return GO
        rel = store.vacuuming(conn, written)
        if rel is not None:
            return Verdict(GateState.HOLD, f"vacuum running on {rel}")
        return GO


class Gates:
    """The gates of a pool, checked at most every ``every`` seconds per job."""

    def __init__(self, gates: list[Gate], every: float = 1.0, wait: bool = True, node_timeout: float = 5.0) -> None:
        self.gates = gates
        self.every = every
        self.node_timeout = node_timeout  # seconds a Citus worker node may take to accept the gates' connection
        self.wait = wait  # False: wait_if_held returns at once (a pool over several targets serves another)
        self._last: dict[str, tuple[float, tuple[str, str] | None]] = {}
        self._written: dict[str, list[str]] = {}  # per job: the tables it declares it writes
        self._held: set[str] = set()  # jobs this process has recorded as held
        self._nodes_unreadable = False  # asking the Citus worker nodes failed once (logged)
        self._citus: bool | None = None  # is the database a Citus coordinator with worker nodes (asked once)

    def recently_go(self, job_id: str) -> bool:
        """Every gate said go for this job less than ``every`` seconds ago: no need to ask again."""
        seen = self._last.get(job_id)
        return seen is not None and seen[1] is None and time.monotonic() - seen[0] < self.every

    def holding(self, conn: Connection, job_id: str, written: list[str]) -> tuple[str, str] | None:
        """(gate name, reason) of the first gate that holds, or None."""
        if self.recently_go(job_id):
            return None
        now = time.monotonic()
        result = None
        for gate in self.gates:
            verdict = gate.check(conn, written)
            if verdict.state == GateState.HOLD:  # a gate of its own may still say "hold"
                result = (gate.name, verdict.reason)
                break
        if result is None:
            result = self.holding_node(conn)
        self._last[job_id] = (now, result)
        return result

    def holding_node(self, conn: Connection) -> tuple[str, str] | None:
        """On a Citus coordinator: (``GATE@host:port``, reason) of the first worker node a gate holds for,
        ``unreachable@host:port`` for a node that did not answer; None when every node says go (or this
        is no Citus coordinator, or no gate judges nodes). Reading the nodes failing is unknown: go."""
        judges = [g for g in self.gates if isinstance(g, NodeGate)]
        if not judges:
            return None
        try:
            if self._citus is None:  # asked once per worker: a database does not gain or lose Citus under it
                with conn.begin_nested():
                    self._citus = store.has_citus(conn)
            if not self._citus:
                return None
            with conn.begin_nested():
                nodes = store.worker_node_health(conn, max(1, int(self.node_timeout * 1000)))
        except DBAPIError as err:  # e.g. no privilege to run run_command_on_workers: said once, at warning
            (log.debug if self._nodes_unreadable else log.warning)(
                "gates cannot ask the Citus worker nodes (their gates say nothing): %s", first_line(err))
            self._nodes_unreadable = True
            return None
        for node in nodes:
            if node.health is None:
                return f"unreachable@{node.node}", f"Citus worker node {node.node} did not answer: {node.error}"
            for gate in judges:
                try:
                    verdict = gate.check_node(node.health)
                except (KeyError, TypeError, ValueError):  # an answer of another shape: cannot tell
                    continue
                if verdict.state == GateState.HOLD:
                    return f"{gate.name}@{node.node}", f"worker node {node.node}: {verdict.reason}"
        return None

    def wait_if_held(self, engine: Engine, job_id: str, stop: threading.Event) -> bool:
        """Between two batches of a job: while a gate holds, record which on the job (``status`` shows
        it), wait ``every`` seconds and return True; clear the record when none holds any more."""
        if not self.gates or self.recently_go(job_id):
            return False  # no transaction of its own on the batch path while the gates say go
        with engine.begin() as conn:
            job = store.job_params(conn, job_id)
            if job is None or job.status not in ACTIVE:
                return False  # paused or cancelled while held: let begin_batch see it and let go
            written = self._written.setdefault(job_id, list((job.params or {}).get("writes") or []))
            held = self.holding(conn, job_id, written)
            if held is None:
                if job_id in self._held:
                    store.hold(conn, job_id, None)
                    self._held.discard(job_id)
                    log.info("job %s: no gate holds it any more", job_id, extra=job_ctx(job_id))
                return False
            gate, reason = held
            store.hold(conn, job_id, gate)
        metrics.GATE_HOLDS.labels(gate.partition("@")[0]).inc()  # the gate, not the node: few label values
        if job_id not in self._held:
            log.warning("job %s held by gate %s: %s", job_id, gate, reason, extra=job_ctx(job_id, gate=gate))
            self._held.add(job_id)
        if self.wait:
            stop.wait(self.every)
        return True
