"""Handlers that break the contract, for the dry run's tests (tests/test_rehearsal.py): they commit, wait
on a lock, or hang. A deployment loads them like any handler module ($TIDEGATE_HANDLERS)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, text

from tidegate.jobs.handlers import ItemHandler

BUMP = text("UPDATE concelier.advisory_observations SET version = version + 100 WHERE id = ANY(:ids)")


class _CommitsInWrite(ItemHandler):
    """Writes its batch, then commits it: the contract forbids it, and a dry run must keep nothing."""

    def transform(self, row: Mapping[str, Any]) -> Iterable[Any]:
        return [row["id"]]

    def write(self, conn: Connection, records: list[Any]) -> None:
        conn.execute(BUMP, {"ids": records})
        conn.commit()
        conn.execute(BUMP, {"ids": records})  # after its commit, in a transaction of its own


commits_in_write = _CommitsInWrite()


def commit_per_row(conn: Connection, row: Mapping[str, Any]) -> None:
    """A per-row function that writes, sends COMMIT itself and writes again."""
    conn.execute(BUMP, {"ids": [row["id"]]})
    conn.exec_driver_sql("COMMIT")
    conn.execute(BUMP, {"ids": [row["id"]]})


def update_row(conn: Connection, row: Mapping[str, Any]) -> None:
    """Writes its row: waits when another session holds the row's lock."""
    conn.execute(BUMP, {"ids": [row["id"]]})


def hang(conn: Connection, row: Mapping[str, Any]) -> None:
    """Writes its row, then hangs in Python, where no statement can be cancelled."""
    conn.execute(BUMP, {"ids": [row["id"]]})
    time.sleep(3600)
