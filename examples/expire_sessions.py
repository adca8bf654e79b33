"""A job kind of your own, on tidegate's SDK: delete expired sessions, id range by id range.

The purge a runbook would write as one long DELETE (a long transaction, a lock on every row at once,
replication lag): here it runs in throttled batches, one transaction each, checkpointed, pausable and
resumable, with tidegate's knobs (batch size, concurrency, rate cap, canary limit). docs/kinds.md
walks through it; tests/test_example_kind.py runs it.

Deploy it: put the module on the workers' path and name it in ``$TIDEGATE_PLUGINS`` (or a
``tidegate.plugins`` entry point); enqueue with SQL::

    INSERT INTO queue_jobs (type, payload)
    VALUES ('expire_sessions', '{"from": 1, "to": 1000001, "before": "2026-01-01T00:00:00Z"}');
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from sqlalchemy import Connection, text

from tidegate import BatchContext, BatchResult, InvalidInput, KeyRange, NextKeys, Payload, Plan, RangeKind, SlicePlan

NEXT_KEYS = text("SELECT max(id) AS last, count(*) AS n"
                 " FROM (SELECT id FROM sessions WHERE id > :after AND id < :end ORDER BY id LIMIT :limit) b")
EXPIRE = text("DELETE FROM sessions WHERE id > :lo AND id <= :hi AND expires_at < :before")


@dataclass(frozen=True, kw_only=True)
class ExpirePayload(Payload):
    """``from``/``to``: the ids [from, to) to sweep; ``before``: sessions that expired before this go."""

    FIELDS = frozenset({"from", "to", "before", "owner", *Payload.knob_fields("expire_sessions")})

    from_: int
    to: int
    before: str

    @classmethod
    def parse(cls, raw: Any) -> Self:
        p = cls.json_object(raw)
        for field in ("from", "to"):
            if type(p.get(field)) is not int:
                raise InvalidInput(f"{field} must be an integer id, got {p.get(field)!r}")
        if p["from"] >= p["to"]:
            raise InvalidInput(f"from ({p['from']}) must be below to ({p['to']})")
        try:
            datetime.fromisoformat(p["before"])
        except (KeyError, TypeError, ValueError):
            raise InvalidInput("before must be an ISO 8601 timestamp") from None
        common = cls.common(p, "expire_sessions", default_batch=1000)
        return cls(from_=p["from"], to=p["to"], before=p["before"], **common)


class ExpireSessions(RangeKind):
    name = "expire_sessions"

    def plan(self, conn: Connection, payload: Any) -> Plan:
        job = ExpirePayload.parse(payload)
        step = -(-(job.to - job.from_) // job.concurrency)  # ceiling: equal id ranges, one per slice
        cuts = [*range(job.from_, job.to, step), job.to]
        # a slice's start is an exclusive cursor: the key before its first
        slices = [SlicePlan(start=lo - 1, end=hi) for lo, hi in zip(cuts, cuts[1:], strict=False)]
        params = job.params()
        params["from"] = params.pop("from_")
        return Plan(params=params, owner=job.owner, key_type="bigint", from_key=job.from_, to_key=job.to,
                    batch_size=job.batch_size, concurrency=job.concurrency, slices=slices)

    def next_keys(self, conn: Connection, ctx: BatchContext, after: int, end: int, limit: int) -> NextKeys | None:
        row = conn.execute(NEXT_KEYS, {"after": after, "end": end, "limit": limit}).one()
        return NextKeys(last=row.last, count=row.n, rows=row.n) if row.n else None

    def process_range(self, conn: Connection, ctx: BatchContext, batch: KeyRange) -> BatchResult:
        # every id in (lo, hi] is one item: the live sessions among them are looked at and kept
        conn.execute(EXPIRE, {"lo": batch.lo, "hi": batch.hi, "before": ctx.params["before"]})
        return BatchResult(processed=batch.rows or 0)


KINDS = [ExpireSessions()]
