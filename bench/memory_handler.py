"""The memory benchmark's Python handler: reads every row into Python, writes one counter row."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, text

from tidegate.jobs.handlers import ItemHandler


class CountItems(ItemHandler):
    name = "bench_count_items"

    def transform(self, row: Mapping[str, Any]) -> Iterable[Any]:
        yield len(row["body"])

    def write(self, conn: Connection, records: list[Any]) -> None:
        conn.execute(text("UPDATE bench_sink SET items = items + :n, chars = chars + :c"),
                     {"n": len(records), "c": sum(records)})


HANDLER = CountItems()
