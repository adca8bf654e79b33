"""Handlers for the Citus tests (tests/test_citus.py), loaded by worker subprocesses via $TIDEGATE_HANDLERS."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, text

from tidegate.jobs.handlers import ItemHandler


class _TroopCount(ItemHandler):
    """hero_snapshots -> one (user_id, snapshot_id, troops) row per snapshot, troops the length of its
    ProfileData.Troops; a snapshot whose Troops is not an array is a bad item. The target has no unique
    key: a batch applied twice shows as doubled rows, a lost one as missing rows."""

    def __init__(self, table: str) -> None:
        self.table = table  # one of the constant names below, never input

    def transform(self, row: Mapping[str, Any]) -> Iterable[Any]:
        troops = (row["raw"].get("ProfileData") or {}).get("Troops")
        if not isinstance(troops, list):
            raise ValueError(f"snapshot {row['id']}: ProfileData.Troops is not an array")
        return [{"user_id": row["user_id"], "snapshot_id": row["id"], "troops": len(troops)}]

    def write(self, conn: Connection, records: list[Any]) -> None:
        conn.execute(text(f"INSERT INTO {self.table} (user_id, snapshot_id, troops)"  # noqa: S608 - constant
                          " VALUES (:user_id, :snapshot_id, :troops)"), records)


troop_log = _TroopCount("troop_log")  # distributed, colocated with hero_snapshots
troop_ref = _TroopCount("troop_ref")  # a reference table
troop_other = _TroopCount("troop_other")  # distributed on another column, not colocated
