"""A one-shot job kind a deployment might add through $TIDEGATE_PLUGINS."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from tidegate.worker.kinds import OneShotKind


class Stamp(OneShotKind):
    """Writes its payload's ``n`` into ``stamps``; ``n`` < 0 fails."""

    name = "stamp"

    def run(self, conn: Connection, payload: Any) -> None:
        conn.execute(text("INSERT INTO stamps (n) VALUES (:n)"), {"n": payload["n"]})
        if payload["n"] < 0:
            raise ValueError(f"negative stamp {payload['n']}")


class Quit(OneShotKind):
    """A one-shot job whose code calls sys.exit (tests/test_isolation.py): it must cost only itself."""

    name = "quit"

    def run(self, conn: Connection, payload: Any) -> None:
        raise SystemExit(payload.get("code", 1))


KINDS = [Stamp(), Quit()]
