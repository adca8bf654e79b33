"""backfill-range: reprocess a key range of a source table into derived tables.

Payload (JSON object in ``queue_jobs.payload``; the CLI writes the same)::

    {"source": "hero_snapshots", "key": "created_at",
     "from": "2024-01-01T00:00:00Z", "to": "2024-06-01T00:00:00Z",   # [from, to)
     "handler": "hero_troops" | "module:function",   or   "sql": "INSERT ... :lo ... :hi",
     "batch_size": 250, "concurrency": 4, "owner": "data-team"}

The runbook's spelling ``from_created_at`` / ``to_created_at`` means
``key = "created_at"``; a missing handler means the deployment default
(``TIDEGATE_DEFAULT_HANDLER``), whose ``source`` and ``key`` are defaults too.

Batches are keyset pages on the key column: ``(lo, hi]`` where ``hi`` is the
batch_size-th key after ``lo``, so ties on ``hi`` all fall in the same batch
and a non-unique key (a timestamp) is never split or repeated.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from jobs import checks, filters, handlers
from worker import identifiers, keys
from worker.errors import InvalidInput
from worker.kinds import BatchContext, BatchResult, Plan, SlicePlan
from worker.sql import render

NAME = "backfill_range"
MAX_BATCH = 100_000
MAX_CONCURRENCY = 64
EXACT_COUNT_BELOW = 5_000_000
KNOWN_FIELDS = {"source", "key", "from", "to", "handler", "sql", "batch_size", "concurrency", "owner", "writes",
                "max_rows_per_second", "sleep_between_batches", "target_batch_seconds", "min_batch_size",
                "max_batch_size", "row_limit", "error_rate_threshold", "where"}

BOUNDS = """
WITH b AS (SELECT {key} AS k FROM {source} WHERE {key} > :lo AND {key} < :end{where} ORDER BY {key} LIMIT :n)
SELECT (SELECT max(k) FROM b) AS hi, (SELECT count(*) FROM b) AS n,
       (SELECT count(*) FROM b WHERE k = (SELECT max(k) FROM b)) AS ties_seen,
       (SELECT count(*) FROM {source} WHERE {key} = (SELECT max(k) FROM b){where}) AS ties_all
"""
# {where}: the job's --where filters (jobs/filters.py), or nothing
ROWS = "SELECT * FROM {source} WHERE {key} > :lo AND {key} <= :hi{where} ORDER BY {key}"
ESTIMATE = "EXPLAIN (FORMAT JSON) SELECT 1 FROM {source} WHERE {key} >= :lo AND {key} < :hi{where}"
COUNT = "SELECT count(*) FROM {source} WHERE {key} >= :lo AND {key} < :hi{where}"
# Slice boundaries at quantiles of the keys in range (from a block sample when the
# range is large), so slices hold about the same number of rows even when keys are skewed.
QUANTILES = """
SELECT percentile_disc(CAST(:fractions AS float8[])) WITHIN GROUP (ORDER BY k)
FROM (SELECT {key} AS k FROM {source} TABLESAMPLE SYSTEM (:percent) REPEATABLE (7)
      WHERE {key} >= :lo AND {key} < :hi) s
"""
SAMPLE_ROWS = 50_000


@dataclass(frozen=True)
class Target:
    source: identifiers.Ident
    key: identifiers.Column
    key_type: keys.KeyType
    item_key: list[str]
    kind: keys.Kind  # the key column's type: how bounds are parsed and clipped


class BackfillRange:
    name = NAME
    aliases = ("backfill",)  # POST /api/v1/admin/backfill, as in the runbook

    def __init__(self) -> None:
        self._targets: dict[tuple[str, str], Target] = {}
        self._filters: dict[str, filters.Compiled] = {}

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
        p = normalize(payload)
        target = resolve_target(conn, p["source"], p["key"])
        lo = keys.parse(target.kind, p["from"], "from")
        hi = keys.parse(target.kind, p["to"], "to")
        keys.check_range(lo, hi)
        lo, hi = keys.clip(target.kind, lo, hi)
        if "sql" in p:
            check_sql(conn, p["sql"], target.kind)
        else:
            resolved = handlers.resolve(p["handler"])
            if resolved.handler is not None and not p.get("writes"):
                p["writes"] = list(getattr(resolved.handler, "writes", []))
        # tables the job writes (for the autovacuum gate), checked against the catalog like any name
        p["writes"] = [identifiers.table(conn, w, what="written table").name for w in p.get("writes", [])]
        where = filters.compile_filters(conn, target.source, p.get("where") or [])
        total = estimate(conn, target, lo, hi, where)
        cuts = cut_points(conn, target, lo, hi, p["concurrency"], total)
        bounds = [lo, *cuts, hi]
        slices = [SlicePlan(keys.before(a), b) for a, b in itertools.pairwise(bounds)]
        p.update(source=target.source.name, key=target.key.ident.name, item_key=target.item_key,
                 **{"from": keys.encode(lo), "to": keys.encode(hi)})
        return Plan(params=p, owner=p["owner"], key_type=target.key_type, from_key=lo, to_key=hi,
                    batch_size=p["batch_size"], concurrency=p["concurrency"], slices=slices,
                    total_estimate=total)

    # -- one batch -------------------------------------------------------------

    def process(self, conn: Connection, ctx: BatchContext, cursor: keys.Key, end: keys.Key) -> BatchResult:
        p = ctx.params
        target = self._target(conn, p["source"], p["key"])
        idents = {"source": target.source, "key": target.key.ident}
        where = self._where(conn, target, p)
        b = conn.execute(where.into(BOUNDS, **idents),
                         {"lo": cursor, "end": end, "n": ctx.batch_size, **where.params}).one()
        if b.n == 0:
            return BatchResult(checkpoint=keys.before(end), processed=0, exhausted=True)
        last = b.n < ctx.batch_size  # fewer rows than asked: nothing is left before `end`
        hi = keys.before(end) if last else keys.from_db(b.hi)
        if "sql" in p:
            conn.execute(text(p["sql"]), {"lo": cursor, "hi": hi})
            return BatchResult(checkpoint=hi, processed=b.n + b.ties_all - b.ties_seen, exhausted=last)
        rows = conn.execute(where.into(ROWS, **idents), {"lo": cursor, "hi": hi, **where.params}).mappings().all()
        errors = handlers.run(conn, handlers.resolve(p["handler"]), rows, p["item_key"])
        return BatchResult(checkpoint=hi, processed=len(rows), exhausted=last, errors=errors)


def normalize(payload: Any) -> dict[str, Any]:
    """The payload with defaults applied and every field type-checked; raises InvalidInput."""
    if not isinstance(payload, dict):
        raise InvalidInput(f"payload must be a JSON object, got {type(payload).__name__}")
    p = dict(payload)
    # the runbook's spelling: from_<key> / to_<key>
    for field in list(p):
        for end in ("from", "to"):
            if field.startswith(end + "_") and field != end:
                column = field[len(end) + 1:]
                if p.setdefault("key", column) != column:
                    raise InvalidInput(f"{field} does not match key {p['key']!r}")
                if end in p:
                    raise InvalidInput(f"give {end!r} or {field!r}, not both")
                p[end] = p.pop(field)
    unknown = sorted(set(p) - KNOWN_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown payload field(s): {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_FIELDS))}")
    if "sql" in p and "handler" in p:
        raise InvalidInput("give either handler or sql, not both")
    if "where" in p:
        p["where"] = filters.normalize(p["where"])
        if p["where"] and "sql" in p:
            raise InvalidInput("where works with Python handlers only: a SQL handler's statement sees only :lo and"
                               " :hi, so put the condition in the statement itself")
    if "sql" not in p:
        p.setdefault("handler", handlers.default_handler())
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
    p["batch_size"] = checks.bounded(p.get("batch_size", 500), "batch_size", 1, MAX_BATCH)
    p["concurrency"] = checks.bounded(p.get("concurrency", 1), "concurrency", 1, MAX_CONCURRENCY)
    for field, lo, hi in (("max_rows_per_second", 0.001, 1e9), ("sleep_between_batches", 0, 3600),
                          ("target_batch_seconds", 0.01, 3600), ("error_rate_threshold", 0, 1)):
        if p.get(field) is not None:
            p[field] = checks.bounded(p[field], field, lo, hi, integer=False)
    for field in ("min_batch_size", "max_batch_size"):
        if p.get(field) is not None:
            p[field] = checks.bounded(p[field], field, 1, MAX_BATCH)
    if p.get("row_limit") is not None:
        p["row_limit"] = checks.bounded(p["row_limit"], "row_limit", 1, 10**15)
    if (p.get("min_batch_size") or 1) > (p.get("max_batch_size") or MAX_BATCH):
        raise InvalidInput("min_batch_size must not exceed max_batch_size")
    writes = p.get("writes", [])
    if not isinstance(writes, list) or not all(isinstance(w, str) for w in writes):
        raise InvalidInput("writes must be a list of table names")
    p["owner"] = checks.owner(p.get("owner", "unknown"))
    return p




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


def check_sql(conn: Connection, statement: Any, kind: keys.Kind) -> None:
    """A SQL handler: one statement binding exactly :lo and :hi, which the server can plan."""
    if not isinstance(statement, str) or not statement.strip():
        raise InvalidInput("sql handler: the statement is empty")
    names = set(text(statement).compile().params)
    if names != {"lo", "hi"}:
        raise InvalidInput(
            "sql handler: the statement must use the bind parameters :lo and :hi and no others"
            f" (found {', '.join(sorted(names)) or 'none'}; write CAST(:lo AS type), not :lo::type)"
        )
    probe = keys.parse(kind, 0 if kind.family == "bigint" else "2000-01-01")
    try:
        with conn.begin_nested():
            conn.execute(text("EXPLAIN " + statement.strip().rstrip(";")), {"lo": probe, "hi": probe})
    except DBAPIError as err:
        first = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise InvalidInput(f"sql handler does not plan: {first}") from None


def estimate(conn: Connection, target: Target, lo: keys.Key, hi: keys.Key,
             where: filters.Compiled = filters.NONE) -> int:
    idents = {"source": target.source, "key": target.key.ident}
    bound = {"lo": lo, "hi": hi, **where.params}
    plan = conn.execute(where.into(ESTIMATE, **idents), bound).scalar_one()
    rows = int(plan[0]["Plan"]["Plan Rows"])
    if rows < EXACT_COUNT_BELOW:
        rows = int(conn.execute(where.into(COUNT, **idents), bound).scalar_one())
    return rows


def cut_points(conn: Connection, target: Target, lo: keys.Key, hi: keys.Key, parts: int, total: int) -> list[keys.Key]:
    """Up to ``parts - 1`` increasing keys strictly inside ``(lo, hi)`` that split the rows evenly."""
    if parts <= 1 or total <= 1:
        return []
    percent = 100.0 if total <= SAMPLE_ROWS else max(0.01, 100.0 * SAMPLE_ROWS / total)
    fractions = [i / parts for i in range(1, parts)]
    found = conn.execute(
        render(QUANTILES, source=target.source, key=target.key.ident),
        {"fractions": fractions, "percent": percent, "lo": lo, "hi": hi},
    ).scalar_one()
    cuts: list[keys.Key] = []
    for found_cut in found or []:
        if found_cut is None:
            continue
        cut = keys.from_db(found_cut)  # UTC, so the comparisons below hold across a DST change
        if lo < cut < hi and (not cuts or cut > cuts[-1]):  # type: ignore[operator]
            cuts.append(cut)
    return cuts


KIND = BackfillRange()
