"""Enqueue: validate a payload exactly as a worker will, then insert it.

Validation runs the job kind's own planning inside a savepoint that is rolled
back, so a CLI user gets the same clear error a worker would record, and a
job that would fail at planning is never queued.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine

from tidegate.worker import kinds, knobs, store
from tidegate.worker.errors import InvalidInput, quote
from tidegate.worker.kinds import Plan


def validate(engine: Engine, job_type: str, payload: dict[str, Any]) -> Plan:
    kind = kinds.kinds().get(job_type)
    if kind is None:
        raise InvalidInput(f"unknown job type {quote(job_type)}; known: {', '.join(sorted(kinds.kinds()))}")
    if not isinstance(kind, kinds.RangeKind):
        raise InvalidInput(f"{quote(job_type)} is a one-shot kind: it has no plan to validate")
    with engine.connect() as conn:
        return validate_on(conn, job_type, payload)


def validate_on(conn: Connection, job_type: str, payload: dict[str, Any]) -> Plan:
    """:func:`validate` on a connection the caller holds (a fan-out run prepares each target first, in
    the same transaction): the plan is made and the transaction rolled back, whatever happens."""
    kind = kinds.kinds().get(job_type)
    if kind is None:
        raise InvalidInput(f"unknown job type {quote(job_type)}; known: {', '.join(sorted(kinds.kinds()))}")
    if not isinstance(kind, kinds.RangeKind):
        raise InvalidInput(f"{quote(job_type)} is a one-shot kind: it has no plan to validate")
    try:
        return kind.plan(conn, payload)
    finally:
        conn.rollback()


def queue_knobs(priority: int | str | None = None, max_attempts: int | str | None = None) -> dict[str, int]:
    """The queue knobs (None: their default), checked against worker/knobs.py."""
    given = {"priority": priority, "max_attempts": max_attempts}
    return {k.name: k.check(k.default if given[k.name] is None else given[k.name]) for k in knobs.QUEUE_KNOBS}


def insert(conn: Connection, job_type: str, payload: dict[str, Any], knobs_: dict[str, int], *, actor: str,
           queue: str, run_after: datetime | None, run_id: str | None) -> str:
    """Queue an already validated job in the caller's transaction, audited; its id."""
    job_id, enqueued_by = store.enqueue(conn, job_type, queue, payload, knobs_["priority"], knobs_["max_attempts"],
                                        run_after, run_id)
    # enqueued_by: the login role, as the database recorded it (a trigger); actor: what --by says
    store.audit(conn, actor, "enqueue", job_id, {"type": job_type, "payload": payload, "queue": queue,
                                                 "enqueued_by": enqueued_by, **({"run_id": run_id} if run_id else {})})
    return job_id


def enqueue(
    engine: Engine,
    job_type: str,
    payload: dict[str, Any],
    *,
    actor: str,
    queue: str = "default",
    priority: int | str | None = None,
    max_attempts: int | str | None = None,
    run_after: datetime | None = None,
    run_id: str | None = None,
) -> tuple[str, Plan]:
    """Validate and queue a job (one of fan-out run ``run_id``, if given). The queue knobs (None: their
    default) are checked against worker/knobs.py."""
    chosen = queue_knobs(priority, max_attempts)
    plan = validate(engine, job_type, payload)
    with engine.begin() as conn:
        job_id = insert(conn, job_type, payload, chosen, actor=actor, queue=queue, run_after=run_after, run_id=run_id)
    return job_id, plan
