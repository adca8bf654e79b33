"""`tidegate watch-deletions`: archive a stream when a deletion event is appended to it.

Seed 002's archive-on-deletion service, as a poller over the events table. ``--map
UserDeleted=user`` means: an event of type ``UserDeleted`` appended to a stream of type
``user`` gets that stream archived (``--map UserDeleted=*`` for any stream type).

Each poll is one transaction: it locks the watcher's cursor row (two watchers of one
name take turns), reads deletion events after ``cursor - lookback`` in sequence order,
records each in ``archive_watch_seen`` (primary key: watcher, sequence) and enqueues
one archive_range job for the streams it had not seen before, then moves the cursor.
Enqueue, seen-marks and cursor commit together, so a watcher killed at any point
neither misses nor doubles a deletion when it restarts. The rescan behind the cursor
(``--lookback`` sequence numbers, default 10,000) catches events whose transaction
committed after a later sequence number had been read; the seen table drops the ones
already handled.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from tidegate.jobs.archive import layouts, selection
from tidegate.worker import store
from tidegate.worker.errors import InvalidInput, quote
from tidegate.worker.sql import load, render

SQL = load(__package__, "watch.sql")



def parse_map(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    found = {}
    for item in items:
        event_type, sep, stream_type = item.partition("=")
        if not sep or not event_type.strip() or not stream_type.strip():
            raise InvalidInput(f"--map {quote(item)}: expected EVENT_TYPE=STREAM_TYPE (or EVENT_TYPE=*)")
        found[event_type.strip()] = stream_type.strip()
    if not found:
        raise InvalidInput("give at least one --map EVENT_TYPE=STREAM_TYPE")
    return found


def poll(engine: Engine, name: str, layout_name: str, mapping: dict[str, str], *, owner: str, actor: str,
         lookback: int = 10_000, max_events: int = 10_000, batch_size: int = 500,
         schema: str | None = None) -> dict[str, Any]:
    """One pass; returns what it did: events seen, streams enqueued, the job id, the cursor. ``layout_name``:
    a shipped or registered layout, which the jobs it enqueues name (with ``schema``, their --schema)."""
    with engine.begin() as conn:
        layout = layouts.resolve(conn, layouts.with_schema(layouts.named(conn, layout_name), schema))
        etype = layout.event_cols.get("type")
        if etype is None:
            raise InvalidInput(f"layout {quote(layout.name)} names no events type column: cannot spot deletion events")
        conn.execute(text(SQL["add_cursor"]), {"n": name, "l": layout.name})
        last = int(conn.execute(text(SQL["lock_cursor"]), {"n": name}).scalar_one())
        idents = {"seq": layout.sequence.ident, "estream": layout.event_stream.ident, "etype": etype.ident,
                  "events": layout.events, "streams": layout.streams, "key": layout.key.ident}
        stream_type = selection.stream_type(layout, idents)
        top = conn.execute(render(SQL["max_seq"], seq=layout.sequence.ident, events=layout.events)).scalar() or 0
        rows = conn.execute(render(SQL["deletions"], stream_type=stream_type, **idents),
                            {"after": max(0, last - lookback), "types": list(mapping), "max": max_events}).all()
        wanted = [r for r in rows if mapping[r.event_type] in ("*", r.stream_type)]
        fresh = conn.execute(text(SQL["seen"]), {"name": name, "seqs": [r.seq for r in wanted],
                                                 "sids": [r.stream_id for r in wanted]}).all() if wanted else []
        streams = sorted({r.stream_id for r in fresh})
        job_id = None
        if streams:
            kinds = sorted({r.event_type for r in wanted if r.seq in {f.seq for f in fresh}})
            payload = {"layout": layout_name, "streams": streams,
                       "batch_size": batch_size, "owner": owner, "reason": "deleted: " + ", ".join(kinds)}
            if schema is not None:
                payload["schema"] = schema
            job_id, _ = store.enqueue(conn, "archive_range", "default", payload, priority=0, max_attempts=5,
                                      run_after=None)
            store.audit(conn, actor, "enqueue", job_id, {"type": "archive_range", "watcher": name,
                                                         "streams": len(streams)})
            conn.execute(text(SQL["seen_by_job"]), {"j": job_id, "n": name, "s": [f.seq for f in fresh]})
        cursor = max(last, rows[-1].seq) if len(rows) >= max_events else max(last, int(top))
        conn.execute(text(SQL["move_cursor"]), {"c": cursor, "n": name})
    return {"seen": len(wanted), "new_streams": len(streams), "job_id": job_id, "cursor": cursor}
