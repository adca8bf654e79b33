"""Is the database's tidegate schema the one this code needs? Every command asks before its first query.

A worker started on a database that was never migrated (or is a revision behind) would otherwise
log "relation ... does not exist" and retry for minutes; a command would print the server's words.
Instead: exit 5 at once with the revisions and `tidegate db upgrade`. A database *ahead* of the
code (a revision this code does not know: a rolling deploy that migrated first) is let through.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from pathlib import Path

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import ProgrammingError

from worker import store
from worker.db import first_line
from worker.errors import SchemaNotReady

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


VERSIONS = ROOT / "migrations" / "versions"
_REVISION = re.compile(r'^revision\s*=\s*["\'](\w+)["\']', re.MULTILINE)
_DOWN = re.compile(r"^down_revision\s*=\s*(.*)$", re.MULTILINE)


@cache
def revisions() -> tuple[tuple[str, ...], frozenset[str]] | None:
    """(head revisions, every revision) of the migrations shipped with this code; None without them.

    Read from the migration files' ``revision`` / ``down_revision`` lines rather than through Alembic,
    whose import would cost every command a tenth of a second (tests/test_input_bounds.py checks that
    both agree)."""
    if not VERSIONS.is_dir():  # installed without its migrations: nothing to compare with
        return None
    every: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        source = path.read_text()
        revision, down = _REVISION.search(source), _DOWN.search(source)
        if revision is None:
            continue
        every.add(revision[1])
        if down is not None:
            parents.update(re.findall(r"[\"'](\w+)[\"']", down[1]))
    return tuple(sorted(every - parents)), frozenset(every)


def check(engine: Engine, shown: str) -> None:
    """Raise SchemaNotReady unless the database is at this code's head (or ahead of it).
    ``shown``: the database as the message names it (its masked URL, or the embedded server)."""
    known = revisions()
    if known is None:
        return
    heads, every = known
    try:
        with engine.connect() as conn:
            current = sorted(store.schema_revisions(conn))
    except ProgrammingError as err:
        if isinstance(err.orig, psycopg.errors.InsufficientPrivilege):  # a role from before ops/roles.sql's grant
            log.debug("cannot read the schema revision (%s): not checked", first_line(err.orig))
            return
        raise
    if tuple(current) == heads or set(current) - every:
        return
    if not current:
        raise SchemaNotReady(f"{shown} has no tidegate tables: run `tidegate db upgrade`")
    raise SchemaNotReady(f"{shown} is at schema revision {', '.join(current)}, this tidegate needs"
                         f" {', '.join(heads)}: run `tidegate db upgrade`")
