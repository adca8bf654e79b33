"""archive_range / unarchive_range: move whole event streams to the archive and back.

Payload (``queue_jobs.payload``; ``tidegate enqueue archive-range`` writes the same)::

    {"layout": "marten" | "<a layout registered with tidegate archive layout add>",
     "schema": "events",                  # the schema of the layout's bare table names (else the layout's)
     "type": "venue", "tenant": "t1", "before": "2025-01-01T00:00:00Z", "streams": ["<id>", ...],
     "where": [{"field": "DataSource", "op": "!=", "value": "LuckBox"}],
     "from_audit": "<job id>",            # unarchive only: the streams that job archived
     "limit": 1000, "batch_size": 1000, "concurrency": 2, "force": false,
     "phase": "mark" | "move",            # archive only: two-phase archiving (below)
     "reason": "duplicate aggregates", "owner": "data-platform"}

Planning (once, by the worker that claims the queue row) snapshots the selection into
``archive_candidates`` under a fresh ``snapshot`` id, numbered ``seq`` 1..N in the order of
the stream rows on disk (see ``snapshot`` in selection.sql), and marks the cross-referenced ones.
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
3. move read-model rows, projection documents (into ``archive_documents``, as whole rows)
   and events (``DELETE ... RETURNING`` into the archive table, or set the archived flag);
4. write the batch's audit: one ``archive_audit_batches`` row whose arrays hold, per stream, the
   action (archive/unarchive, or skip with the reason: cross-referenced, or no longer in the
   expected state) and the events moved; the ``archive_audit`` view reads it one row per stream.

Two-phase archiving, as Rillflow does it (``archive-range --mark-only``, then ``--move-marked``):
``phase: "mark"`` does step 2 only: the streams are marked archived (the guard then redirects or
refuses their appends) and their events stay where they are; ``phase: "move"`` selects marked
streams whose events are still hot, locks them without touching their marks (archived_at stays the
mark's time) and does step 3. Both audit their streams as ``archive``; unarchive undoes either or
both (it clears the marks and brings back whatever sits in the archive).

A crash anywhere rolls the whole batch back with its checkpoint: no stream is ever torn,
and nothing is repeated. Unarchive inserts the same rows back (``OVERRIDING SYSTEM
VALUE``: sequence numbers and versions are kept) and clears the marks, so archive then
unarchive leaves the event store as it was.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from typing import Any, Self

from sqlalchemy import Connection, Engine, TextClause, text

from tidegate.jobs import checks
from tidegate.jobs.archive import layouts, selection
from tidegate.jobs.archive.layouts import Layout
from tidegate.worker import identifiers, keys, knobs, metrics
from tidegate.worker.db import TextList
from tidegate.worker.errors import InvalidInput, quote
from tidegate.worker.identifiers import Ident
from tidegate.worker.kinds import (
    BatchContext,
    BatchResult,
    KeyRange,
    NextKeys,
    Payload,
    Plan,
    RangeKind,
    SlicePlan,
    dense_keys,
)
from tidegate.worker.sql import Fragment, compose, load, render

# streams per batch: 1,000 moved the bench's 1M events faster than 500 or 2,000 (bench/RESULTS.md)
DEFAULT_BATCH = 1_000
MAX_CONCURRENCY = knobs.MAX_CONCURRENCY
SQL = load(__package__, "archive_range.sql")  # the statements on the event store, by name
DOCS = load(__package__, "documents.sql")  # a layout's projection documents, in archive_documents
AUDIT = Fragment(SQL["audit"])  # ends each events statement: the batch's audit row
DETAILS = text(SQL["details"])
SET_MARK = "{column} = {value}"  # a mark column of the stream row, and its value from Direction.marks
PHASES = ("mark", "move")  # two-phase archiving: mark the streams only, or move the events of marked ones
CACHED = 16  # jobs whose statements a process keeps (a worker runs a few jobs at a time)
XREF_WHY = "cross-referenced by a live stream (use --force)"
MOVE_GONE_WHY = "no longer archived (reactivated) or gone"  # --move-marked: a candidate unmarked meanwhile


@dataclass(frozen=True)
class Direction:
    """What differs between archiving and unarchiving, chosen once per kind; the rest is shared."""

    action: str  # the audit's action and the metrics' label
    unarchive: bool  # the candidates are archived streams, moving back to the hot tables
    marks: dict[str, str]  # the stream row's mark columns (those the layout has): what a batch sets them to
    events_label: str  # where the events go, for the events metric
    gone_why: str  # the audit's reason for a candidate no longer in the expected state
    streams_fact: str  # what `tidegate status` calls the streams moved and the events moved
    events_fact: str

    def src_dst(self, hot: Ident, archive: Ident) -> tuple[Ident, Ident]:
        """The table rows move from, and the one they move to."""
        return (archive, hot) if self.unarchive else (hot, archive)


ARCHIVING = Direction(
    "archive", unarchive=False, events_label="to_archive", gone_why="already archived or gone",
    marks={"archived_flag": "true", "archived_at": "now()", "archived_by": ":by", "archive_reason": ":reason"},
    streams_fact="streams_archived", events_fact="events_moved")
UNARCHIVING = Direction(
    "unarchive", unarchive=True, events_label="to_hot", gone_why="already unarchived or gone",
    marks={"archived_flag": "false", "archived_at": "NULL", "archived_by": "NULL", "archive_reason": "NULL"},
    streams_fact="streams_unarchived", events_fact="events_to_hot")


@dataclass(frozen=True, kw_only=True)
class ArchivePayload(Payload):
    """An archive-range or unarchive-range payload, every field checked (the module's docstring shows the JSON).
    ``layout_spec``, ``snapshot`` and ``action`` are the planner's: a job's stored params parse again."""

    FIELDS = frozenset({"layout", "schema", "type", "tenant", "before", "streams", "where", "from_audit", "limit",
                        "force", "reason", "owner", "snapshot", "layout_spec", "action", "phase",
                        *Payload.knob_fields("archive_range")})

    layout: str
    schema: str | None = None  # the schema of the layout's bare table names (a tenant schema, Marten's)
    type: str | None = None
    tenant: str | None = None
    before: str | None = None  # a timestamp, encoded
    streams: tuple[str | int, ...] | None = None
    where: Any = None  # selection.check_filters' input: objects or --where strings
    from_audit: str | None = None  # unarchive only: the streams that job archived
    limit: int | None = None
    force: bool = False
    reason: str | None = None
    phase: str | None = None  # archive only: "mark" or "move" (two-phase archiving); None does both

    @classmethod
    def parse(cls, raw: Any, direction: Direction = ARCHIVING, *, planned: bool = False) -> Self:
        """Every field checked; raises InvalidInput. ``planned``: the job's own params (or a dry run's
        payload with the user's layout file), which may hold ``layout_spec``."""
        p = cls.json_object(raw)
        if not planned and "layout_spec" in p:
            raise InvalidInput("layout_spec is written by planning, not by a payload: name the layout in 'layout'")
        if "layout" not in p:
            raise InvalidInput(f"payload is missing 'layout' ({', '.join(layouts.SHIPPED)}, or a registered layout)")
        selection.check_filters(p.get("where"))
        if p.get("schema") is not None and (not isinstance(p["schema"], str) or not 0 < len(p["schema"]) <= 63):
            raise InvalidInput(f"schema must be a schema name (1 to 63 characters), got {quote(p['schema'])}")
        for field in ("type", "tenant", "reason", "from_audit"):
            if p.get(field) is not None and (not isinstance(p[field], str) or len(p[field]) > 1000):
                raise InvalidInput(f"{field} must be a string of at most 1,000 characters")
        if p.get("from_audit") is not None:
            if not direction.unarchive:
                raise InvalidInput("from_audit is for unarchive-range")
            try:
                p["from_audit"] = str(uuid.UUID(p["from_audit"]))
            except ValueError:
                raise InvalidInput(f"from_audit must be a job id (uuid), got {quote(p['from_audit'])}") from None
        if p.get("before") is not None:
            p["before"] = keys.encode(keys.parse("timestamptz", p["before"], "before"))
        streams = p.get("streams")
        if streams is not None and not (isinstance(streams, list) and all(isinstance(s, str | int) for s in streams)):
            raise InvalidInput("streams must be a list of stream ids")
        common = cls.common(p, "archive_range", default_batch=DEFAULT_BATCH)  # owner, batch_size, concurrency, knobs
        if p.get("limit") is not None:
            p["limit"] = checks.bounded(p["limit"], "limit", 1, 10**12)
        if not isinstance(p.get("force", False), bool):
            raise InvalidInput("force must be true or false")
        if p.get("phase") is not None:
            if direction.unarchive:
                raise InvalidInput("phase is for archive-range: unarchive-range undoes either phase")
            if p["phase"] not in PHASES:
                raise InvalidInput(f"phase must be 'mark' (--mark-only) or 'move' (--move-marked),"
                                   f" got {quote(p['phase'])}")
        return cls(layout=p["layout"], schema=p.get("schema"), type=p.get("type"), tenant=p.get("tenant"),
                   before=p.get("before"), streams=tuple(streams) if streams is not None else None,
                   where=p.get("where"), from_audit=p.get("from_audit"), limit=p.get("limit"),
                   force=p.get("force", False), reason=p.get("reason"), phase=p.get("phase"), **common)

    def params(self) -> dict[str, Any]:
        p = super().params()
        if self.streams is not None:
            p["streams"] = list(self.streams)
        return p


class ArchiveRange(RangeKind):
    """One kind per :class:`Direction`: ``archive_range`` and ``unarchive_range``."""

    def __init__(self, name: str, direction: Direction, aliases: tuple[str, ...]) -> None:
        self.name = name
        self.direction = direction
        self.aliases = aliases
        self._jobs: dict[str, Statements] = {}  # by snapshot: the latest CACHED jobs this process ran

    def statements(self, conn: Connection, params: dict[str, Any]) -> Statements:
        """A job's resolved layout and batch statements, once per process and snapshot, not once per batch:
        the catalog checks, the foreign-key question and the rendering are the same for every batch."""
        found = self._jobs.get(params["snapshot"])
        if found is None:
            found = self._keep(params["snapshot"], self._prepare(conn, params))
        return found

    def _keep(self, snapshot: str, found: Statements) -> Statements:
        while len(self._jobs) >= CACHED:
            del self._jobs[next(iter(self._jobs))]  # the oldest job's
        self._jobs[snapshot] = found
        return found

    def layout(self, conn: Connection, params: dict[str, Any]) -> Layout:
        """Catalog checks once per process and snapshot, not once per batch."""
        return self.statements(conn, params).layout

    # -- planning ------------------------------------------------------------------

    def selection(self, conn: Connection, payload: Any, *, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """The payload as the job's params: parsed, with its layout's document as ``layout_spec``.

        ``layout`` names a shipped or registered layout (:func:`layouts.named`); only the planner writes its
        document (``spec``: a document the caller trusts, the planned job's own or the CLI user's file)."""
        job = ArchivePayload.parse(payload, self.direction, planned=spec is not None)
        p = job.params()
        if spec is not None:
            layouts.check_spec(spec)
            p["layout_spec"] = copy.deepcopy(spec)
        else:
            p["layout_spec"] = layouts.named(conn, job.layout)
        p["layout_spec"] = layouts.with_schema(p["layout_spec"], job.schema)  # resolve() checks it
        p["action"] = self.direction.action
        return p

    def plan(self, conn: Connection, payload: Any, *, count_events: bool = False,
             spec: dict[str, Any] | None = None) -> Plan:
        """Snapshot the selection (``count_events``: with each stream's events, for the reports). ``spec``: the
        layout document of a CLI user's own file (a dry run); a payload only names its layout."""
        p = self.selection(conn, payload, spec=spec)
        layout = layouts.resolve(conn, p["layout_spec"])
        p["snapshot"] = str(uuid.uuid4())
        query = selection.candidates(conn, layout, p, unarchive=self.direction.unarchive, count_events=count_events,
                                     marked=p.get("phase") == "move")
        n = selection.snapshot(conn, query, p["snapshot"])
        if not self.direction.unarchive and p.get("phase") != "move":  # no live stream may reference an archived one
            selection.mark_cross_references(conn, layout, p["snapshot"])
        if not count_events:  # a job's plan: its first batch most likely runs here, and needs not ask the catalog again
            self._keep(p["snapshot"], self._prepare(conn, p, layout))
        parts = max(1, min(p["concurrency"], n))
        cuts = [1 + (n * i) // parts for i in range(parts + 1)]
        slices = [SlicePlan(keys.before(a), b) for a, b in zip(cuts, cuts[1:], strict=False) if a < b]
        if not slices:
            slices = [SlicePlan(0, 1)]
        return Plan(params=p, owner=p["owner"], key_type="bigint", from_key=1, to_key=max(n + 1, 2),
                    batch_size=p["batch_size"], concurrency=p["concurrency"], slices=slices, total_estimate=n)

    # -- one batch -------------------------------------------------------------------

    def next_keys(self, conn: Connection, ctx: BatchContext, after: keys.Key, end: keys.Key,
                  limit: int) -> NextKeys | None:
        """The snapshot numbers its candidates 1..N: the next ones are counted, not read."""
        assert isinstance(after, int) and isinstance(end, int)
        return dense_keys(after, end, limit)

    def process_range(self, conn: Connection, ctx: BatchContext, batch: KeyRange) -> BatchResult:
        """Lock and mark the candidates of ``(lo, hi]``, move their read models and events, audit the batch:
        two statements on the event store (one more per read model and document table), rendered once per job."""
        p = ctx.params
        job = self.statements(conn, p)
        candidates = {"snapshot": p["snapshot"], "lo": batch.lo, "hi": batch.hi, "force": bool(p.get("force"))}
        action = self.direction.action
        try:
            locked = TextList(conn.execute(job.lock, {**candidates, **job.lock_params}).scalars().all())
            gone_why = MOVE_GONE_WHY if p.get("phase") == "move" else self.direction.gone_why
            audit = {**candidates, "job_id": ctx.job_id, "layout": job.layout.name, "actor": p["owner"],
                     "action": action, "reason": p.get("reason"), "xref_why": XREF_WHY, "ids": locked,
                     "gone_why": gone_why}
            streams, events = self.move(conn, job, locked, audit)
        except Exception:
            self._jobs.pop(p["snapshot"], None)  # the retry reads the catalog again (a table or key changed?)
            raise
        # counted before the commit: a batch that then rolls back is counted again when it is
        # redone, so these counters may run slightly ahead; archive_audit is exact.
        metrics.ARCHIVE_STREAMS.labels(action).inc(len(locked))
        metrics.ARCHIVE_STREAMS.labels("skip").inc(streams - len(locked))
        metrics.ARCHIVE_EVENTS.labels(self.direction.events_label).inc(events)
        return BatchResult(processed=streams)

    def details(self, conn: Connection, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """What `tidegate status` adds for these jobs: streams moved and skipped, events moved (from the audit)."""
        rows = conn.execute(DETAILS, {"ids": job_ids}).all()
        d = self.direction
        return {str(r.job_id): {d.streams_fact: int(r.streams), "streams_skipped": int(r.skipped),
                                d.events_fact: int(r.events)} for r in rows}

    def summary(self, engine: Engine, job_id: str) -> dict[str, Any]:
        """What the runtime logs when a run ends: attempted, archived, skipped, failed, elapsed, remaining."""
        from tidegate.jobs.archive import report  # report builds on this module

        return report.summary(engine, job_id)

    def move(self, conn: Connection, job: Statements, locked: list[str], audit: dict[str, Any]) -> tuple[int, int]:
        """Move the locked streams' read models and events and write the batch's audit row (in the
        events statement); returns (candidates in the batch, events moved). Read models move before
        the events when archiving and after them when unarchiving. A job without an events statement
        (the first phase of two-phase archiving) or a batch that locked nothing writes the audit row alone
        (:ids still names the streams marked)."""
        if not locked or job.events is None:
            sql, params = job.nothing, audit
            moving: list[str] = []
        else:
            sql, params = job.events, {**job.events_params, **audit}
            moving = locked
        models_first = not self.direction.unarchive
        if moving and models_first:
            self._move_models(conn, job, moving, audit["job_id"])
        row = conn.execute(sql, params).one()
        if moving and not models_first:
            self._move_models(conn, job, moving, audit["job_id"])
        return int(row.streams), int(row.events)

    def _move_models(self, conn: Connection, job: Statements, ids: list[str], job_id: str) -> None:
        """The read models' rows and the projection documents of the locked streams, in the batch's transaction."""
        for sql, extra in job.models:
            conn.execute(sql, {"ids": ids, "job_id": job_id, **extra})

    def _prepare(self, conn: Connection, p: dict[str, Any], layout: Layout | None = None) -> Statements:
        """Resolve the job's layout (unless the planner just did) and render its batch statements (see
        :class:`Statements`)."""
        layout = layout or layouts.resolve(conn, p["layout_spec"])
        phase = p.get("phase")
        marks = self._marks(layout, p)
        # a store whose events' foreign key names the streams' flag takes marks and flags in one statement
        together = (layout.flag and phase is None and "archived_flag" in layout.stream_cols
                    and self._flag_in_fkey(conn, layout))
        idents = dict(marks.idents)  # state_sql adds the state's column; the events statement renders without
        state = selection.state_sql(layout, idents, archived=self.direction.unarchive or phase == "move")
        if phase == "move" or together:  # lock only: the marks stay (--move-marked) or move with the flags
            lock = render(SQL["lock_only"], state=state, **{k: v for k, v in idents.items() if not k.startswith("m_")})
        else:
            lock = render(SQL["lock_mark"], state=state, sets=marks.sets, **idents)
        ev = {"estream": layout.event_stream.ident, "etype": identifiers.type_of(layout.event_stream)}
        events: TextClause | None = None
        events_params: dict[str, Any] = {}
        if phase == "mark":
            pass  # marks only: events and read models stay where they are
        elif layout.flag:
            flag = layout.event_cols["archived_flag"]
            archived, hot = layout.event_flag_values
            events_params = ({"flag_from": archived, "flag_to": hot} if self.direction.unarchive
                             else {"flag_from": hot, "flag_to": archived})
            if not together:
                events = render(SQL["flag_events"], audit=AUDIT, events=layout.events, eflag=flag.ident,
                                eftype=identifiers.type_of(flag), **ev)
            else:
                events = render(SQL["mark_flag_events"], audit=AUDIT, events=layout.events, eflag=flag.ident,
                                eftype=identifiers.type_of(flag), sets=marks.sets, **marks.idents, **ev)
                events_params = {**marks.params, **events_params}
        else:
            assert layout.archive is not None
            src, dst = self.direction.src_dst(layout.events, layout.archive)
            events = render(SQL["move_events"], audit=AUDIT, src=src, dst=dst, cols=layout.event_columns, **ev)
        models: list[tuple[TextClause, dict[str, Any]]] = []
        for m in layout.read_models:
            src, dst = self.direction.src_dst(m.table, m.archive)
            models.append((render(SQL["move_models"], src=src, dst=dst, cols=m.columns, rkey=m.key.ident,
                                  rtype=identifiers.type_of(m.key)), {}))
        for d in layout.documents:
            if self.direction.unarchive:
                sql = render(DOCS["restore"], doc=d.table, cols=d.columns)
            else:
                sql = render(DOCS["archive"], doc=d.table, dkey=d.key.ident, dtype=identifiers.type_of(d.key))
            models.append((sql, {"relation": d.table.sql}))
        return Statements(layout=layout, lock=lock, lock_params=marks.params, events=events,
                          events_params=events_params, nothing=render(SQL["nothing_moved"], audit=AUDIT),
                          models=models)

    def _marks(self, layout: Layout, p: dict[str, Any]) -> Marks:
        """The streams' marks this direction sets or clears: the SET list, its identifiers and parameters."""
        idents: dict[str, Any] = {"key": layout.key.ident, "streams": layout.streams,
                                  "ktype": identifiers.type_of(layout.key)}
        sets = []
        params: dict[str, Any] = {}
        for name, value in self.direction.marks.items():
            col = layout.col(name)
            if col is not None:
                idents["m_" + name] = col.ident
                if name == "archived_flag" and layout.stream_flag_is_value:  # retention_class = 'cold' / 'hot'
                    value = ":flag_mark"
                    params["flag_mark"] = layout.stream_flag_values[1 if self.direction.unarchive else 0]
                sets.append(compose(SET_MARK, column=Fragment(f"{{m_{name}}}"), value=Fragment(value)))
                if value == ":by":
                    params["by"] = p["owner"]
                elif value == ":reason":
                    params["reason"] = p.get("reason")
        return Marks(Fragment(", ".join(sets)), idents, params)

    def _flag_in_fkey(self, conn: Connection, layout: Layout) -> bool:
        flag = layout.stream_cols["archived_flag"]
        return bool(conn.execute(text(SQL["flag_in_fkey"]), {"events": layout.events.sql, "streams": layout.streams.sql,
                                                             "flag": flag.ident.name}).scalar_one())


@dataclass(frozen=True)
class Statements:
    """One job's batch statements, rendered once per process and snapshot (:meth:`ArchiveRange.statements`).

    ``lock``: read the batch's candidates, lock the streams still in the expected state ``FOR UPDATE`` in key
    order and set (or clear) their marks, in one statement; their ids. Marks go first so that a guard trigger
    lets unarchived events back in and sees archived streams as archived the moment the batch commits. The
    events move in a later statement (``events``), whose snapshot sees every append that committed before the
    lock was granted (one statement would keep the snapshot taken before it waited). --move-marked, and a
    store whose events' foreign key names the streams' flag, lock only: the marks stay, or the events
    statement sets them with the flags. ``events`` is None for --mark-only; ``nothing`` is the audit row
    alone; ``models``: the read models' and documents' statements with their own parameters."""

    layout: Layout
    lock: TextClause
    lock_params: dict[str, Any]
    events: TextClause | None
    events_params: dict[str, Any]
    nothing: TextClause
    models: list[tuple[TextClause, dict[str, Any]]]


@dataclass(frozen=True)
class Marks:
    """A direction's marks on the stream rows: ``sets`` (``col = value, ...``) and what it renders with."""

    sets: Fragment
    idents: dict[str, Any]
    params: dict[str, Any]

ARCHIVE = ArchiveRange("archive_range", ARCHIVING, aliases=("archive",))
UNARCHIVE = ArchiveRange("unarchive_range", UNARCHIVING, aliases=("unarchive", "reactivate"))
