"""backfill-range: reprocess a key range of a source table into derived tables.

Payload (JSON object in ``queue_jobs.payload``; the CLI writes the same)::

    {"source": "hero_snapshots", "key": "created_at",
     "from": "2024-01-01T00:00:00Z", "to": "2024-06-01T00:00:00Z",   # [from, to)
     "handler": "hero_troops" | "module:function",   or   "sql": "INSERT ... :lo ... :hi",
                                                          or   "sql_approved": "NAME" | "SHA256",
     "batch_size": 250, "concurrency": 4, "owner": "data-team"}

The runbook's spelling ``from_created_at`` / ``to_created_at`` means
``key = "created_at"``; a missing handler means the deployment default
(``TIDEGATE_DEFAULT_HANDLER``), whose ``source`` and ``key`` are defaults too.

A job's own statement (``sql``) runs only on a worker started with ``--allow-sql`` and only if the
role that enqueued the job is a sql author (worker/trust.py); a statement an operator approved
(``sql_approved``, jobs/approved_sql.py) runs for anyone. Either is validated without being run
(jobs/sql_check.py), and the session is reset after it at every batch.

Batches are keyset pages on the key column: ``next_keys`` finds ``hi``, the
batch_size-th key after the cursor, so ties on ``hi`` all fall in the same batch
and a non-unique key (a timestamp) is never split or repeated; ``process_range``
runs the handler (or the job's statement) on ``(lo, hi]``. Its statements are in
backfill_range.sql.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from tidegate.jobs import approved_sql, filters, handlers, sql_check
from tidegate.worker import identifiers, keys, kinds, knobs, metrics, trust
from tidegate.worker.db import sqlstate
from tidegate.worker.errors import InvalidInput, quote
from tidegate.worker.kinds import BatchContext, BatchResult, KeyRange, NextKeys, Payload, Plan, RangeKind, SlicePlan
from tidegate.worker.redact import error_text
from tidegate.worker.sql import load, render

NAME = "backfill_range"
MAX_BATCH = knobs.MAX_BATCH
MAX_CONCURRENCY = knobs.MAX_CONCURRENCY
EXACT_COUNT_BELOW = 5_000_000
SQL = load(__package__, "backfill_range.sql")  # the statements on the source table, by name
ROWS = SQL["rows"]
SAMPLE_ROWS = 50_000
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BackfillPayload(Payload):
    """A backfill-range payload, every field checked (see the module's docstring for the JSON)."""

    FIELDS = frozenset({"source", "key", "from", "to", "handler", "sql", "sql_approved", "owner", "writes", "where",
                        *Payload.knob_fields(NAME)})

    source: str
    key: str
    from_: Any  # [from, to): parsed against the key column's type when the job is planned
    to: Any
    handler: str | None = None  # one of handler, sql, sql_approved
    sql: str | None = None  # checked as text (no database) here, planned against the database at plan time
    sql_approved: str | None = None
    writes: tuple[str, ...] = ()
    where: tuple[dict[str, Any], ...] = ()

    @property
    def own_sql(self) -> bool:
        return self.sql is not None or self.sql_approved is not None

    @classmethod
    def parse(cls, raw: Any) -> Self:
        """The payload with defaults applied and every field type-checked; raises InvalidInput."""
        p = cls.json_object(_runbook_spelling(raw))
        given = [f for f in ("handler", "sql", "sql_approved") if f in p]
        if len(given) > 1:
            raise InvalidInput(f"give one of handler, sql or sql_approved, not {' and '.join(given)}")
        own_sql = "sql" in p or "sql_approved" in p
        if "sql" in p:
            p["sql"] = sql_check.check_text(p["sql"])
        if "sql_approved" in p:
            p["sql_approved"] = approved_sql.check_ref(p["sql_approved"])
        where = filters.normalize(p["where"]) if "where" in p else []
        if where and own_sql:
            raise InvalidInput("where works with Python handlers only: a SQL handler's statement sees only :lo and"
                               " :hi, so put the condition in the statement itself")
        if not own_sql:
            p.setdefault("handler", handlers.default_handler())
            if not isinstance(p["handler"], str) or len(p["handler"]) > 300:
                raise InvalidInput("handler must be a name or module:function of at most 300 characters,"
                                   f" got {quote(p['handler'], 60)}")
        # source and key default to those of the named handler, else of the deployment's default handler
        for name in (p.get("handler"), handlers.default_handler()):
            declared = handlers.registered().get(name) if isinstance(name, str) else None
            if declared is not None:
                if declared.source:
                    p.setdefault("source", declared.source)
                if declared.key:
                    p.setdefault("key", declared.key)
        for field in ("source", "key", "from", "to"):
            if p.get(field) in (None, ""):
                raise InvalidInput(f"payload is missing {field!r}")
        common = cls.common(p, NAME, default_batch=500)  # owner, batch_size, concurrency, the pace knobs
        writes = p.get("writes", [])
        if not isinstance(writes, list) or not all(isinstance(w, str) for w in writes):
            raise InvalidInput("writes must be a list of table names")
        return cls(source=p["source"], key=p["key"], from_=p["from"], to=p["to"], handler=p.get("handler"),
                   sql=p.get("sql"), sql_approved=p.get("sql_approved"), writes=tuple(writes), where=tuple(where),
                   **common)

    def params(self) -> dict[str, Any]:
        p = super().params()
        p["from"] = p.pop("from_")
        p["writes"], p["where"] = list(self.writes), list(self.where)
        return p


def _runbook_spelling(raw: Any) -> Any:
    """The runbook's spelling ``from_<key>`` / ``to_<key>`` as ``key``, ``from`` and ``to``."""
    if not isinstance(raw, dict):
        return raw
    p = dict(raw)
    for field in list(p):
        for end in ("from", "to"):
            if field.startswith(end + "_") and field != end:
                column = field[len(end) + 1:]
                if p.setdefault("key", column) != column:
                    raise InvalidInput(f"{quote(field)} does not match key {quote(p['key'])}")
                if end in p:
                    raise InvalidInput(f"give {end!r} or {quote(field)}, not both")
                p[end] = p.pop(field)
    return p


@dataclass(frozen=True)
class Target:
    source: identifiers.Ident
    key: identifiers.Column
    key_type: keys.KeyType
    item_key: list[str]
    kind: keys.Kind  # the key column's type: how bounds are parsed and clipped


class BackfillRange(RangeKind):
    name = NAME
    aliases = ("backfill",)  # POST /api/v1/admin/backfill, as in the runbook

    def __init__(self) -> None:
        self._targets: dict[tuple[str, str], Target] = {}
        self._filters: dict[str, filters.Compiled] = {}
        self._ahead = ReadAhead()
        # per database and source: False once its rows were seen to have a ctid and xmin, True if not (no read-ahead)
        self._no_versions: dict[tuple[Any, str], bool] = {}

    def _target(self, conn: Connection, source: str, key: str) -> Target:
        """Catalog lookups once per process and table, not once per batch."""
        found = self._targets.get((source, key))
        if found is None:
            found = self._targets[(source, key)] = resolve_target(conn, source, key)
        return found

    def _where(self, conn: Connection, target: Target, params: dict[str, Any]) -> filters.Compiled:
        cache_key = json.dumps([target.source.name, params.get("where") or []])
        found = self._filters.get(cache_key)
        if found is None:
            found = self._filters[cache_key] = filters.compile_filters(conn, target.source, params.get("where") or [])
        return found

    # -- planning ------------------------------------------------------------

    def plan(self, conn: Connection, payload: Any) -> Plan:
        job = BackfillPayload.parse(payload)
        target = resolve_target(conn, job.source, job.key)
        lo = keys.parse(target.kind, job.from_, "from")
        hi = keys.parse(target.kind, job.to, "to")
        keys.check_range(lo, hi)
        lo, hi = keys.clip(target.kind, lo, hi)
        p = job.params()
        if job.sql is not None:
            trust.check_author(conn)  # before the server even plans it
            sql_check.check_plan(conn, job.sql, target.key_type)
        elif job.sql_approved is not None:
            approved = approved_sql.find(conn, job.sql_approved)
            approved_sql.check(conn, approved, target.key_type)
            p.update(sql_approved=approved.name, sql_sha256=approved.sha256)  # the job runs this version
        else:
            resolved = handlers.resolve(job.handler)
            if resolved.handler is not None and not job.writes:
                p["writes"] = list(resolved.handler.writes)
        # tables the job writes (for the autovacuum gate), checked against the catalog like any name
        p["writes"] = [identifiers.table(conn, w, what="written table").name for w in p["writes"]]
        where = filters.compile_filters(conn, target.source, list(job.where))
        total = estimate(conn, target, lo, hi, where)
        cuts = cut_points(conn, target, lo, hi, job.concurrency, total)
        slices = [SlicePlan(keys.before(a), b) for a, b in itertools.pairwise([lo, *cuts, hi])]
        p.update(source=target.source.name, key=target.key.ident.name, item_key=target.item_key,
                 **{"from": keys.encode(lo), "to": keys.encode(hi)})
        return Plan(params=p, owner=job.owner, key_type=target.key_type, from_key=lo, to_key=hi,
                    batch_size=job.batch_size, concurrency=job.concurrency, slices=slices, total_estimate=total)

    # -- one batch -------------------------------------------------------------

    def next_keys(self, conn: Connection, ctx: BatchContext, after: keys.Key, end: keys.Key,
                  limit: int) -> NextKeys | None:
        """A keyset page on the key column: its ``limit``-th key, and every row that ties with it."""
        target = self._target(conn, ctx.params["source"], ctx.params["key"])
        where = self._where(conn, target, ctx.params)
        b = conn.execute(where.into(SQL["next_keys"], source=target.source, key=target.key.ident),
                         {"lo": after, "end": end, "n": limit, **where.params}).one()
        if b.n == 0:
            return None
        return NextKeys(keys.from_db(b.hi), b.n, rows=b.n + b.ties_all - b.ties_seen)

    def process_range(self, conn: Connection, ctx: BatchContext, batch: KeyRange) -> BatchResult:
        """The job's own statement on ``(lo, hi]`` (one INSERT ... SELECT), or its handler on the range's rows."""
        p = ctx.params
        if "sql" in p or "sql_sha256" in p:
            trust.run_own_sql(conn, own_statement(conn, ctx, p), {"lo": batch.lo, "hi": batch.hi})
            return BatchResult(processed=batch.rows or 0)
        target = self._target(conn, p["source"], p["key"])
        where = self._where(conn, target, p)
        resolved = handlers.resolve(p["handler"])
        batch_rows: handlers.Prepared | list[dict[str, Any]] | None = None
        ahead = self._ahead.take(conn, ctx, batch)
        if ahead is not None:
            fresh = ahead.versions == self._versions(conn, target, where, batch)
            metrics.READ_AHEAD.labels(NAME, "used" if fresh else "changed").inc()
            if fresh:
                batch_rows = ahead.prepared
        if batch_rows is None:
            batch_rows = handlers.fetch_rows(conn, where.into(ROWS, source=target.source, key=target.key.ident),
                                             {"lo": batch.lo, "hi": batch.hi, **where.params})
        beside = self._read_ahead(conn, ctx, batch, target, where, resolved)
        errors = handlers.run(conn, resolved, batch_rows, p["item_key"], beside=beside)
        processed = len(batch_rows.rows if isinstance(batch_rows, handlers.Prepared) else batch_rows)
        return BatchResult(processed=processed, errors=errors)

    @staticmethod
    def _versions(conn: Connection, target: Target, where: filters.Compiled, batch: KeyRange) -> tuple[int, int]:
        """The rows of ``(lo, hi]`` as they are now (``fingerprint``): the same rows, not one changed, or not."""
        got = conn.execute(where.into(SQL["fingerprint"], source=target.source, key=target.key.ident),
                           {"lo": batch.lo, "hi": batch.hi, **where.params}).one()
        return int(got.n), int(got.versions)

    def _read_ahead(self, conn: Connection, ctx: BatchContext, batch: KeyRange, target: Target,
                    where: filters.Compiled, resolved: handlers.Resolved) -> Callable[[], None] | None:
        """The slice's next batch read now, in this batch's transaction, and its rows parsed and transformed
        while this batch's write runs on the server (``handlers.run``'s ``beside``): a Python batch's client
        work and its server work overlap, where one after the other they took about twice the SQL handler's
        time. The next batch uses what was read only if it asks for exactly that range and the range's row
        versions are still those read (``fingerprint``, taken before the read): else it reads again. So a
        batch works on its rows as they are when it runs, as without the read-ahead.

        Only for the built-in bulk write (its last statement is what the read-ahead overlaps), only when the
        runtime said the next batch's limit (``batch.limit``), not when the handler writes its own source
        table (the next batch would always read again), and not for a source whose rows have no ctid and
        xmin (a view, a foreign table: found out once, in a savepoint). A row of the next range that fails to
        parse or transform is left for that batch to meet, when it reads again."""
        p = ctx.params
        if batch.end is None or batch.limit <= 0 or not handlers.overlaps(resolved):
            return None
        source = (conn.engine.url, target.source.name)
        if target.source.name in p.get("writes", ()) or self._no_versions.get(source):
            return None
        found = kinds.next_range(self, conn, ctx, batch.hi, batch.end, batch.limit)
        if found is None:
            return None
        nxt = found[0]
        if source not in self._no_versions:  # first time: does the source have row versions?
            try:
                with conn.begin_nested():
                    versions = self._versions(conn, target, where, nxt)
            except DBAPIError as err:
                if (sqlstate(err) or "")[:2] not in NO_VERSIONS:  # a cancel, a lost connection: the batch's own fault
                    raise
                log.info("%s: no read-ahead (its row versions cannot be read: %s)", target.source.name,
                         error_text(err, 200))
                self._no_versions[source] = True
                return None
            self._no_versions[source] = False
        else:
            versions = self._versions(conn, target, where, nxt)
        raw = handlers.fetch_raw(conn, where.into(ROWS, source=target.source, key=target.key.ident),
                                 {"lo": nxt.lo, "hi": nxt.hi, **where.params})
        handler = resolved.handler
        assert handler is not None

        def transform() -> None:
            try:
                prepared = handlers.prepare(handler, raw.parsed(), p["item_key"])
            except BaseException as err:  # noqa: B036 - that batch meets it itself (even a SystemExit), reading again
                log.debug("job %s: the batch read ahead is dropped: %s", ctx.job_id, error_text(err, 200))
                metrics.READ_AHEAD.labels(NAME, "dropped").inc()
                return
            self._ahead.keep(conn, ctx, nxt, Ahead(prepared, versions))

        return transform


# SQLSTATE classes that say a source's rows have no ctid or xmin to read: no such column (42703, in class 42:
# syntax error or access rule violation) or not supported (0A000, a foreign table's); any other error of the
# first fingerprint is the batch's (a statement timeout, a cancel, a lost connection)
NO_VERSIONS = ("42", "0A")


@dataclass(frozen=True)
class Ahead:
    prepared: handlers.Prepared
    versions: tuple[int, int]  # the range's fingerprint before it was read


class ReadAhead:
    """The one batch a worker has read ahead (``BackfillRange._read_ahead``), until the next batch takes it."""

    def __init__(self) -> None:
        self._slice: tuple[Any, ...] | None = None  # database, job, slice and the job's params
        self._range: tuple[Any, Any] | None = None
        self._ahead: Ahead | None = None

    @staticmethod
    def _slice_of(conn: Connection, ctx: BatchContext) -> tuple[Any, ...]:
        return (conn.engine.url, ctx.job_id, ctx.slice_no, ctx.params)

    def keep(self, conn: Connection, ctx: BatchContext, batch: KeyRange, ahead: Ahead) -> None:
        self._slice, self._range, self._ahead = self._slice_of(conn, ctx), (batch.lo, batch.hi), ahead

    def take(self, conn: Connection, ctx: BatchContext, batch: KeyRange) -> Ahead | None:
        """What was read ahead for exactly this batch of this job, with the same params; else None. Either
        way it is gone: a range is read ahead for one batch, once."""
        in_slice, in_range, ahead = self._slice, self._range, self._ahead
        self._slice = self._range = self._ahead = None
        if ahead is None:
            return None
        if in_slice != self._slice_of(conn, ctx):  # the worker went on with another job, slice, database or params
            metrics.READ_AHEAD.labels(NAME, "unused").inc()
            return None
        if in_range != (batch.lo, batch.hi):  # the slice asked for another range: a row came or went
            metrics.READ_AHEAD.labels(NAME, "changed").inc()
            return None
        return ahead


def resolve_target(conn: Connection, source: Any, key: Any) -> Target:
    tbl = identifiers.table(conn, source, what="source table")
    col = identifiers.column(conn, tbl, key, what="key column")
    kind = keys.kind_of(col.type)
    if not identifiers.has_leading_index(conn, tbl, col):
        raise InvalidInput(
            f"key column {col.ident.name!r} of {tbl.name!r} has no index starting with it:"
            " keyset batches would scan the table each time. Create one first"
            f" (CREATE INDEX CONCURRENTLY ON {tbl.sql} ({col.ident.sql}))."
        )
    pk = [i.name for i in identifiers.primary_key(conn, tbl)] or [col.ident.name]
    return Target(tbl, col, kind.family, pk, kind)


def own_statement(conn: Connection, ctx: BatchContext, params: dict[str, Any]) -> str:
    """The job's own statement, checked again at every batch: an approved one must still be approved
    (revoking stops it), an ad-hoc one needs this worker's --allow-sql and its enqueuer's sql-author
    role (a revoked grant stops it)."""
    if "sql_sha256" in params:
        statement = approved_sql.text_of(conn, params["sql_sha256"])
        if statement is None:
            raise InvalidInput(f"approved statement {params.get('sql_approved')!r} (sha256 {params['sql_sha256']})"
                               " is no longer approved")
        return sql_check.check_text(statement)
    trust.check_author(conn, batch_of=ctx.enqueued_by)
    return str(params["sql"])


def estimate(conn: Connection, target: Target, lo: keys.Key, hi: keys.Key,
             where: filters.Compiled = filters.NONE) -> int:
    idents = {"source": target.source, "key": target.key.ident}
    bound = {"lo": lo, "hi": hi, **where.params}
    plan = conn.execute(where.into(SQL["estimate"], **idents), bound).scalar_one()
    rows = int(plan[0]["Plan"]["Plan Rows"])
    if rows < EXACT_COUNT_BELOW:
        rows = int(conn.execute(where.into(SQL["count"], **idents), bound).scalar_one())
    return rows


def cut_points(conn: Connection, target: Target, lo: keys.Key, hi: keys.Key, parts: int, total: int) -> list[keys.Key]:
    """Up to ``parts - 1`` increasing keys strictly inside ``(lo, hi)`` that split the rows evenly; and, when
    the range reaches far past its last key (``--to`` years ahead of timestamped rows), one more just above
    that key: the last slice ends where the rows end, and the empty rest is a slice of its own. Else the
    last slice's tail would be cut for an idle worker (worker/runner.py) at its key midpoint, decades past
    the rows, and the idle worker would get an empty half, again and again, while one worker does the tail."""
    if parts <= 1 or total <= 1:
        return []
    percent = 100.0 if total <= SAMPLE_ROWS else max(0.01, 100.0 * SAMPLE_ROWS / total)
    fractions = [*(i / parts for i in range(1, parts)), 1.0]
    found = conn.execute(
        render(SQL["quantiles"], source=target.source, key=target.key.ident),
        {"fractions": fractions, "percent": percent, "lo": lo, "hi": hi},
    ).scalar_one()
    found = list(found or [])
    top = keys.from_db(found.pop()) if found and found[-1] is not None else None
    cuts: list[keys.Key] = []
    for found_cut in found:
        if found_cut is None:
            continue
        cut = keys.from_db(found_cut)  # UTC, so the comparisons below hold across a DST change
        if lo < cut < hi and (not cuts or cut > cuts[-1]):  # type: ignore[operator]
            cuts.append(cut)
    if top is not None:
        end = keys.after(top)
        last = cuts[-1] if cuts else lo
        # only when the empty rest is wider than a slice of rows (integer ids up to --to: no extra slice)
        if last < end < hi and hi - end > (end - lo) / parts:  # type: ignore[operator]
            cuts.append(end)
    return cuts


KIND = BackfillRange()
