"""Handlers a user might write as module:function (imported by worker subprocesses)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, text


def record(conn: Connection, row: Mapping[str, Any]) -> None:
    """Log the key; keys divisible by 7 are bad items."""
    if row["k"] % 7 == 0:
        raise ValueError(f"k={row['k']} is divisible by 7")
    conn.execute(text("INSERT INTO processed_log (k) VALUES (:k)"), {"k": row["k"]})


not_a_handler = 42
