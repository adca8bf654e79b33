"""Is the database's tidegate schema the one this code needs? Every command asks before its first query.

A worker started on a database that was never migrated (or is a revision behind) would otherwise
log "relation ... does not exist" and retry for minutes; a command would print the server's words.
Instead: exit 5 at once with the revisions and `tidegate db upgrade`. A database *ahead* of the
code (a revision this code does not know: a rolling deploy that migrated first) is let through.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from sqlalchemy import Engine

from worker import store
from worker.errors import SchemaNotReady

ROOT = Path(__file__).resolve().parent.parent


@cache
def revisions() -> tuple[tuple[str, ...], frozenset[str]] | None:
    """(head revisions, every revision) of the migrations shipped with this code; None without them."""
    ini = ROOT / "alembic.ini"
    if not ini.exists():  # installed without its migrations: nothing to compare with
        return None
    from alembic.config import Config  # imported late: only commands that touch a database pay for it
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(Config(str(ini), ini_section="alembic"))
    return tuple(sorted(script.get_heads())), frozenset(r.revision for r in script.walk_revisions())


def check(engine: Engine, shown: str) -> None:
    """Raise SchemaNotReady unless the database is at this code's head (or ahead of it).
    ``shown``: the database as the message names it (its masked URL, or the embedded server)."""
    known = revisions()
    if known is None:
        return
    heads, every = known
    with engine.connect() as conn:
        current = sorted(store.schema_revisions(conn))
    if tuple(current) == heads or set(current) - every:
        return
    if not current:
        raise SchemaNotReady(f"{shown} has no tidegate tables: run `tidegate db upgrade`")
    raise SchemaNotReady(f"{shown} is at schema revision {', '.join(current)}, this tidegate needs"
                         f" {', '.join(heads)}: run `tidegate db upgrade`")
