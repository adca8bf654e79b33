"""`tidegate archive guard`: refuse (or redirect) appends to archived streams.

Marten refuses an append to an archived stream; Rillflow's redirect trigger sends it
to the archive table. Without either, an event appended to an archived stream would sit
in the hot table, silently. The guard is one generic trigger function,
``tidegate_archive_guard()`` (migration 0003, 0014 for value flags and partition trees of any depth),
attached to the layout's events table (a partitioned table's partitions, including those `tidegate
archive partition` creates later, get a clone of it);
the layout's names go into ``archive_guards`` as bound values, never into DDL text.

The trigger locks the stream row ``FOR KEY SHARE``. An archive batch holds the rows of
its streams ``FOR UPDATE``, so an append racing a batch waits for it and then sees the
committed mark (refused or redirected), and a batch waits for an append in flight and
then moves its event: nothing is left behind either way.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from tidegate.jobs.archive import layouts
from tidegate.worker import identifiers, store
from tidegate.worker.errors import InvalidInput, quote
from tidegate.worker.sql import load, render

MODES = ("reject", "redirect", "off")
SQL = load(__package__, "guard.sql")


def set_guard(engine: Engine, layout_ref: Any, mode: str, actor: str, schema: str | None = None) -> dict[str, Any]:
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}, got {quote(mode)}")
    with engine.begin() as conn:
        layout = layouts.resolve(conn, layouts.for_cli(conn, layout_ref, schema)[0])
        conn.execute(render(SQL["drop_trigger"], events=layout.events))
        conn.execute(text(SQL["forget"]), {"t": layout.events.sql})
        if mode != "off":
            flag = layout.col("archived_flag")
            if flag is not None and layout.stream_flag_is_value:  # retention_class: archived_at tells
                flag = None
            mark = flag if flag is not None else layout.col("archived_at")
            assert mark is not None
            event_flag = layout.event_cols.get("archived_flag") if layout.flag else None
            conn.execute(text(SQL["upsert"]), {
                "events_table": layout.events.sql, "mode": mode, "layout": layout.name,
                "streams_table": layout.streams.sql, "stream_key": layout.key.ident.name,
                "key_type": identifiers.type_of(layout.key).sql, "mark_column": mark.ident.name,
                "mark_is_flag": flag is not None, "event_stream": layout.event_stream.ident.name,
                "archive_table": layout.archive.sql if layout.archive is not None and event_flag is None else None,
                "event_flag": event_flag.ident.name if event_flag is not None else None, "by": actor,
                "event_flag_value": layout.event_flag_values[0] if event_flag is not None else None,
            })
            conn.execute(render(SQL["create_trigger"], events=layout.events))
        store.audit(conn, actor, "archive_guard", None, {"mode": mode, "events_table": layout.events.name})
    return {"layout": layout.name, "events_table": layout.events.name, "mode": mode}
