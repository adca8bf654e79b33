"""Operator actions: pause, resume, cancel, retry — the same guarded updates as the runbook's SQL.

A planned job moves in ``backfill_jobs``; a job no worker has planned yet moves in ``queue_jobs``
alone. The database does the rest, for these commands and a runbook's UPDATE alike (migration
0005): its triggers refuse moves the state machine lacks, write the audit row (the trigger is its
single writer: ``actor`` is the name given here, ``db_user`` the login), keep a planned job's queue
row in step, and on retry give unfinished slices their attempts back.
"""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from tidegate.worker import knobs, store
from tidegate.worker.errors import IllegalTransition, InvalidInput, NotFound, quote
from tidegate.worker.states import TRANSITIONS

JOB_ID_CHARS = 36  # a uuid with its dashes

# queue-row moves for jobs that have no backfill_jobs row yet
_UNPLANNED = {
    "pause": (("pending",), "paused"),
    "resume": (("paused",), "pending"),
    "cancel": (("pending", "paused"), "cancelled"),
    "retry": (("failed", "cancelled"), "pending"),
}


def find_job(conn: Connection, ref: str) -> str:
    """A full job id, from a full id or an unambiguous prefix (as `status` prints them)."""
    ref = check_job_ref(ref)
    rows = store.find_jobs(conn, ref)
    if not rows:
        raise NotFound(f"no job {quote(ref)}")
    if len(rows) > 1:
        raise InvalidInput(f"job id prefix {quote(ref)} is ambiguous: it matches {rows[0].id}, {rows[1].id}"
                           " and maybe more; give more characters")
    return str(rows[0].id)


def check_job_ref(ref: object) -> str:
    """``ref`` as a job id or id prefix (lower case), or InvalidInput: hex digits and dashes, 1 to 36 of them."""
    if not isinstance(ref, str):
        raise InvalidInput(f"a job id must be text, got {quote(ref)}")
    cleaned = ref.strip().lower()
    if not cleaned or len(cleaned) > JOB_ID_CHARS or any(c not in "0123456789abcdef-" for c in cleaned):
        raise InvalidInput(f"{quote(ref, 60)} is not a job id (a uuid as `tidegate status` prints it, or an"
                           " unambiguous prefix of one)")
    return cleaned


def transition(conn: Connection, ref: str, action: str, actor: str, reason: str | None = None) -> str:
    job_id = find_job(conn, ref)
    (row,) = store.find_jobs(conn, job_id)
    sources, target = TRANSITIONS[action]
    reason = reason or f"{action} by {actor}"
    _label(conn, actor, reason)
    if row.job_status is None:  # not planned yet
        q_from, q_to = _UNPLANNED[action]
        if not store.set_queue_status(conn, job_id, q_to, list(q_from)):
            raise IllegalTransition(f"cannot {action} job {job_id}: it is {row.queue_status}")
    else:
        if not store.set_job_status(conn, job_id, target.value, [s.value for s in sources], reason, actor):
            raise IllegalTransition(
                f"cannot {action} job {job_id}: it is {row.job_status}"
                f" ({action} needs {' or '.join(s.value for s in sources)})"
            )
    return job_id


def _label(conn: Connection, actor: str, reason: str) -> None:
    """Who (``--by``) and why, for the audit rows this transaction's moves make. Labels only: the
    trigger records the login (``session_user``) beside them and decides nothing by them."""
    store.label_transaction(conn, actor, reason)


def pause_all(conn: Connection, actor: str, reason: str | None) -> list[str]:
    """Every job that could still start a batch: planned ones (pending, running) and queue rows no
    worker has planned yet. Unplanned ones first: one being planned meanwhile is waited for, and then
    its new checkpoint row is paused by the second statement."""
    sources, target = TRANSITIONS["pause"]
    reason = reason or f"pause --all by {actor}"
    _label(conn, actor, reason)  # each job's pause is audited by the trigger, with this reason
    unplanned = store.pause_unplanned(conn)
    return unplanned + store.set_all_jobs_status(conn, target.value, [s.value for s in sources], reason, actor)


def set_knobs(conn: Connection, ref: str, changes: dict[str, object], actor: str) -> str:
    """Apply ``changes`` (knob name: number, or None to lift a clearable one) to a planned job. Each is
    checked against its range here too (whoever the caller: the CLI, jobs/rollout.py); the database's CHECKs
    have the last word (min_batch_size above max_batch_size, say)."""
    unknown = sorted(set(changes) - {k.name for k in knobs.LIVE_KNOBS})
    if unknown:
        raise InvalidInput(f"not a knob of a running job: {', '.join(map(quote, unknown))}")
    changes = {name: knobs.KNOBS[name].parse(value) for name, value in changes.items()}
    job_id = find_job(conn, ref)
    try:
        with conn.begin_nested():
            moved = store.set_knobs(conn, job_id, changes)
    except IntegrityError as err:
        raise InvalidInput(f"refused by the database: {str(err.orig).splitlines()[0]}") from None
    if not moved:
        raise NotFound(f"job {job_id} has not been planned yet: set its payload, or wait for a worker")
    store.audit(conn, actor, "set", job_id, {k: v for k, v in changes.items()})
    return job_id
