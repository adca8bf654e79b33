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

from tidegate.worker import store
from tidegate.worker.db import first_line
from tidegate.worker.errors import SchemaNotReady

log = logging.getLogger(__name__)
# worker/../migrations in a checkout, tidegate/worker/../migrations once installed: the same place.
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
VERSIONS = MIGRATIONS / "versions"
# Alembic sections: tidegate's own tables, and the demo's tables (`tidegate demo seed`, tests).
SECTIONS = {"alembic": ("versions", "tidegate_alembic_version"), "demo": ("demo", "tidegate_demo_version")}
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


def alembic_config(url: str, section: str = "alembic"):  # type: ignore[no-untyped-def]
    """Alembic's configuration for the migrations shipped with this code, built here rather than read
    from alembic.ini, so an installed wheel migrates without the checkout (alembic.ini stays for
    running `alembic` by hand in one)."""
    from alembic.config import Config

    folder, table = SECTIONS[section]
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("version_locations", str(MIGRATIONS / folder))
    cfg.set_main_option("version_table", table)
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = url
    return cfg


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
