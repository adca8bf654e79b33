"""The demo ETL of the backfill runbook: hero_snapshots -> user_troops.

Idempotent (an upsert where the newest snapshot of a user wins), so a batch
that is re-run after a crash changes nothing, and the result does not depend
on the order in which slices finish.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, text

from jobs.handlers import ItemHandler, register


class ParseError(ValueError):
    error_type = "PARSE_ERROR"


UPSERT = text(
    """
    INSERT INTO user_troops AS ut (user_id, troop_id, level, amount, ascension, snapshot_id, snapshot_at)
    SELECT * FROM unnest(CAST(:user_id AS bigint[]), CAST(:troop_id AS int[]), CAST(:level AS int[]),
                         CAST(:amount AS int[]), CAST(:ascension AS int[]), CAST(:snapshot_id AS bigint[]),
                         CAST(:snapshot_at AS timestamptz[]))
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

    def transform(self, row: Mapping[str, Any]) -> Iterable[tuple[Any, ...]]:
        raw = row["raw"]
        profile = raw.get("ProfileData") if isinstance(raw, dict) else None
        troops = profile.get("Troops") if isinstance(profile, dict) else None
        if not isinstance(troops, list):
            raise ParseError(f"ProfileData.Troops is {type(troops).__name__}, expected a list")
        return [
            (row["user_id"], _number(t, "Id"), _number(t, "Level"), _number(t, "Count"),
             int(t.get("Ascension") or 0), row["id"], row["created_at"])
            for t in troops
            if isinstance(t, dict) or _bad(t)
        ]

    def write(self, conn: Connection, records: list[tuple[Any, ...]]) -> None:
        # one row per (user, troop): the newest snapshot wins inside the batch too
        newest: dict[tuple[int, int], tuple[Any, ...]] = {}
        for r in records:
            seen = newest.get((r[0], r[1]))
            if seen is None or (r[6], r[5]) > (seen[6], seen[5]):
                newest[(r[0], r[1])] = r
        columns = list(zip(*newest.values(), strict=True))
        conn.execute(UPSERT, dict(zip(FIELDS, (list(c) for c in columns), strict=True)))


def _bad(troop: object) -> bool:
    raise ParseError(f"troop entry is {type(troop).__name__}, expected an object")


HERO_TROOPS = register(HeroTroops())
