"""A one-shot job kind a deployment might add through $TIDEGATE_PLUGINS."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text


class Stamp:
    """Writes its payload's ``n`` into ``stamps``; ``n`` < 0 fails."""

    name = "stamp"
    one_shot = True

    def plan(self, conn: Connection, payload: Any) -> Any:  # never called for one-shot kinds
        raise NotImplementedError

    def process(self, *args: Any) -> Any:
        raise NotImplementedError

    def run(self, conn: Connection, payload: Any) -> None:
        conn.execute(text("INSERT INTO stamps (n) VALUES (:n)"), {"n": payload["n"]})
        if payload["n"] < 0:
            raise ValueError(f"negative stamp {payload['n']}")


KINDS = [Stamp()]
