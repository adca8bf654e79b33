"""What a selection holds (dry run, discover), what a run did (summary), and archive status.

Everything here reads; the dry run plans the job in a transaction that is rolled back,
so the report is exactly what a worker would snapshot at that moment and nothing is
written.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

from tidegate.jobs.archive import layouts, selection
from tidegate.jobs.archive.archive_range import ARCHIVE, UNARCHIVE
from tidegate.worker import identifiers
from tidegate.worker.errors import InvalidInput, NotFound
from tidegate.worker.sql import Fragment, load, render

SQL = load(__package__, "report.sql")


@dataclass
class Preview:
    by_type: list[dict[str, Any]]
    params: dict[str, Any]

    @property
    def totals(self) -> dict[str, int]:
        keys = ("streams", "create_only", "with_updates", "events", "cross_referenced")
        return {k: sum(int(r[k]) for r in self.by_type) for k in keys}


def preview(engine: Engine, payload: dict[str, Any], *, unarchive: bool = False,
            csv_path: Path | None = None, spec: dict[str, Any] | None = None) -> Preview:
    """Plan the job and report its selection, then roll everything back (``spec``: the user's layout file)."""
    kind = UNARCHIVE if unarchive else ARCHIVE
    with engine.connect() as conn:
        try:
            plan = kind.plan(conn, payload, count_events=True, spec=spec)
            snap = {"snapshot": plan.params["snapshot"]}
            rows = [dict(r._mapping) for r in conn.execute(text(SQL["by_type"]), snap)]
            if csv_path is not None:
                write_csv(conn, plan.params, csv_path)
        finally:
            conn.rollback()
    return Preview(rows, plan.params)


def render_preview(pv: Preview, verb: str) -> str:
    head = f"{'stream type':<28}{'streams':>10}{'create-only':>13}{'with updates':>14}{'events':>12}{'x-ref':>8}"
    lines = [head, "-" * len(head)]
    for r in [*pv.by_type, {"stream_type": "total", **pv.totals}]:
        lines.append(f"{str(r['stream_type'])[:27]:<28}{r['streams']:>10,}{r['create_only']:>13,}"
                     f"{r['with_updates']:>14,}{r['events']:>12,}{r['cross_referenced']:>8,}")
    lines.append("cross-reference check: " + xref_check(pv))
    lines.append(f"would {verb} {pv.totals['streams']:,} stream(s) with {pv.totals['events']:,} event(s)"
                 f" in batches of {pv.params['batch_size']} stream(s)")
    return "\n".join(lines)


NOT_CHECKED = "not checked: the layout declares no references"


def xref_check(pv: Preview) -> str:
    """The cross-reference check's outcome, in words: a layout without references checks nothing."""
    if not pv.params["layout_spec"]["events"].get("references"):
        return NOT_CHECKED
    xref = pv.totals["cross_referenced"]
    if xref:
        return f"{xref} candidate(s) are referenced by live streams: they are skipped unless --force"
    return "no live stream references a candidate"


def csv_fields(params: dict[str, Any]) -> list[str]:
    """The create-event data keys the selection's --where filters name (DataSource...): the CSV's extra
    columns, so a reviewer sees the value each stream was selected by (seed 000's data_source)."""
    columns = set(params["layout_spec"]["streams"].get("filter_columns", []))
    keys = [f.field for f in selection.check_filters(params.get("where")) if f.field not in columns]
    return list(dict.fromkeys(keys))


def column_name(key: str) -> str:
    """A data key as a CSV column: snake_case (DataSource -> data_source)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower()


def write_csv(conn: Connection, params: dict[str, Any], path: Path) -> None:
    """The snapshot's candidates, in seq order, with the create event's value of each --where data key."""
    fields = csv_fields(params)
    fixed = ["seq", "stream_id", "stream_type", "events", "cross_referenced"]
    snap = {"snapshot": params["snapshot"]}
    if fields:
        layout = layouts.resolve(conn, params["layout_spec"])
        data = layout.event_cols["data"]  # a data key filter needs it (selection.candidates)
        first = layout.event_cols.get("version") or layout.sequence  # the create event: the lowest version
        sql = render(SQL["ids_with_fields"], events=layout.events, data=data.ident,
                     estream=layout.event_stream.ident, etype=identifiers.type_of(layout.event_stream),
                     first=first.ident, seq=layout.sequence.ident)
        rows = conn.execute(sql, {**snap, "keys": fields})
    else:
        rows = conn.execute(text(SQL["ids"]), snap)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(fixed + [c if c not in fixed else "data_" + c for c in map(column_name, fields)])
        for r in rows:
            writer.writerow([*r[:5], *(r[5] if fields else [])])


def types_present(conn: Connection, spec: dict[str, Any], type_: str) -> list[str] | None:
    """None when some stream (hot or archived) has type ``type_``; else the types present (the first 30)."""
    layout = layouts.resolve(conn, spec)
    stype = layout.col("type")
    if stype is None:
        return None  # selection.candidates has refused --type already
    idents = {"streams": layout.streams, "stype": stype.ident}
    if conn.execute(render(SQL["type_exists"], **idents), {"type": type_}).scalar():
        return None
    return list(conn.execute(render(SQL["types_present"], **idents), {"limit": 30}).scalars())


# -- after a run ---------------------------------------------------------------------



def summary(engine: Engine, job_id: str) -> dict[str, Any]:
    """attempted, archived, skipped, failed, elapsed, and the candidates still left now."""
    with engine.connect() as conn:
        row = conn.execute(text(SQL["summary"]), {"job_id": job_id}).first()
        if row is None:
            raise NotFound(f"no archive job {job_id} (not planned yet, or not an archive job)")
        if row.kind not in ("archive_range", "unarchive_range"):
            raise InvalidInput(f"job {job_id} is a {row.kind} job, not an archive job")
        unarchive = row.kind == "unarchive_range"
        params = {k: v for k, v in row.params.items() if k not in ("snapshot", "limit")}
        remaining = recount(conn, params, unarchive)
    return {"job_id": job_id, "kind": row.kind, "status": row.status, "attempted": int(row.total_estimate or 0),
            "done_so_far": int(row.processed_count), "archived" if not unarchive else "unarchived": int(row.moved),
            "skipped": int(row.skipped), "failed": int(row.error_count), "events_moved": int(row.events),
            "elapsed_seconds": round(row.elapsed.total_seconds(), 3), "remaining_candidates": remaining}


def recount(conn: Connection, params: dict[str, Any], unarchive: bool) -> int:
    kind = UNARCHIVE if unarchive else ARCHIVE
    p = kind.selection(conn, params, spec=params["layout_spec"])  # the layout the job was planned with
    layout = layouts.resolve(conn, p["layout_spec"])
    query = selection.candidates(conn, layout, p, unarchive=unarchive, count_events=False,
                                 marked=p.get("phase") == "move")
    return int(conn.execute(query.within(SQL["recount"]), query.params).scalar_one())


def verify(conn: Connection, job_id: str, kind: str, params: dict[str, Any],
           processed: int) -> list[tuple[str, bool, str, bool]]:
    """`tidegate verify` of an archive job, as the seed's checks between stages: (check, ok, detail, checked)."""
    unarchive = kind == "unarchive_range"
    action = "unarchive" if unarchive else "archive"
    layout = layouts.resolve(conn, params["layout_spec"])  # the layout (and schema) the job was planned with
    audited = conn.execute(text(SQL["verify_audited"]), {"job_id": job_id}).one()
    found = [("audit vs processed_count", int(audited.streams) == processed,
              f"{audited.streams} stream(s) audited ({audited.moved} {action}d, {audited.skipped} skipped),"
              f" processed_count {processed}", True)]
    idents: dict[str, Any] = {"streams": layout.streams, "key": layout.key.ident, "estream": layout.event_stream.ident}
    state = selection.state_sql(layout, idents, archived=not unarchive)
    flag = layout.event_cols.get("archived_flag") if layout.flag else None
    archived_value, hot_value = layout.event_flag_values
    if flag is not None:
        idents.update(src=layout.events, eflag=flag.ident, eftype=identifiers.type_of(flag))
        where = Fragment(SQL["verify_flag_is"])
    else:
        assert layout.archive is not None
        idents["src"] = layout.archive if unarchive else layout.events
        where = Fragment("")
    if params.get("phase") == "mark":  # --mark-only: the events stay where they are until --move-marked
        found.append(("no event left behind", True, "not checked: a --mark-only job moves no event", False))
    else:
        left = int(conn.execute(render(SQL["verify_left_behind"], state=state, flag_is=where, **idents),
                                {"job_id": job_id, "action": action,
                                 "flag_before": archived_value if unarchive else hot_value}).scalar_one())
        found.append(("no event left behind", left == 0,
                      f"{left} event(s) of the streams {action}d by this job (and still so) are still"
                      f" {'archived' if unarchive else 'hot'}", True))
    data = layout.event_cols.get("data")
    if unarchive:
        found.append(("cross-references", True, "not checked: unarchiving breaks no reference", False))
    elif not layout.references or data is None:
        found.append(("cross-references", True, NOT_CHECKED, False))
    else:
        xref = {"events": layout.events, "data": data.ident}
        live = Fragment("")
        if flag is not None:
            xref.update(eflag=flag.ident, eftype=identifiers.type_of(flag))
            live = Fragment(SQL["verify_event_live"])
        refs = sum(int(conn.execute(render(SQL["verify_xref"], live=live, **xref),
                                    {"job_id": job_id, "ref": ref, "flag_hot": hot_value}).scalar_one())
                   for ref in layout.references)
        found.append(("cross-references", refs == 0,
                      f"{refs} stream(s) archived by this job are referenced by live events"
                      f" ({', '.join(layout.references)})", True))
    return found


# -- archive status --------------------------------------------------------------------


def status(engine: Engine, layout_ref: str, schema: str | None = None) -> dict[str, Any]:
    """Hot vs archived streams and events per stream type, and the tables' sizes."""
    with engine.connect() as conn:
        layout = layouts.resolve(conn, layouts.for_cli(conn, layout_ref, schema)[0])
        idents = {"streams": layout.streams, "key": layout.key.ident, "estream": layout.event_stream.ident}
        archived = selection.state_sql(layout, idents, archived=True)
        stream_type = selection.stream_type(layout, idents)
        counts = Fragment(SQL["event_counts"])
        if layout.archive is not None:
            counts = Fragment(SQL["event_counts_with_archive"])
            idents["archive"] = layout.archive
        idents["src"] = layout.events
        sql = render(SQL["status"], stream_type=stream_type, archived=archived, event_counts=counts, **idents)
        rows = [dict(r._mapping) for r in conn.execute(sql)]
        tables = [layout.streams, layout.events, *([layout.archive] if layout.archive else []),
                  *[t for m in layout.read_models for t in (m.table, m.archive)], *[d.table for d in layout.documents]]
        sizes = {}
        partitions = []
        for t in tables:
            size = conn.execute(text(SQL["size"]), {"rel": t.sql}).one()
            sizes[t.name] = {"bytes": int(size.bytes), "rows_estimate": max(0, int(size.rows or 0))}
            partitions += [{"table": t.name, "partition": p.name, "parent": p.parent, "level": p.level,
                            "leaf": p.leaf, "bound": p.bound, "bytes": int(p.bytes), "rows_estimate": int(p.rows)}
                           for p in conn.execute(text(SQL["partitions"]), {"rel": t.sql})]
        guard = conn.execute(text(SQL["guard"]), {"rel": layout.events.sql}).scalar()
        conn.rollback()
    return {"layout": layout.name, "strategy": layout.strategy, "by_type": rows, "tables": sizes,
            "partitions": partitions, "guard": guard or "off"}
