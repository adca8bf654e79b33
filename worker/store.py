"""The query boundary: one function per runtime query, frozen results.

Every module of the runtime and the job kinds runs tidegate's queries through
here; only worker/identifiers.py runs its catalog lookups itself
(worker/sql/__init__.py draws the boundary, tests/test_layers.py keeps it).
Every function takes an open SQLAlchemy connection; the caller owns the
transaction. Row counts of guarded UPDATEs are checked here. Error text is
written through :func:`worker.redact.redact` here, so no writer of
``last_error`` or ``etl_errors.message`` can store a password.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from tidegate.worker import keys, knobs
from tidegate.worker.db import first_line
from tidegate.worker.errors import InvalidInput, cap
from tidegate.worker.kinds import ItemError, Plan
from tidegate.worker.redact import redact
from tidegate.worker.sql import q, raw


@dataclass(frozen=True)
class QueueJob:
    id: str
    type: str
    payload_text: str  # parsed by ``payload()``: a payload Python cannot read fails its job, not the worker
    queue: str
    priority: int
    attempts: int
    max_attempts: int
    enqueued_by: str | None = None  # the role that queued it, as the database recorded it

    def payload(self) -> Any:
        return parse_json(self.payload_text, "payload")


def parse_json(text: str, what: str) -> Any:
    """JSON read from the database, or InvalidInput: an integer of more digits than Python converts
    (4,300), nesting deeper than its recursion limit."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply to read") from None
    except ValueError as err:
        raise InvalidInput(f"{what} cannot be read: {first_line(err)[:200]}") from None


@dataclass(frozen=True)
class ClaimedSlice:
    job_id: str
    slice_no: int
    previous_owner: str | None


# the knob columns a planned job's payload fills (batch_size and concurrency come with the Plan)
PLANNED_KNOBS = tuple(k for k in knobs.LIVE_KNOBS if k.name not in ("batch_size", "concurrency"))


@dataclass(frozen=True)
class Knobs:
    """A job's pace knobs as read at the start of a batch (an UPDATE changes them live); their ranges
    are worker/knobs.py's. error_rate_threshold is not here: the batch's own UPDATE applies it in SQL."""

    batch_size: int
    concurrency: int
    max_rows_per_second: float | None = None
    sleep_between_batches: float = 0.0
    target_batch_seconds: float | None = None
    min_batch_size: int | None = None
    max_batch_size: int | None = None
    row_limit: int | None = None


@dataclass(frozen=True)
class BatchState:
    status: str
    kind: str
    params: dict[str, Any]
    key_type: keys.KeyType
    checkpoint: str
    end_key: str
    batch_size_now: int | None
    processed_count: int
    knobs: Knobs
    over_concurrency: bool = False
    short_of_slices: bool = False
    backend_pid: int = 0  # the server backend running the batch's transaction, and its start (the watchdog's target)
    xact_start: datetime | None = None
    enqueued_by: str | None = None  # the login that queued the job, as the database recorded it


def register_worker(conn: Connection, worker_id: str, pool: str, hostname: str, pid: int, lease: float) -> None:
    conn.execute(
        q("register_worker"),
        {"worker_id": worker_id, "pool": pool, "hostname": hostname, "pid": pid, "lease_seconds": lease},
    )


def heartbeat(conn: Connection, worker_id: str) -> bool:
    return conn.execute(q("heartbeat"), {"worker_id": worker_id}).first() is not None


def unregister_worker(conn: Connection, worker_id: str) -> None:
    conn.execute(q("unregister_worker"), {"worker_id": worker_id})


def reap_workers(conn: Connection) -> int:
    return conn.execute(q("reap_workers")).rowcount


def claim_queue_job(
    conn: Connection, queues: list[str], types: list[str], one_shot: list[str]
) -> QueueJob | None:
    row = conn.execute(q("claim_queue_job"), {"queues": queues, "types": types, "one_shot": one_shot}).first()
    if row is None:
        return None
    return QueueJob(str(row.id), row.type, row.payload, row.queue, row.priority, row.attempts, row.max_attempts,
                    row.enqueued_by)


def store_plan(conn: Connection, job_id: str, kind: str, plan: Plan) -> None:
    conn.execute(
        q("insert_range_job"),
        {
            "job_id": job_id,
            "kind": kind,
            "owner": plan.owner,
            "params": json.dumps(plan.params),
            "key_type": plan.key_type,
            "from_key": keys.encode(plan.from_key),
            "to_key": keys.encode(plan.to_key),
            "from_ts": keys.as_instant(plan.from_key),
            "to_ts": keys.as_instant(plan.to_key),
            "batch_size": plan.batch_size,
            "concurrency": plan.concurrency,
            "total_estimate": plan.total_estimate,
            "last_checkpoint": keys.encode(plan.slices[0].start) if plan.slices else None,
            **knobs.column_values(plan.params, PLANNED_KNOBS),
        },
    )
    conn.execute(
        q("insert_slice"),
        [
            {"job_id": job_id, "slice_no": n, "start_key": keys.encode(s.start), "end_key": keys.encode(s.end)}
            for n, s in enumerate(plan.slices)
        ],
    )
    conn.execute(q("mark_queue_job_planned"), {"job_id": job_id})


def claim_one_shots(conn: Connection, queues: list[str], types: list[str], limit: int) -> list[QueueJob]:
    """Claimed and marked done (see the query); run them before this transaction commits."""
    rows = conn.execute(q("claim_one_shots"), {"queues": queues, "types": types, "limit": limit}).all()
    rows.sort(key=lambda r: -r.priority)  # RETURNING keeps no order
    return [QueueJob(str(r.id), r.type, r.payload, r.queue, r.priority, r.attempts, r.max_attempts) for r in rows]


def retry_queue_job(conn: Connection, job_id: str, error: str, backoff_base: float, backoff_max: float,
                    counted: bool = False) -> None:
    """Back off or fail; ``counted``: the claim already counted this attempt (one-shot jobs)."""
    conn.execute(q("retry_queue_job"), {"job_id": job_id, "error": cap(redact(error)), "backoff_base": backoff_base,
                                        "backoff_max": backoff_max, "add": 0 if counted else 1})


def lock_unplanned(conn: Connection, job_id: str) -> bool:
    """Lock a claimed job's unplanned backfill_jobs row (migration 0013) for planning. False when another
    transaction holds it (an operator pausing it, whose UPDATE waits for the queue row next): leave the job
    to them. True when locked, or when the job has none (a kind not in tidegate_range_kinds)."""
    row = conn.execute(q("lock_unplanned"), {"job_id": job_id}).one()
    return not row.present or row.status is not None


def planned_already(conn: Connection, job_id: str) -> bool:
    return bool(conn.execute(q("job_planned_already"), {"job_id": job_id}).scalar())


def restore_planned_queue_job(conn: Connection, job_id: str) -> None:
    conn.execute(q("restore_planned_queue_job"), {"job_id": job_id})


def fail_claimed_one_shot(conn: Connection, job_id: str, error: str) -> None:
    conn.execute(q("fail_claimed_one_shot"), {"job_id": job_id, "error": error})


def fail_queue_job(conn: Connection, job_id: str, error: str) -> None:
    conn.execute(q("fail_queue_job"), {"job_id": job_id, "error": cap(redact(error))})


def claim_slice(conn: Connection, worker_id: str, queues: list[str], kinds: list[str]) -> ClaimedSlice | None:
    row = conn.execute(q("claim_slice"), {"queues": queues, "kinds": kinds, "worker_id": worker_id}).first()
    if row is None:
        return None
    params = {"job_id": row.job_id, "slice_no": row.slice_no, "worker_id": worker_id}
    conn.execute(q("take_slice"), params)
    conn.execute(q("start_job"), params)
    previous = row.locked_by if row.locked_by != worker_id else None
    return ClaimedSlice(str(row.job_id), row.slice_no, previous)


def begin_batch(conn: Connection, job_id: str, slice_no: int, worker_id: str) -> BatchState | None:
    row = conn.execute(
        q("begin_batch"), {"job_id": job_id, "slice_no": slice_no, "worker_id": worker_id}
    ).first()
    if row is None:
        return None
    knobs = Knobs(**{f.name: getattr(row, f.name) for f in fields(Knobs)})
    return BatchState(
        status=row.status, kind=row.kind, params=parse_json(row.params, "the job's params"), key_type=row.key_type,
        checkpoint=row.checkpoint, end_key=row.end_key, batch_size_now=row.batch_size_now,
        processed_count=row.processed_count, knobs=knobs, over_concurrency=bool(row.over_concurrency),
        short_of_slices=bool(row.short_of_slices), backend_pid=row.backend_pid, xact_start=row.xact_start,
        enqueued_by=row.enqueued_by)


@dataclass(frozen=True, kw_only=True)
class BatchRecord:
    """What a batch did, as :func:`record_batch` writes it."""

    job_id: str
    slice_no: int
    worker_id: str
    key_type: keys.KeyType
    checkpoint: keys.Key  # the slice's new exclusive cursor
    processed: int
    errors: list[ItemError] = field(default_factory=list)
    exhausted: bool = False  # the slice has no key left
    next_batch_size: int | None = None  # where the slice's next batch starts (adaptive sizing)


@dataclass(frozen=True)
class Recorded:
    job_done: bool  # the batch finished the job's last slice
    paused: str | None = None  # why the job paused itself meanwhile (its error budget spent), else None
    pace_wait: float = 0.0  # seconds until the job's rate cap allows its next batch (migration 0013)


def record_batch(conn: Connection, record: BatchRecord) -> Recorded:
    """Advance slice and job in the batch's transaction: failed items, the slice's cursor, the job's
    counters and watermark, and the job done after its last slice."""
    r = record
    if r.errors:
        conn.execute(
            q("insert_item_error"),
            [
                {"job_id": r.job_id, "slice_no": r.slice_no, "item_key": e.item_key, "error_type": e.error_type,
                 "message": cap(redact(e.message)), "sample": e.sample}
                for e in r.errors
            ],
        )
    params = {"job_id": r.job_id, "slice_no": r.slice_no, "worker_id": r.worker_id}
    cursors = conn.execute(
        q("advance_slice"),
        {**params, "checkpoint": keys.encode(r.checkpoint), "processed": r.processed, "errors": len(r.errors),
         "exhausted": r.exhausted, "next_batch_size": r.next_batch_size},
    ).all()
    if sum(1 for c in cursors if c.moved) != 1:  # unreachable while begin_batch's row lock holds; a guard
        raise RuntimeError(f"slice {r.job_id}/{r.slice_no} changed owner inside its own batch")
    job = conn.execute(
        q("advance_job"),
        {"job_id": r.job_id, "processed": r.processed, "errors": len(r.errors),
         "watermark": _low_watermark(r.key_type, cursors)},
    ).one()
    if r.exhausted and conn.execute(q("finish_job_if_done"), {"job_id": r.job_id}).first() is not None:
        conn.execute(q("finish_queue_job"), {"job_id": r.job_id, "status": "done"})
        return Recorded(job_done=True)
    return Recorded(job_done=False, paused=job.status_reason if job.status == "paused" else None,
                    pace_wait=float(job.pace_wait or 0.0))


def _low_watermark(key_type: keys.KeyType, cursors: list[Any]) -> str:
    """The highest key below which every slice is finished."""
    open_cursors = [keys.decode(key_type, c.checkpoint) for c in cursors if c.status != "done"]
    if open_cursors:
        return keys.encode(min(open_cursors))  # type: ignore[type-var]
    return keys.encode(keys.before(max(keys.decode(key_type, c.end_key) for c in cursors)))  # type: ignore[type-var]


@dataclass(frozen=True)
class Attempt:
    attempts: int
    max_attempts: int
    delay_seconds: float


def fail_attempt(
    conn: Connection, job_id: str, slice_no: int, worker_id: str, error: str,
    backoff_base: float, backoff_max: float,
) -> Attempt | None:
    """Count a failed batch and schedule its retry; None if the slice was not ours."""
    error = cap(redact(error))
    row = conn.execute(
        q("fail_slice_attempt"),
        {"job_id": job_id, "slice_no": slice_no, "worker_id": worker_id, "error": error,
         "backoff_base": backoff_base, "backoff_max": backoff_max},
    ).first()
    if row is None:
        return None
    max_attempts = conn.execute(
        q("note_job_error"), {"job_id": job_id, "attempts": row.attempts, "error": error}
    ).scalar_one()
    return Attempt(row.attempts, max_attempts, row.delay.total_seconds())


def fail_job(conn: Connection, job_id: str, reason: str) -> None:
    conn.execute(q("fail_job"), {"job_id": job_id, "reason": cap(redact(reason))})
    conn.execute(q("finish_queue_job"), {"job_id": job_id, "status": "failed"})


def release_slice(conn: Connection, job_id: str, slice_no: int, worker_id: str) -> None:
    conn.execute(q("release_slice"), {"job_id": job_id, "slice_no": slice_no, "worker_id": worker_id})


def work_left(conn: Connection, worker_id: str, queues: list[str], types: list[str], kinds: list[str]) -> bool:
    return bool(
        conn.execute(
            q("work_left"), {"worker_id": worker_id, "queues": queues, "types": types, "kinds": kinds}
        ).scalar()
    )


def audit(conn: Connection, actor: str, action: str, job_id: str | None, details: dict[str, Any]) -> None:
    conn.execute(
        q("audit"),
        {"actor": actor, "action": action, "job_id": job_id, "details": json.dumps(details, default=str)},
    )


@dataclass(frozen=True)
class ItemErrors:
    rows: list[dict[str, Any]]
    sample_hidden: str | None  # why ``sample`` is withheld, or None


def job_errors(conn: Connection, job_id: str, limit: int) -> ItemErrors:
    """A job's failed items. Their ``sample`` (a copy of the source row) is read only when the caller
    may read the job's source table and the sample column (ops/roles.sql grants neither to
    tg_enqueue or tg_operator): the error table must not widen what a login can read."""
    access = conn.execute(q("sample_access"), {"job_id": job_id}).one()
    hidden = None
    if not access.can_read_source:
        hidden = f"no SELECT on {access.source or 'the job source'}"
    elif not access.can_read_sample:
        hidden = "no SELECT on etl_errors.sample"
    name = "job_errors_no_sample" if hidden else "job_errors"
    rows = [dict(r) for r in conn.execute(q(name), {"job_id": job_id, "limit": limit}).mappings()]
    return ItemErrors(rows, hidden)


def to_jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def hold(conn: Connection, job_id: str, gate: str | None) -> None:
    if gate is None:
        conn.execute(q("release_hold"), {"job_id": job_id})
    else:
        conn.execute(q("hold_job"), {"job_id": job_id, "gate": gate})


def shrink_batch(conn: Connection, job_id: str, slice_no: int, worker_id: str, size: int) -> None:
    conn.execute(q("shrink_batch"), {"job_id": job_id, "slice_no": slice_no, "worker_id": worker_id, "size": size})


def split_one(conn: Connection, queues: list[str], kinds: list[str]) -> tuple[str, int] | None:
    """Cut the largest free slice of a job that wants more slices than it has; (job, slice) or None."""
    row = conn.execute(q("split_candidate"), {"queues": queues, "kinds": kinds}).first()
    if row is None or cut_slice(conn, str(row.job_id), row.slice_no, row.key_type, row.checkpoint,
                                row.end_key) is None:
        return None
    return str(row.job_id), row.slice_no


def cut_slice(conn: Connection, job_id: str, slice_no: int, key_type: keys.KeyType, checkpoint: str,
              end_key: str, min_width: int = 3) -> str | None:
    """Cut a slice (locked by the caller) in two; the slice's new end key, or None when it is too small
    (``min_width``: integer keys left, see :func:`keys.midpoint`)."""
    cut = keys.midpoint(keys.decode(key_type, checkpoint), keys.decode(key_type, end_key), min_width)
    if cut is None:
        return None
    new_end = keys.encode(keys.after(cut))
    try:
        with conn.begin_nested():  # two workers cutting slices of one job at once: one numbering wins
            conn.execute(q("split_slice"), {"job_id": job_id, "slice_no": slice_no, "cut_end": new_end,
                                            "cut": keys.encode(cut), "end_key": end_key})
    except IntegrityError:
        return None
    return new_end


def locked_processed_count(conn: Connection, job_id: str) -> int:
    return int(conn.execute(q("lock_job_counts"), {"job_id": job_id}).scalar_one())


def pause_self(conn: Connection, job_id: str, reason: str) -> bool:
    return conn.execute(q("pause_job_self"), {"job_id": job_id, "reason": cap(redact(reason))}).first() is not None


# -- batches in flight: the watchdog (worker/deadline.py) and the pool's deaths ------------------


def pace_check(conn: Connection, job_id: str) -> tuple[str | None, float]:
    """While a slice waits for its job's pace: the job's status and the seconds still to wait (its
    reservation as it is now: a cap raised, lifted or lowered meanwhile shows here)."""
    row = conn.execute(q("pace_check"), {"job_id": job_id}).first()
    return (None, 0.0) if row is None else (row.status, float(row.pace_wait or 0.0))


def batch_job_status(conn: Connection, job_id: str) -> str | None:
    return conn.execute(q("batch_job_status"), {"job_id": job_id}).scalar()


def cancel_backend(conn: Connection, pid: int, xact_start: datetime) -> bool:
    """Cancel the statement of the backend running that transaction; False if it runs it no more."""
    return bool(conn.execute(q("cancel_batch_backend"), {"pid": pid, "xact_start": xact_start}).scalar())


def terminate_backend(conn: Connection, pid: int, xact_start: datetime) -> bool:
    """End the backend running that transaction (it rolls back); False if it runs it no more."""
    return bool(conn.execute(q("terminate_batch_backend"), {"pid": pid, "xact_start": xact_start}).scalar())


def poison_reason(deaths: int) -> str:
    return f"poison: {deaths} worker deaths during its batches"


def record_worker_death(conn: Connection, job_id: str, error: str, limit: int) -> tuple[int, bool]:
    """Count one more worker death in a row during the job's batches; at ``limit`` the job fails as poison.
    Returns (deaths in a row, whether this one failed the job)."""
    row = conn.execute(q("count_worker_death"), {"job_id": job_id, "error": error}).first()
    if row is None:  # not a range job (or deleted since)
        return 0, False
    if row.worker_deaths < limit or row.status not in ("pending", "running", "paused"):
        return row.worker_deaths, False
    reason = poison_reason(row.worker_deaths)
    fail_job(conn, job_id, reason)
    conn.execute(q("note_job_error"), {"job_id": job_id, "attempts": 0, "error": reason})
    return row.worker_deaths, True


def expire_worker(conn: Connection, worker_id: str) -> None:
    conn.execute(q("expire_worker"), {"worker_id": worker_id})


def schema_revisions(conn: Connection) -> list[str]:
    """The revision(s) of tidegate's schema in this database; [] when its migrations never ran."""
    if not conn.execute(q("schema_version_table")).scalar_one():
        return []
    return [str(r) for r in conn.execute(q("schema_revisions")).scalars()]


# -- operators: find and move jobs (worker/control.py), enqueue, status, retention ----------------


@dataclass(frozen=True)
class JobRef:
    id: str
    type: str
    queue_status: str
    job_status: str | None  # None: no worker has planned it yet


def find_jobs(conn: Connection, prefix: str) -> list[JobRef]:
    """Jobs whose id starts with ``prefix``, newest first; at most two (enough to call a prefix ambiguous)."""
    return [JobRef(str(r.id), r.type, r.queue_status, r.job_status)
            for r in conn.execute(q("find_job"), {"prefix": prefix})]


def label_transaction(conn: Connection, actor: str, reason: str) -> None:
    conn.execute(q("label_transaction"), {"actor": actor, "reason": reason})


def set_queue_status(conn: Connection, job_id: str, to_status: str, from_statuses: list[str]) -> bool:
    """Move an unplanned job's queue row; False when it is in none of ``from_statuses``."""
    params = {"job_id": job_id, "to_status": to_status, "from_statuses": from_statuses}
    return conn.execute(q("set_queue_status"), params).first() is not None


def set_job_status(conn: Connection, job_id: str, to_status: str, from_statuses: list[str], reason: str,
                   actor: str) -> bool:
    """Move a planned job; False when it is in none of ``from_statuses``."""
    params = {"job_id": job_id, "to_status": to_status, "from_statuses": from_statuses, "reason": reason,
              "actor": actor}
    return conn.execute(q("set_job_status"), params).first() is not None


def pause_unplanned(conn: Connection) -> list[str]:
    return [str(r.job_id) for r in conn.execute(q("pause_unplanned"))]


def set_all_jobs_status(conn: Connection, to_status: str, from_statuses: list[str], reason: str,
                        actor: str) -> list[str]:
    params = {"to_status": to_status, "from_statuses": from_statuses, "reason": reason, "actor": actor}
    return [str(r.job_id) for r in conn.execute(q("set_all_jobs_status"), params)]


def set_knobs(conn: Connection, job_id: str, changes: dict[str, object]) -> bool:
    """`tidegate set`: only the knobs in ``changes`` change (None lifts a limit). False when the job is not
    planned yet, or finished."""
    return conn.execute(q("set_knobs"), {"job_id": job_id, "changes": json.dumps(changes)}).first() is not None


def set_payload_knobs(conn: Connection, job_id: str, changes: dict[str, object]) -> tuple[str, Any] | None:
    """`tidegate set` on a queued job no worker has planned: the knob fields of its payload (None: the field
    null, the knob's default). (its type, its new payload), or None when it is not such a job (any more)."""
    row = conn.execute(q("set_payload_knobs"), {"job_id": job_id, "changes": json.dumps(changes)}).first()
    return None if row is None else (row.type, parse_json(row.payload, "the job's payload"))


def enqueue(conn: Connection, job_type: str, queue: str, payload: Any, priority: int, max_attempts: int,
            run_after: datetime | None, run_id: str | None = None) -> tuple[str, str | None]:
    """Queue a validated job (of fan-out run ``run_id``, if given); (its id, the login the database
    recorded as its enqueuer)."""
    row = conn.execute(q("enqueue"), {"type": job_type, "queue": queue, "payload": json.dumps(payload),
                                      "priority": priority, "max_attempts": max_attempts,
                                      "run_after": run_after, "run_id": run_id}).one()
    return str(row.id), row.enqueued_by


def run_job_ids(conn: Connection, run_id: str) -> list[str]:
    """The jobs of fan-out run ``run_id`` in this database, oldest first."""
    return [str(i) for i in conn.execute(q("run_job_ids"), {"run_id": run_id}).scalars()]


def recent_runs(conn: Connection, limit: int) -> list[str]:
    """The ``limit`` newest fan-out runs with a job in this database, newest first."""
    return [str(i) for i in conn.execute(q("recent_runs"), {"limit": limit}).scalars()]


def job_status(conn: Connection, job_id: str | None, limit: int) -> list[Any]:
    """`tidegate status` rows (mappings): every job newest first, or the one ``job_id``."""
    return list(conn.execute(q("job_status"), {"job_id": job_id, "limit": limit}).mappings())


def job_params(conn: Connection, job_id: str) -> Any:
    """A planned job's status and params (a row), or None."""
    return conn.execute(q("job_params"), {"job_id": job_id}).first()


def prune_queue_jobs(conn: Connection, age_seconds: float, batch: int) -> int:
    return conn.execute(q("prune_queue_jobs"), {"age_seconds": age_seconds, "batch": batch}).rowcount


def prune_etl_errors(conn: Connection, age_seconds: float, batch: int) -> int:
    return conn.execute(q("prune_etl_errors"), {"age_seconds": age_seconds, "batch": batch}).rowcount


def prune_job_rates(conn: Connection, age_seconds: float, batch: int) -> int:
    return conn.execute(q("prune_job_rates"), {"age_seconds": age_seconds, "batch": batch}).rowcount


# -- the web console's reads of one job (worker/web.py) ---------------------------------------------


def console_slices(conn: Connection, job_id: str, limit: int) -> list[dict[str, Any]]:
    """A job's slices by number: cursor, counters, owner and ``in_flight`` (its owner's lease alive)."""
    return [dict(r) for r in conn.execute(q("console_slices"), {"job_id": job_id, "limit": limit}).mappings()]


def console_knobs(conn: Connection, job_id: str) -> dict[str, Any]:
    """A planned job's live knobs (worker/knobs.py's LIVE_KNOBS) as its row holds them; {} when not planned."""
    row = conn.execute(q("console_knobs"), {"job_id": job_id}).scalar()
    return {k.name: row[k.name] for k in knobs.LIVE_KNOBS} if row else {}


def console_audit(conn: Connection, job_id: str, limit: int) -> list[dict[str, Any]]:
    """A job's audit rows, newest first: at, actor, db_user, action, details."""
    return [dict(r) for r in conn.execute(q("console_audit"), {"job_id": job_id, "limit": limit}).mappings()]


def console_rates(conn: Connection, job_id: str, minutes: int) -> list[dict[str, Any]]:
    """A job's per-minute history (tidegate_job_rates) over the last ``minutes``, oldest first."""
    return [dict(r) for r in conn.execute(q("console_rates"), {"job_id": job_id, "minutes": minutes}).mappings()]


# -- /metrics (worker/metrics.py) ------------------------------------------------------------------


def metrics_queue(conn: Connection) -> list[Any]:
    """Per queue status: n, oldest_pending_seconds."""
    return conn.execute(q("metrics_queue")).all()


def metrics_jobs(conn: Connection) -> list[Any]:
    """Per recent range job: job_id, kind, status, remaining, in_flight."""
    return conn.execute(q("metrics_jobs")).all()


def metrics_runs(conn: Connection) -> list[Any]:
    """Per recent fan-out run and job status: run_id, status, jobs, processed, remaining."""
    return conn.execute(q("metrics_runs")).all()


def live_workers(conn: Connection) -> int:
    return int(conn.execute(q("metrics_workers")).scalar_one())


# -- ad-hoc and approved SQL (worker/trust.py, jobs/approved_sql.py) --------------------------------


def session_user(conn: Connection) -> str:
    return str(conn.execute(q("session_user")).scalar_one())


def is_sql_author(conn: Connection, who: str, author_role: str) -> bool:
    return bool(conn.execute(q("is_sql_author"), {"who": who, "author_role": author_role}).scalar_one())


def reset_session(conn: Connection) -> None:
    conn.execute(q("reset_session"))


@dataclass(frozen=True)
class Approved:
    name: str
    sha256: str
    sql: str
    approved_by: str
    approved_at: datetime


def approved_sql(conn: Connection, ref: str) -> Approved | None:
    """The newest approved statement named ``ref``, or the one whose sha256 it is."""
    row = conn.execute(q("approved_sql_by_name"), {"name": ref}).first()
    return None if row is None else Approved(row.name, row.sha256, row.sql, row.approved_by, row.approved_at)


def approved_sql_text(conn: Connection, sha256: str) -> str | None:
    found = conn.execute(q("approved_sql_by_sha"), {"sha256": sha256}).scalar()
    return None if found is None else str(found)


def approve_sql(conn: Connection, name: str, sha256: str, statement: str) -> Approved:
    row = conn.execute(q("approve_sql"), {"name": name, "sha256": sha256, "sql": statement}).one()
    return Approved(row.name, row.sha256, row.sql, row.approved_by, row.approved_at)


def revoke_sql(conn: Connection, name: str) -> list[str]:
    """Forget every version of ``name``; the sha256 of each one forgotten."""
    return [r.sha256 for r in conn.execute(q("revoke_sql"), {"name": name})]


def list_approved_sql(conn: Connection) -> list[dict[str, Any]]:
    """name, sha256, approved_by, approved_at, chars: each name's newest version first."""
    return [dict(r) for r in conn.execute(q("list_approved_sql")).mappings()]


# -- the server: settings of this transaction, and what the health gates read (worker/gates.py) -----


def local_lock_timeout(conn: Connection, ms: int) -> None:
    conn.execute(q("local_lock_timeout"), {"ms": str(ms)})


def database_identity(conn: Connection) -> tuple[int, str] | None:
    """(system identifier, database name), the same for every URL that reaches this database; None when
    this role cannot read the system identifier."""
    row = conn.execute(q("database_identity")).one()
    return None if row.system is None else (int(row.system), row.db)


def citus_two_phase(conn: Connection) -> Any:
    """(marker, can_insert, login): marker None: no Citus here; on a Citus coordinator, whether migration
    0018 made the table ``force_two_phase`` copies into, and can_insert whether this login may."""
    return conn.execute(q("citus_two_phase")).one()


def force_two_phase(conn: Connection) -> None:
    """Have Citus commit this transaction in two phases, whatever it wrote: a COPY into a distributed
    table, even of no row, switches the coordinated transaction to two-phase commit (migration 0018 says
    why a batch needs it). One round trip; nothing is stored."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy("COPY tidegate_two_phase (k) FROM STDIN"):
        pass


def local_statement_timeout(conn: Connection, ms: int) -> None:
    conn.execute(q("local_statement_timeout"), {"ms": str(ms)})


def connections_in_use(conn: Connection) -> tuple[int, int]:
    """(client connections, max_connections)."""
    row = conn.execute(q("gate_connections")).one()
    return int(row.used), int(row.max_connections)


def long_transaction(conn: Connection, seconds: float) -> Any:
    """The oldest other transaction in this database open over ``seconds`` (pid, age), or None."""
    return conn.execute(q("gate_long_transaction"), {"seconds": seconds}).first()


def worst_replica(conn: Connection) -> Any:
    """The replica furthest behind (replica, lag, bytes, hidden), or None without replicas."""
    return conn.execute(q("gate_worst_replica")).first()


def vacuuming(conn: Connection, tables: list[str]) -> str | None:
    """One of ``tables`` (auto)vacuum is working on now, or None."""
    return conn.execute(q("gate_vacuum"), {"tables": tables}).scalar()


@dataclass(frozen=True)
class NodeHealth:
    """One Citus worker node's answer to the gates (gate_node_health), or why it gave none."""

    node: str  # host:port, as pg_dist_node names it
    health: dict[str, Any] | None  # used, max_connections, oldest {pid, age}, replica {replica, lag, bytes, hidden}
    error: str = ""


def has_citus(conn: Connection) -> bool:
    return bool(conn.execute(q("gate_citus")).scalar())


def worker_node_health(conn: Connection, timeout_ms: int) -> list[NodeHealth]:
    """What the gates read, from every active worker node of the Citus coordinator ``conn`` is on
    (run_command_on_workers); a node that does not answer within ``timeout_ms`` to connect, or
    fails, comes back with its error. Sets this transaction's citus.node_connection_timeout."""
    conn.execute(q("gate_node_timeout"), {"ms": timeout_ms})
    found = []
    for row in conn.execute(q("gate_worker_nodes"), {"command": raw("gate_node_health")}):
        if not row.success:
            error = str(row.result or "").strip()
            found.append(NodeHealth(row.node, None, error.splitlines()[0] if error else "no answer"))
            continue
        try:
            found.append(NodeHealth(row.node, json.loads(row.result)))
        except (TypeError, ValueError):
            found.append(NodeHealth(row.node, None, f"unreadable answer {str(row.result)[:80]!r}"))
    return found
