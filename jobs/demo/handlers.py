"""The demo ETL of the backfill runbook: hero_snapshots -> user_troops.

Idempotent (an upsert where the newest snapshot of a user wins), so a batch
that is re-run after a crash changes nothing, and the result does not depend
on the order in which slices finish.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, text

from tidegate.jobs.handlers import BadItem, ItemHandler, register


class ParseError(BadItem):
    error_type = "PARSE_ERROR"


# The batch travels as one JSON document: encoding it is one C call, where
# binding seven typed arrays made psycopg adapt 70,000 values one by one.
UPSERT = text(
    """
    INSERT INTO user_troops AS ut (user_id, troop_id, level, amount, ascension, snapshot_id, snapshot_at)
    SELECT r.* FROM json_to_recordset(CAST(:rows AS json)) AS r(user_id bigint, troop_id int, level int,
                    amount int, ascension int, snapshot_id bigint, snapshot_at timestamptz)
    ON CONFLICT (user_id, troop_id) DO UPDATE
    SET level = EXCLUDED.level, amount = EXCLUDED.amount, ascension = EXCLUDED.ascension,
        snapshot_id = EXCLUDED.snapshot_id, snapshot_at = EXCLUDED.snapshot_at
    WHERE (ut.snapshot_at, ut.snapshot_id) < (EXCLUDED.snapshot_at, EXCLUDED.snapshot_id)
    """
)
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
    writes = ("user_troops",)
    derived = {"table": "user_troops", "key": ["user_id", "troop_id"]}

    def transform(self, row: Mapping[str, Any]) -> Iterable[tuple[Any, ...]]:
        raw = row["raw"]
        profile = raw.get("ProfileData") if isinstance(raw, dict) else None
        troops = profile.get("Troops") if isinstance(profile, dict) else None
        if not isinstance(troops, list):
            raise ParseError(f"ProfileData.Troops is {type(troops).__name__}, expected a list")
        at = row["created_at"].isoformat()  # once per snapshot; the batch is sent as JSON
        return [
            (row["user_id"], _number(t, "Id"), _number(t, "Level"), _number(t, "Count"),
             int(t.get("Ascension") or 0), row["id"], at, row["created_at"])
            for t in troops
            if isinstance(t, dict) or _bad(t)
        ]

    def write(self, conn: Connection, records: list[tuple[Any, ...]]) -> None:
        # one row per (user, troop): the newest snapshot wins inside the batch too
        newest: dict[tuple[int, int], tuple[Any, ...]] = {}
        for r in records:
            seen = newest.get((r[0], r[1]))
            if seen is None or (r[7], r[5]) > (seen[7], seen[5]):
                newest[(r[0], r[1])] = r
        rows = [dict(zip(FIELDS, r[:7], strict=True)) for r in newest.values()]
        conn.execute(UPSERT, {"rows": json.dumps(rows)})


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
            elif (have.snapshot_at, have.snapshot_id) < (r[7], r[5]):
                problems.append(f"user {user} troop {troop}: from an older snapshot than {r[5]}")
            elif have.snapshot_id == r[5] and (have.level, have.amount, have.ascension) != r[2:5]:
                problems.append(f"user {user} troop {troop}: {(have.level, have.amount, have.ascension)}"
                                f" but snapshot {r[5]} says {r[2:5]}")
        return problems


DERIVED_ROW = text("SELECT level, amount, ascension, snapshot_id, snapshot_at FROM user_troops"
                   " WHERE user_id = :user_id AND troop_id = :troop_id")


def _bad(troop: object) -> bool:
    raise ParseError(f"troop entry is {type(troop).__name__}, expected an object")


HERO_TROOPS = register(HeroTroops())
