"""The demo ETL of the backfill runbook: hero_snapshots -> user_troops.

Idempotent (an upsert where the newest snapshot of a user wins), so a batch
that is re-run after a crash changes nothing, and the result does not depend
on the order in which slices finish.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, text

from tidegate.jobs.handlers import BadItem, ItemHandler, register


class ParseError(BadItem):
    error_type = "PARSE_ERROR"


FIELDS = ("user_id", "troop_id", "level", "amount", "ascension", "snapshot_id", "snapshot_at")


def _number(troop: Mapping[str, Any], field: str) -> int:
    value = troop.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParseError(f"troop {troop.get('Id')!r}: {field} is {value!r}, expected a number")
    return int(value)


class HeroTroops(ItemHandler):
    name = "hero_troops"
    source = "hero_snapshots"
    key = "created_at"
    derived = {"table": "user_troops", "key": ["user_id", "troop_id"]}
    # the built-in bulk write: the batch's records COPYed in, one upsert where the newest snapshot of a
    # (user, troop) wins, in the batch and over the row already there
    table = "user_troops"
    columns = FIELDS
    conflict = ("user_id", "troop_id")
    newer_by = ("snapshot_at", "snapshot_id")

    def transform(self, row: Mapping[str, Any]) -> Iterable[tuple[Any, ...]]:
        raw = row["raw"]
        profile = raw.get("ProfileData") if isinstance(raw, dict) else None
        troops = profile.get("Troops") if isinstance(profile, dict) else None
        if not isinstance(troops, list):
            raise ParseError(f"ProfileData.Troops is {type(troops).__name__}, expected a list")
        user, snapshot, at = row["user_id"], row["id"], row["created_at"]
        out = []
        for t in troops:
            if not isinstance(t, dict):
                raise ParseError(f"troop entry is {type(t).__name__}, expected an object")
            i, level, count = t.get("Id"), t.get("Level"), t.get("Count")
            if not (type(i) is int and type(level) is int and type(count) is int):  # the common case, checked fast
                i, level, count = _number(t, "Id"), _number(t, "Level"), _number(t, "Count")
            out.append((user, i, level, count, int(t.get("Ascension") or 0), snapshot, at))
        return out

    def check_row(self, conn: Connection, row: Mapping[str, Any]) -> list[str]:
        """Each troop of the snapshot is in user_troops, from this snapshot with its values, or from a newer one."""
        problems = []
        mine: dict[tuple[int, int], tuple[Any, ...]] = {}
        for r in self.transform(row):
            mine.setdefault((r[0], r[1]), r)
        for (user, troop), r in mine.items():
            have = conn.execute(DERIVED_ROW, {"user_id": user, "troop_id": troop}).first()
            if have is None:
                problems.append(f"user {user} troop {troop}: missing")
            elif (have.snapshot_at, have.snapshot_id) < (r[6], r[5]):
                problems.append(f"user {user} troop {troop}: from an older snapshot than {r[5]}")
            elif have.snapshot_id == r[5] and (have.level, have.amount, have.ascension) != r[2:5]:
                problems.append(f"user {user} troop {troop}: {(have.level, have.amount, have.ascension)}"
                                f" but snapshot {r[5]} says {r[2:5]}")
        return problems


DERIVED_ROW = text("SELECT level, amount, ascension, snapshot_id, snapshot_at FROM user_troops"
                   " WHERE user_id = :user_id AND troop_id = :troop_id")


HERO_TROOPS = register(HeroTroops())
