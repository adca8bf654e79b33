"""`tidegate archive partition`: monthly partitions of an events table partitioned by its flag value.

Rillflow's partitioned backend (seed 004): ``events`` is LIST-partitioned on ``retention_class``
(``events_hot`` holds 'hot', ``events_cold`` 'cold'), each RANGE-partitioned by month on a timestamp
(``events_hot_2025_01``, with a default partition). Archiving sets the flag, which moves a row from
the hot tree to the cold one. This command keeps that tree:

* ``--retention hot --month 2025-01-01`` creates ``events_hot_2025_01`` ahead of time; again, it says
  it exists (idempotent);
* ``--detach`` / ``--drop`` takes an exhausted month out, only after proving it empty with the
  partition and its parent locked (no row can arrive meanwhile): a partition that holds rows is
  refused (exit 4) and nothing changes.

It is an operator's command on the user's tables, never a job: no payload reaches it. Every name is
the catalog's (the layout's events table, the value's partition found by its bound) or built by
:func:`worker.identifiers.new_partition` from the catalog's name and the checked month; the
retention value must be one of the layout's two, and the month's bounds reach the DDL as
transaction-local settings, never as text.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from tidegate.jobs.archive import layouts
from tidegate.jobs.archive.layouts import Layout
from tidegate.worker import identifiers, store
from tidegate.worker.errors import IllegalTransition, InvalidInput, quote
from tidegate.worker.identifiers import Ident
from tidegate.worker.sql import load, render

SQL = load(__package__, "partition.sql")
RANGE_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
LOCK_TIMEOUT_MS = 5_000  # a busy table: give up rather than queue every append behind the DDL
SHOWN_ROWS = 1_000  # rows counted when refusing a partition that is not empty


def month_start(value: str) -> tuple[dt.date, dt.date]:
    """``2025-01-01`` -> (2025-01-01, 2025-02-01); anything but the first of a month is refused."""
    try:
        day = dt.date.fromisoformat(value.strip()) if isinstance(value, str) and len(value) <= 40 else None
    except ValueError:
        day = None
    if day is None:
        raise InvalidInput(f"--month {quote(value)}: expected a date YYYY-MM-01, e.g. 2025-01-01")
    if day.day != 1:
        raise InvalidInput(f"--month {day.isoformat()} is not the first of a month: partitions are whole months"
                           f" (did you mean {dt.date(day.year, day.month, 1).isoformat()}?)")
    if day.year >= 9999 and day.month == 12:
        raise InvalidInput(f"--month {day.isoformat()}: no month after it")
    after = dt.date(day.year + 1, 1, 1) if day.month == 12 else dt.date(day.year, day.month + 1, 1)
    return day, after


def _tree(conn: Connection, layout: Layout, retention: str) -> tuple[Ident, Ident]:
    """The value's partition (``events_hot``) and its RANGE key's type, every check against the catalog."""
    archived, hot = layout.event_flag_values
    flag = layout.event_cols.get("archived_flag")
    if flag is None or layout.event_flag_values == layouts.BOOLEAN:
        raise InvalidInput(f"layout {quote(layout.name)}: its events flag is not a value (archived_value/hot_value,"
                           " e.g. retention_class 'cold'/'hot'), so there is no partition per value to maintain")
    if retention not in (hot, archived):
        raise InvalidInput(f"--retention {quote(retention)}: layout {quote(layout.name)} knows {hot!r} and"
                           f" {archived!r}")
    root = conn.execute(text(SQL["partitioning"]), {"rel": layout.events.sql}).first()
    if root is None or root.strategy != "l" or root.columns != 1 or root.key != flag.ident.name:
        raise InvalidInput(f"events table {quote(layout.events.name)} is not LIST-partitioned on"
                           f" {quote(flag.ident.name)} (the partitioned backend's schema: seed 004's 0005 migration)")
    found = conn.execute(text(SQL["value_partition"]), {"events": layout.events.sql, "value": retention}).first()
    if found is None:
        raise InvalidInput(f"events table {quote(layout.events.name)} has no partition FOR VALUES IN"
                           f" ({retention!r}): create it first (CREATE TABLE ... PARTITION OF ... PARTITION BY RANGE)")
    parent = identifiers.table(conn, f"{found.schema}.{found.name}", what="value partition")
    sub = conn.execute(text(SQL["partitioning"]), {"rel": parent.sql}).first()
    if sub is None or sub.strategy != "r" or sub.columns != 1:
        raise InvalidInput(f"partition {quote(parent.name)} is not RANGE-partitioned on one timestamp column:"
                           " there are no monthly partitions to maintain")
    key = identifiers.column(conn, parent, sub.key, what="range partition key")
    if key.type not in RANGE_TYPES:
        raise InvalidInput(f"partition {quote(parent.name)} is RANGE-partitioned on {quote(sub.key)} of type"
                           f" {key.type}: monthly partitions need a timestamp or a date")
    return parent, identifiers.type_of(key)


def maintain(engine: Engine, layout_ref: str, retention: str, month: str, action: str, actor: str,
             schema: str | None = None) -> dict[str, Any]:
    """``action``: create, detach or drop the month's partition under the retention value's partition;
    ``schema``: the schema of the layout's bare table names (--schema: a tenant's store)."""
    if action not in ("create", "detach", "drop"):
        raise InvalidInput(f"action must be create, detach or drop, got {quote(action)}")
    if not isinstance(retention, str) or not layouts.FLAG_VALUE.fullmatch(retention):
        raise InvalidInput(f"--retention {quote(retention)}: a retention class is a lower-case word (hot, cold)")
    lo, hi = month_start(month)
    with engine.begin() as conn:
        layout = layouts.resolve(conn, layouts.for_cli(conn, layout_ref, schema)[0])
        parent, ptype = _tree(conn, layout, retention)
        part = identifiers.new_partition(conn, parent, f"{lo:%Y_%m}")
        state = conn.execute(text(SQL["found"]), {"rel": part.sql, "parent": parent.sql}).one()
        conn.execute(text(SQL["bounds"]), {"lo": f"{lo.isoformat()} 00:00:00+00", "hi": f"{hi.isoformat()} 00:00:00+00",
                                           "lock_timeout": f"{LOCK_TIMEOUT_MS}ms"})
        done = {"layout": layout.name, "retention": retention, "month": lo.isoformat(), "partition": part.name,
                "parent": parent.name}
        if state.exists and not state.attached:
            raise IllegalTransition(f"{quote(part.name)} exists but is not a partition of {quote(parent.name)}"
                                    " (detached earlier?): nothing changed")
        if action == "create":
            if state.exists:
                return {**done, "done": "exists", "bound": state.bound}
            _ddl(conn, render(SQL["create_month"], part=part, parent=parent, ptype=ptype), part)
        else:
            if not state.exists:
                raise IllegalTransition(f"no partition {quote(part.name)} under {quote(parent.name)}: nothing changed")
            conn.execute(render(SQL["lock_parent"], parent=parent))
            conn.execute(render(SQL["lock_part"], part=part))
            rows = int(conn.execute(render(SQL["rows_in"], part=part), {"limit": SHOWN_ROWS}).scalar_one())
            if rows:
                more = "+" if rows >= SHOWN_ROWS else ""
                raise IllegalTransition(f"partition {quote(part.name)} is not empty ({rows:,}{more} rows): refused,"
                                        " nothing changed. Archive or move its rows first")
            _ddl(conn, render(SQL["detach"], parent=parent, part=part), part)
            if action == "drop":
                _ddl(conn, render(SQL["drop"], part=part), part)
        store.audit(conn, actor, f"archive_partition_{action}", None, done)
    return {**done, "done": {"create": "created", "detach": "detached", "drop": "dropped"}[action]}


def _ddl(conn: Connection, statement: Any, part: Ident) -> None:
    """Run one DDL statement; the server's refusal (a default partition holding the month's rows, a lock
    not granted in time) is the operator's to resolve: exit 4, and the transaction rolls back whole."""
    try:
        with conn.begin_nested():
            conn.execute(statement)
    except DBAPIError as err:
        first = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise IllegalTransition(f"partition {quote(part.name)}: {first}; nothing changed") from None
