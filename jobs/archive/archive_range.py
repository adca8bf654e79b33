"""archive_range / unarchive_range: move whole event streams to the archive and back.

Payload (``queue_jobs.payload``; ``tidegate enqueue archive-range`` writes the same)::

    {"layout": "marten" | "<a layout registered with tidegate archive layout add>",
     "type": "venue", "tenant": "t1", "before": "2025-01-01T00:00:00Z", "streams": ["<id>", ...],
     "where": [{"field": "DataSource", "op": "!=", "value": "LuckBox"}],
     "from_audit": "<job id>",            # unarchive only: the streams that job archived
     "limit": 1000, "batch_size": 1000, "concurrency": 2, "force": false,
     "reason": "duplicate aggregates", "owner": "data-platform"}

Planning (once, by the worker that claims the queue row) snapshots the selection into
``archive_candidates`` under a fresh ``snapshot`` id, numbered ``seq`` 1..N in the order of
the stream rows on disk (see :data:`selection.SNAPSHOT`), and marks the cross-referenced ones.
The job is then an ordinary bigint range job over ``[1, N+1)``: slices, leases, checkpoints,
pause/resume and status are the runtime's.
The selection is fixed from then on; streams appended or archived meanwhile are handled
by the batch's own checks.

One batch = one transaction (the runtime commits it with the checkpoint):

1. read the batch's candidates (``seq`` in ``(cursor, hi]``);
2. lock their stream rows ``FOR UPDATE`` in key order, keeping only those still in the
   expected state (not archived / archived), and set or clear their marks (flag,
   archived_at/by/reason), in one statement: an appender that locks the stream row (or
   its foreign key's KEY SHARE lock, or the guard trigger) waits for the batch, and a
   batch waits for an appender in flight, so an event is never left behind;
3. move read-model rows and events (``DELETE ... RETURNING`` into the archive table, or
   set the archived flag);
4. write the batch's audit: one ``archive_audit_batches`` row whose arrays hold, per stream, the
   action (archive/unarchive, or skip with the reason: cross-referenced, or no longer in the
   expected state) and the events moved; the ``archive_audit`` view reads it one row per stream.

A crash anywhere rolls the whole batch back with its checkpoint: no stream is ever torn,
and nothing is repeated. Unarchive inserts the same rows back (``OVERRIDING SYSTEM
VALUE``: sequence numbers and versions are kept) and clears the marks, so archive then
unarchive leaves the event store as it was.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from sqlalchemy import Connection, Engine, text

from tidegate.jobs import checks
from tidegate.jobs.archive import layouts, selection
from tidegate.jobs.archive.layouts import Layout
from tidegate.worker import identifiers, keys, knobs, metrics
from tidegate.worker.errors import InvalidInput, quote, shorten
from tidegate.worker.kinds import BatchContext, BatchResult, Plan, SlicePlan
from tidegate.worker.sql import render

# streams per batch: 1,000 moved the bench's 1M events faster than 500 or 2,000 (bench/RESULTS.md)
DEFAULT_BATCH = 1_000
MAX_CONCURRENCY = knobs.MAX_CONCURRENCY
KNOWN = {"layout", "type", "tenant", "before", "streams", "where", "from_audit", "limit", "force", "reason", "owner",
         "snapshot", "layout_spec", "action", *(k.name for k in knobs.for_kind("archive_range"))}

# The batch's candidates that may be moved: cross-referenced ones only with force.
WANTED = """SELECT CAST(c.stream_id AS {ktype}) FROM archive_candidates c
    WHERE c.snapshot = CAST(:snapshot AS uuid) AND c.seq > :lo AND c.seq <= :hi AND (:force OR NOT c.xref)"""
LOCK_MARK = """WITH locked AS (SELECT s.{key} AS k FROM {streams} s
    WHERE s.{key} = ANY(ARRAY(WANTED)) AND STATE ORDER BY s.{key} FOR UPDATE)
UPDATE {streams} t SET SETS WHERE t.{key} = ANY(ARRAY(SELECT k FROM locked)) RETURNING t.{key}::text"""
MOVE = """WITH moved AS (DELETE FROM {src} e WHERE e.{estream} = ANY(CAST(:ids AS {etype}[])) RETURNING {cols}),
ins AS (INSERT INTO {dst} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved),
counts AS (SELECT g.s::text AS stream_id, g.n FROM (SELECT {estream} AS s, count(*) AS n FROM moved GROUP BY 1) g)"""
FLAG = """WITH flagged AS (UPDATE {events} e SET {eflag} = :archived
  WHERE e.{estream} = ANY(CAST(:ids AS {etype}[])) AND e.{eflag} <> :archived RETURNING e.{estream}),
counts AS (SELECT g.s::text AS stream_id, g.n FROM (SELECT {estream} AS s, count(*) AS n FROM flagged GROUP BY 1) g)"""
NOTHING_MOVED = "WITH counts AS (SELECT CAST(NULL AS text) AS stream_id, CAST(0 AS bigint) AS n WHERE false)"
MODEL = """WITH moved AS (DELETE FROM {src} r WHERE r.{rkey} = ANY(CAST(:ids AS {rtype}[])) RETURNING {cols})
INSERT INTO {dst} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved"""
# Follows MOVE, FLAG or NOTHING_MOVED in the same statement: the batch's audit row, every candidate
# of (lo, hi] in seq order with what happened to it (``:ids`` are the streams locked and moved).
AUDIT = """,
audit AS (
  INSERT INTO archive_audit_batches (job_id, layout, actor, actions, stream_ids, stream_types, events, reasons)
  SELECT CAST(:job_id AS uuid), :layout, :actor,
         array_agg(CASE WHEN l.id IS NULL THEN 'skip' ELSE :action END ORDER BY c.seq),
         array_agg(c.stream_id ORDER BY c.seq), array_agg(c.stream_type ORDER BY c.seq),
         array_agg(coalesce(n.n, 0) ORDER BY c.seq),
         array_agg(CASE WHEN l.id IS NOT NULL THEN :reason WHEN c.xref AND NOT :force THEN :xref_why
                        ELSE :gone_why END ORDER BY c.seq)
  FROM archive_candidates c
  LEFT JOIN unnest(CAST(:ids AS text[])) AS l(id) ON l.id = c.stream_id
  LEFT JOIN counts n ON n.stream_id = c.stream_id
  WHERE c.snapshot = CAST(:snapshot AS uuid) AND c.seq > :lo AND c.seq <= :hi
  HAVING count(*) > 0
  RETURNING cardinality(actions) AS streams)
SELECT (SELECT coalesce(sum(streams), 0) FROM audit) AS streams, (SELECT coalesce(sum(n), 0) FROM counts) AS events"""
XREF_WHY = "cross-referenced by a live stream (use --force)"
DETAILS = text("""SELECT job_id, count(*) FILTER (WHERE action <> 'skip') AS streams,
       count(*) FILTER (WHERE action = 'skip') AS skipped, coalesce(sum(events), 0) AS events
FROM archive_audit WHERE job_id = ANY(CAST(:ids AS uuid[])) GROUP BY job_id""")


class ArchiveRange:
    def __init__(self, name: str, unarchive: bool, aliases: tuple[str, ...]) -> None:
        self.name = name
        self.unarchive = unarchive
        self.aliases = aliases
        self._layouts: dict[str, Layout] = {}

    def layout(self, conn: Connection, params: dict[str, Any]) -> Layout:
        """Catalog checks once per process and snapshot, not once per batch."""
        found = self._layouts.get(params["snapshot"])
        if found is None:
            found = self._layouts[params["snapshot"]] = layouts.resolve(conn, params["layout_spec"])
        return found

    # -- planning ------------------------------------------------------------------

    def plan(self, conn: Connection, payload: Any, *, count_events: bool = False,
             spec: dict[str, Any] | None = None) -> Plan:
        """Snapshot the selection (``count_events``: with each stream's events, for the reports). ``spec``: the
        layout document of a CLI user's own file (a dry run); a payload only names its layout."""
        p = normalize(payload, self.unarchive, conn, spec=spec)
        layout = layouts.resolve(conn, p["layout_spec"])
        p["snapshot"] = str(uuid.uuid4())
        query = selection.candidates(conn, layout, p, unarchive=self.unarchive, count_events=count_events)
        n = selection.snapshot(conn, query, p["snapshot"])
        if not self.unarchive:
            selection.mark_cross_references(conn, layout, p["snapshot"])
        parts = max(1, min(p["concurrency"], n))
        cuts = [1 + (n * i) // parts for i in range(parts + 1)]
        slices = [SlicePlan(keys.before(a), b) for a, b in zip(cuts, cuts[1:], strict=False) if a < b]
        if not slices:
            slices = [SlicePlan(0, 1)]
        return Plan(params=p, owner=p["owner"], key_type="bigint", from_key=1, to_key=max(n + 1, 2),
                    batch_size=p["batch_size"], concurrency=p["concurrency"], slices=slices, total_estimate=n)

    # -- one batch -------------------------------------------------------------------

    def process(self, conn: Connection, ctx: BatchContext, cursor: keys.Key, end: keys.Key) -> BatchResult:
        assert isinstance(cursor, int) and isinstance(end, int)
        p = ctx.params
        layout = self.layout(conn, p)
        hi = min(cursor + ctx.batch_size, end - 1)
        if hi <= cursor:
            return BatchResult(checkpoint=end - 1, processed=0, exhausted=True)
        batch = {"snapshot": p["snapshot"], "lo": cursor, "hi": hi, "force": bool(p.get("force"))}
        locked = self._lock_and_mark(conn, layout, batch, p)
        action = "unarchive" if self.unarchive else "archive"
        audit = {**batch, "job_id": ctx.job_id, "layout": layout.name, "actor": p["owner"], "action": action,
                 "reason": p.get("reason"), "xref_why": XREF_WHY, "ids": locked,
                 "gone_why": "already unarchived or gone" if self.unarchive else "already archived or gone"}
        streams, events = self.move(conn, layout, locked, audit)
        # counted before the commit: a batch that then rolls back is counted again when it is
        # redone, so these counters may run slightly ahead; archive_audit is exact.
        metrics.ARCHIVE_STREAMS.labels(action).inc(len(locked))
        metrics.ARCHIVE_STREAMS.labels("skip").inc(streams - len(locked))
        metrics.ARCHIVE_EVENTS.labels("to_hot" if self.unarchive else "to_archive").inc(events)
        return BatchResult(checkpoint=hi, processed=streams, exhausted=hi >= end - 1)

    def details(self, conn: Connection, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """What `tidegate status` adds for these jobs: streams moved and skipped, events moved (from the audit)."""
        rows = conn.execute(DETAILS, {"ids": job_ids}).all()
        moved = "events_to_hot" if self.unarchive else "events_moved"
        return {str(r.job_id): {"streams_" + ("unarchived" if self.unarchive else "archived"): int(r.streams),
                                "streams_skipped": int(r.skipped), moved: int(r.events)} for r in rows}

    def summary(self, engine: Engine, job_id: str) -> dict[str, Any]:
        """What the runtime logs when a run ends: attempted, archived, skipped, failed, elapsed, remaining."""
        from tidegate.jobs.archive import report  # report builds on this module

        return report.summary(engine, job_id)

    def move(self, conn: Connection, layout: Layout, locked: list[str], audit: dict[str, Any]) -> tuple[int, int]:
        """Move the locked streams' read models and events and write the batch's audit row (in the
        events statement); returns (candidates in the batch, events moved)."""
        ev = {"estream": layout.event_stream.ident, "etype": identifiers.type_of(layout.event_stream)}
        if not locked:
            sql = render(NOTHING_MOVED + AUDIT)
        elif layout.flag:
            flag = layout.event_cols["archived_flag"]
            sql = render(FLAG + AUDIT, events=layout.events, eflag=flag.ident, **ev)
            audit = {**audit, "archived": not self.unarchive}
        else:
            assert layout.archive is not None
            src, dst = (layout.archive, layout.events) if self.unarchive else (layout.events, layout.archive)
            sql = render(MOVE + AUDIT, src=src, dst=dst, cols=layout.event_columns, **ev)
        if locked and not self.unarchive:
            self._move_models(conn, layout, locked)
        row = conn.execute(sql, audit).one()
        if locked and self.unarchive:
            self._move_models(conn, layout, locked)
        return int(row.streams), int(row.events)

    def _move_models(self, conn: Connection, layout: Layout, ids: list[str]) -> None:
        for m in layout.read_models:
            src, dst = (m.archive, m.table) if self.unarchive else (m.table, m.archive)
            conn.execute(render(MODEL, src=src, dst=dst, cols=m.columns, rkey=m.key.ident,
                                rtype=identifiers.type_of(m.key)), {"ids": ids})

    def _lock_and_mark(self, conn: Connection, layout: Layout, batch: dict[str, Any], p: dict[str, Any]) -> list[str]:
        """One statement: read the batch's candidates, lock the streams still in the expected state, in key
        order, and set (or clear) their marks; returns their ids. Marks go first so that a guard trigger
        lets unarchived events back in and sees archived streams as archived the moment the batch commits.
        The events move in a later statement, whose snapshot sees every append that committed before the
        lock was granted (one statement would keep the snapshot taken before it waited)."""
        idents = {"key": layout.key.ident, "streams": layout.streams, "ktype": identifiers.type_of(layout.key)}
        state = selection.state_sql(layout, idents, archived=self.unarchive)
        sets = []
        params: dict[str, Any] = dict(batch)
        for name, archive_value, unarchive_value in (("archived_flag", "true", "false"),
                                                     ("archived_at", "now()", "NULL"),
                                                     ("archived_by", ":by", "NULL"),
                                                     ("archive_reason", ":reason", "NULL")):
            col = layout.col(name)
            if col is not None:
                idents["m_" + name] = col.ident
                sets.append("{m_" + name + "} = " + (unarchive_value if self.unarchive else archive_value))
        if not self.unarchive:
            if layout.col("archived_by") is not None:
                params["by"] = p["owner"]
            if layout.col("archive_reason") is not None:
                params["reason"] = p.get("reason")
        sql = LOCK_MARK.replace("WANTED", WANTED).replace("STATE", state).replace("SETS", ", ".join(sets))
        return list(conn.execute(render(sql, **idents), params).scalars().all())


def normalize(payload: Any, unarchive: bool, conn: Connection, *, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """The payload with defaults applied and every field checked; raises InvalidInput.

    ``layout`` names a shipped or registered layout (:func:`layouts.named`); its document goes into the
    job's params as ``layout_spec``, which only the planner writes (``spec``: a document the caller
    trusts, the planned job's own or the CLI user's file)."""
    if not isinstance(payload, dict):
        raise InvalidInput(f"payload must be a JSON object, got {type(payload).__name__}")
    p = dict(payload)
    unknown = sorted(set(p) - KNOWN)
    if unknown:
        raise InvalidInput(f"unknown payload field(s): {shorten(', '.join(unknown))};"
                           f" known: {', '.join(sorted(KNOWN))}")
    if spec is None and "layout_spec" in p:
        raise InvalidInput("layout_spec is written by planning, not by a payload: name the layout in 'layout'")
    if "layout" not in p:
        raise InvalidInput(f"payload is missing 'layout' ({', '.join(layouts.SHIPPED)}, or a registered layout)")
    if spec is not None:
        layouts.check_spec(spec)
        p["layout_spec"] = copy.deepcopy(spec)
    else:
        p["layout_spec"] = layouts.named(conn, p["layout"])
    selection.check_filters(p.get("where"))
    for field in ("type", "tenant", "reason", "from_audit"):
        if p.get(field) is not None and (not isinstance(p[field], str) or len(p[field]) > 1000):
            raise InvalidInput(f"{field} must be a string of at most 1,000 characters")
    if p.get("from_audit") is not None:
        if not unarchive:
            raise InvalidInput("from_audit is for unarchive-range")
        try:
            p["from_audit"] = str(uuid.UUID(p["from_audit"]))
        except ValueError:
            raise InvalidInput(f"from_audit must be a job id (uuid), got {quote(p['from_audit'])}") from None
    if p.get("before") is not None:
        p["before"] = keys.encode(keys.parse("timestamptz", p["before"], "before"))
    streams = p.get("streams")
    if streams is not None and (not isinstance(streams, list) or not all(isinstance(s, str | int) for s in streams)):
        raise InvalidInput("streams must be a list of stream ids")
    knobs.check_payload(p, "archive_range", default_batch=DEFAULT_BATCH)  # and the pace knobs it gives
    if p.get("limit") is not None:
        p["limit"] = checks.bounded(p["limit"], "limit", 1, 10**12)
    if not isinstance(p.get("force", False), bool):
        raise InvalidInput("force must be true or false")
    p["owner"] = checks.owner(p.get("owner", "unknown"))
    p["action"] = "unarchive" if unarchive else "archive"
    return p



ARCHIVE = ArchiveRange("archive_range", unarchive=False, aliases=("archive",))
UNARCHIVE = ArchiveRange("unarchive_range", unarchive=True, aliases=("unarchive",))
