"""The queue benchmark's `noop` kind, loaded through $TIDEGATE_PLUGINS like any deployment's own kind."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from tidegate.worker.kinds import OneShotKind


class Noop(OneShotKind):
    """A one-shot job that does nothing: what is left to measure is the queue itself."""

    name = "noop"

    def run(self, conn: Connection, payload: Any) -> None:
        return None


KINDS = [Noop()]
