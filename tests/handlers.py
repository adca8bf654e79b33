"""Handlers a user might write as module:function (imported by worker subprocesses)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, text

from jobs.demo.handlers import HeroTroops
from jobs.handlers import ItemHandler


def record(conn: Connection, row: Mapping[str, Any]) -> None:
    """Log the key; keys divisible by 7 are bad items."""
    if row["k"] % 7 == 0:
        raise ValueError(f"k={row['k']} is divisible by 7")
    conn.execute(text("INSERT INTO processed_log (k) VALUES (:k)"), {"k": row["k"]})


not_a_handler = 42


class _FailEvery(ItemHandler):
    """Logs each key; every ``every``-th key is a bad item (an error rate of 1/every)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def transform(self, row: Mapping[str, Any]) -> Iterable[Any]:
        if row["k"] % self.every == 0:
            raise ValueError(f"k={row['k']} is a bad item")
        return [{"k": row["k"]}]

    def write(self, conn: Connection, records: list[Any]) -> None:
        conn.execute(text("INSERT INTO processed_log (k) VALUES (:k)"), records)


fail_5_percent = _FailEvery(20)
fail_01_percent = _FailEvery(1000)
log_all = _FailEvery(10**18)


class _OffByOneTroops(HeroTroops):
    """A bug a canary should catch: every level written one too high."""

    def write(self, conn: Connection, records: list[Any]) -> None:
        super().write(conn, [(r[0], r[1], r[2] + 1, *r[3:]) for r in records])


off_by_one_troops = _OffByOneTroops()


def copy_row_id(conn: Connection, row: Mapping[str, Any]) -> None:
    """Copy a source row's (tbl, id) into `derived` (tests/test_key_types.py)."""
    conn.execute(text("INSERT INTO derived (tbl, id) VALUES (:tbl, :id)"), {"tbl": row["tbl"], "id": row["id"]})
