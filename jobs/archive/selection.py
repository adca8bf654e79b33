"""Which streams a job archives: structured filters, and the candidate snapshot.

Filters are (field, operator, value) triples, never SQL text. ``--where`` takes
``FIELD OP VALUE`` (or ``FIELD!=VALUE`` without spaces); operators are
``= != <> < <= > >= in`` (value: comma-separated list), ``is null`` and
``is not null``. FIELD is a stream column the layout lists in ``filter_columns``
(compared after a CAST of the value to the column's type) or else a key of the
stream's create event's JSON data (its lowest version; ties, and layouts without a
version column, by lowest sequence), compared as text,
as the Marten runbook's ``data->>'DataSource' != 'LuckBox'`` does (a stream without
the key matches neither ``=`` nor ``!=``: SQL's NULL rules). Every value, and every
JSON key, is a bound parameter; column names pass the catalog check.

The SQL is assembled from constant fragments only: an operator is looked up in
:data:`OPS` and placeholders are numbered, so no user text reaches a statement.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, TextClause, text
from sqlalchemy.exc import DBAPIError

from tidegate.jobs.archive.layouts import Layout
from tidegate.worker import identifiers
from tidegate.worker.errors import InvalidInput, quote
from tidegate.worker.identifiers import Ident
from tidegate.worker.sql import Fragment, compose, load, render

OPS = {"=": "=", "!=": "<>", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
UNARY = {"is null": "IS NULL", "is not null": "IS NOT NULL"}
FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
WHERE = re.compile(
    r"^\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s*(?:"
    r"(?P<op>!=|<>|<=|>=|=|<|>)\s*(?P<value>.*?)"
    r"|\s+(?P<in>in)\s+(?P<list>.+?)"
    r"|\s+(?P<unary>is\s+not\s+null|is\s+null))\s*$",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True)
class Filter:
    field: str
    op: str  # a key of OPS or UNARY, or "in"
    value: str | list[str] | None

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "op": self.op, "value": self.value}


def parse_where(text: str) -> Filter:
    """``DataSource!=LuckBox``, ``type = venue``, ``tenant_id in a,b``, ``Region is null``."""
    m = WHERE.match(text or "")
    if m is None:
        raise InvalidInput(f"--where {quote(text)}: expected FIELD OP VALUE with OP one of"
                           " = != < <= > >= in, or FIELD is null / is not null")
    if m["unary"]:
        return Filter(m["field"], " ".join(m["unary"].lower().split()), None)
    if m["in"]:
        return Filter(m["field"], "in", [v.strip() for v in m["list"].split(",") if v.strip()])
    value = m["value"]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]  # quotes are optional; the value is bound either way
    return Filter(m["field"], m["op"], value)


def check_filters(raw: Any) -> list[Filter]:
    """Payload ``where``: a list of {field, op, value} objects (or --where strings)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput("where must be a list of {field, op, value} objects")
    found = []
    for item in raw:
        if isinstance(item, str):
            found.append(parse_where(item))
            continue
        if not isinstance(item, dict) or set(item) - {"field", "op", "value"}:
            raise InvalidInput(f"where: expected {{field, op, value}}, got {quote(item)}")
        field, op, value = item.get("field"), str(item.get("op", "")).lower(), item.get("value")
        if not isinstance(field, str) or not FIELD.match(field):
            raise InvalidInput(f"where: field {quote(field)} must be a plain name (letters, digits, _)")
        if op in UNARY:
            value = None
        elif op == "in":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise InvalidInput(f"where {field} in: expected a non-empty list of strings, got {quote(value)}")
        elif op in OPS:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise InvalidInput(f"where {field} {op}: expected a string or number, got {quote(value)}")
            value = str(value)
        else:
            raise InvalidInput(f"where: unknown operator {quote(op)}; use one of {', '.join([*OPS, 'in', *UNARY])}")
        found.append(Filter(field, op, value))
    return found


# -- the candidate query ----------------------------------------------------------------

# Candidates are numbered in the order of the stream rows on disk (``pos``: the row's ctid), not by
# stream key: streams created together sit together, and so, mostly, do their events. Consecutive
# batches then delete from neighbouring pages of the events table and append at one end of the
# archive's sequence index, as one big statement would; in key order (random, for uuids) every batch
# touched pages all over both. Measured: the move statement 117 -> 83 ms per 10,000 events on the
# 1M-event bench. Each batch still locks its streams in key order.
SQL = load(__package__, "selection.sql")  # the statements, and the pieces a selection is built from
ON_DISK, BY_KEY = Fragment("s.ctid"), Fragment("s.{key}")  # pos: a view has no ctid
# a --where filter's comparison: {expr} a stream column or a create event's field, {value} the bound value
COMPARE = "{expr} {op} CAST({value} AS {type})"
ANY_OF = "{expr} = ANY(CAST({value} AS {type}[]))"
TEST = "{expr} {op}"


@dataclass
class Query:
    sql: Fragment  # the candidates' SELECT; its {placeholders} are the keys of idents
    idents: dict[str, Ident]
    params: dict[str, Any]

    def within(self, template: str) -> TextClause:
        """A statement whose ``{query}`` is this selection."""
        return render(template, query=self.sql, **self.idents)


def state_sql(layout: Layout, idents: dict[str, Ident], archived: bool) -> Fragment:
    """``s`` is (not) archived, by the flag when the layout has one, else by archived_at."""
    flag = layout.col("archived_flag")
    if flag is not None:
        idents["sflag"] = flag.ident
        return Fragment(SQL["archived_by_flag"] if archived else SQL["hot_by_flag"])
    at = layout.col("archived_at")
    assert at is not None  # layouts.check_spec
    idents["sat"] = at.ident
    return Fragment(SQL["archived_by_at"] if archived else SQL["hot_by_at"])


def stream_type(layout: Layout, idents: dict[str, Ident]) -> Fragment:
    """The stream's type as text (NULL for a layout without a type column)."""
    stype = layout.col("type")
    if stype is None:
        return Fragment(SQL["no_stream_type"])
    idents["stype"] = stype.ident
    return Fragment(SQL["stream_type"])


def candidates(conn: Connection, layout: Layout, sel: dict[str, Any], *, unarchive: bool,
               count_events: bool = True) -> Query:
    """The streams a job selects (``--limit`` keeps the first N by stream key), with each row's
    position on disk (``pos``, the order :func:`snapshot` numbers them in). Unordered otherwise:
    ordering by key would cost an index scan of the streams table and a sort for nothing.

    ``count_events`` adds each stream's event count (the discovery report's create-only vs
    with updates); a worker planning the job leaves it out, as the batches count what they move."""
    src = layout.archive if (unarchive and layout.archive is not None) else layout.events
    idents: dict[str, Ident] = {"key": layout.key.ident, "src": src, "estream": layout.event_stream.ident,
                                "streams": layout.streams}
    params: dict[str, Any] = {}
    conds = [state_sql(layout, idents, archived=unarchive)]
    for option, cond in (("type", SQL["by_type"]), ("tenant", SQL["by_tenant"])):
        if sel.get(option) is not None:
            col = layout.col(option)
            if col is None:
                raise InvalidInput(f"--{option}: layout {quote(layout.name)} names no stream {option} column")
            idents["c_" + option] = col.ident
            conds.append(Fragment(cond))
            params[option] = str(sel[option])
    if sel.get("before") is not None:
        col = layout.col("activity")
        if col is None:
            raise InvalidInput(f"--before: layout {quote(layout.name)} names no stream activity column")
        idents["c_activity"] = col.ident
        conds.append(Fragment(SQL["before"]))
        params["before"] = sel["before"]
    if sel.get("streams"):
        idents["ktype"] = identifiers.type_of(layout.key)
        conds.append(Fragment(SQL["stream_ids"]))
        params["stream_ids"] = [str(v) for v in sel["streams"]]
    if sel.get("from_audit"):
        conds.append(Fragment(SQL["from_audit"]))
        params["audit_job"] = sel["from_audit"]
    fields: list[Fragment] = []  # the create event's data fields the filters read, columns of the join c
    for n, f in enumerate(check_filters(sel.get("where"))):
        conds.append(_filter_sql(layout, f, n, idents, params, fields))
    joins = Fragment("")
    if fields:  # one aggregate over the events, joined: the create events, with the event counts
        ever = layout.event_cols.get("version")
        idents.update(ever=(ever or layout.sequence).ident, seq=layout.sequence.ident)
        first = Fragment(SQL["first_version_counted"] if count_events else SQL["first_version"])
        joins = compose("\n" + SQL["join_create_events"], fields=Fragment(", ".join(fields)), first=first)
    elif count_events:
        joins = Fragment("\n" + SQL["join_event_counts"])
    physical = conn.execute(text(SQL["physical"]), {"rel": layout.streams.sql}).scalar()
    limit = Fragment("")
    if sel.get("limit"):  # the first N by key; without a limit the order is the snapshot's (pos)
        limit = Fragment(SQL["first_by_key"])
        params["limit"] = int(sel["limit"])
    sql = compose(SQL["candidates"], stream_type=stream_type(layout, idents), joins=joins,
                  event_count=Fragment(SQL["event_count"] if count_events else "0"),
                  pos=ON_DISK if physical else BY_KEY, conds=Fragment("\n  AND ".join(conds)), limit=limit)
    used = {name for _, name, _, _ in string.Formatter().parse(sql) if name}
    return Query(sql, {k: v for k, v in idents.items() if k in used}, params)


def _filter_sql(layout: Layout, f: Filter, n: int, idents: dict[str, Ident], params: dict[str, Any],
                fields: list[Fragment]) -> Fragment:
    """Filter ``n``'s condition; an event-data field adds its column to ``fields`` (the create events' join)."""
    column = layout.filter_columns.get(f.field)
    if column is not None:
        idents[f"f{n}"] = column.ident
        idents[f"t{n}"] = identifiers.type_of(column)
        expr, type_ = Fragment(f"s.{{f{n}}}"), Fragment(f"{{t{n}}}")
    else:
        data = layout.event_cols.get("data")
        if data is None:
            raise InvalidInput(f"--where {f.field}: not a filter column of layout {quote(layout.name)}"
                               f" ({', '.join(layout.filter_columns) or 'none'}) and the layout has no event data")
        idents["data"] = data.ident
        fields.append(compose(SQL["create_event_field"], k=Fragment(f"k{n}"), f=Fragment(f"f{n}")))
        expr, type_ = Fragment(f"c.f{n}"), Fragment("text")
        params[f"k{n}"] = f.field
    if f.op in UNARY:
        return compose(TEST, expr=expr, op=Fragment(UNARY[f.op]))
    params[f"w{n}"] = f.value
    value = Fragment(f":w{n}")
    if f.op == "in":
        return compose(ANY_OF, expr=expr, value=value, type=type_)
    return compose(COMPARE, expr=expr, op=Fragment(OPS[f.op]), value=value, type=type_)


def snapshot(conn: Connection, query: Query, snapshot_id: str) -> int:
    """Store the selection under ``snapshot_id``; returns how many streams it holds."""
    try:
        with conn.begin_nested():
            result = conn.execute(query.within(SQL["snapshot"]), {**query.params, "snapshot": snapshot_id})
    except DBAPIError as err:  # a value that does not cast (a malformed uuid, date...)
        first = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise InvalidInput(f"selection: {first}") from None
    return int(result.rowcount)


def mark_cross_references(conn: Connection, layout: Layout, snapshot_id: str) -> int:
    """Flag candidates that an event of a live, unselected stream names in a reference key."""
    data = layout.event_cols.get("data")
    if not layout.references or data is None:
        return 0
    idents = {"events": layout.events, "data": data.ident, "estream": layout.event_stream.ident}
    flag = layout.event_cols.get("archived_flag")
    live = Fragment("")
    if flag is not None:
        idents["eflag"] = flag.ident
        live = Fragment(SQL["event_live"])
    marked = 0
    for ref in layout.references:
        marked += conn.execute(render(SQL["xref"], live=live, **idents),
                               {"snapshot": snapshot_id, "ref": ref}).rowcount
    return marked
