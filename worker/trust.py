"""Who may make the workers run a statement of their own (ops/security.md, Ad-hoc SQL).

A job's own SQL (payload ``sql``) runs with the worker's privileges. It runs only when both hold:

* the worker allows ad-hoc SQL: ``tidegate worker --allow-sql`` (or ``TIDEGATE_ALLOW_SQL=1``), and
* the role that enqueued the job, as the database recorded it (``queue_jobs.enqueued_by``, set by a
  trigger from ``session_user``), is a member of the sql-author role (``tg_sql_author``, or
  ``TIDEGATE_SQL_AUTHOR_ROLE``). A superuser passes, as in PostgreSQL itself; when the author role
  does not exist, only superusers pass.

A statement an operator approved (``tidegate sql approve``) needs neither.

While a worker plans a queued job, :func:`planning_for` tells the job kind who enqueued it; outside
a worker (the CLI validating what it is about to enqueue) the enqueuer is the session's own role.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from tidegate.worker import store
from tidegate.worker.errors import InvalidInput

ALLOW_SQL_ENV = "TIDEGATE_ALLOW_SQL"
AUTHOR_ROLE_ENV = "TIDEGATE_SQL_AUTHOR_ROLE"
DEFAULT_AUTHOR_ROLE = "tg_sql_author"
TRUE = ("1", "true", "yes", "on")


class SqlNotAllowed(InvalidInput):
    """This job's own SQL statement may not run here (ops/security.md, Ad-hoc SQL)."""

    exit_code = 6  # the CLI: a privilege is missing, as for PermissionDenied; a worker fails the job


@dataclass(frozen=True)
class Planning:
    enqueued_by: str | None  # None: queued before tidegate recorded it (migration 0008)


_planning: contextvars.ContextVar[Planning | None] = contextvars.ContextVar("tidegate_planning", default=None)


@contextlib.contextmanager
def planning_for(enqueued_by: str | None) -> Iterator[None]:
    """A worker plans a job that ``enqueued_by`` queued (the kind checks its SQL against that role)."""
    token = _planning.set(Planning(enqueued_by))
    try:
        yield
    finally:
        _planning.reset(token)


def in_worker() -> bool:
    """Is a worker planning a queued job (else: the CLI validates what it is about to enqueue)?"""
    return _planning.get() is not None


def sql_allowed() -> bool:
    """Does this process run ad-hoc SQL (``tidegate worker --allow-sql``)?"""
    return os.environ.get(ALLOW_SQL_ENV, "").strip().lower() in TRUE


def author_role() -> str:
    return os.environ.get(AUTHOR_ROLE_ENV, "").strip() or DEFAULT_AUTHOR_ROLE


def session_user(conn: Connection) -> str:
    return store.session_user(conn)


def is_sql_author(conn: Connection, who: str | None) -> bool:
    if who is None:
        return False
    return store.is_sql_author(conn, who, author_role())


_CLI = object()


def check_author(conn: Connection, batch_of: str | None | object = _CLI) -> str:
    """Raise SqlNotAllowed unless the job's own SQL may run; returns the enqueuer.

    ``batch_of``: at a batch, the job's recorded enqueuer (read by begin_batch with the batch's state,
    not by a query of its own). Without it: while a worker plans, the enqueuer of the job being planned;
    elsewhere (the CLI), the session's own role."""
    planning = _planning.get()
    at_batch = batch_of is not _CLI
    worker = at_batch or planning is not None
    if at_batch:
        who = batch_of
    elif planning is not None:
        who = planning.enqueued_by
    else:
        who = session_user(conn)
    if worker and not sql_allowed():
        raise SqlNotAllowed(
            "ad-hoc SQL is off in this worker: a job's own statement runs only on a pool started with"
            f" --allow-sql (or {ALLOW_SQL_ENV}=1); or have an operator approve the file"
            " (tidegate sql approve FILE) and name it (sql_approved)")
    if who is None:
        raise SqlNotAllowed("ad-hoc SQL refused: the job was queued before tidegate recorded who enqueues"
                            " (migration 0008); enqueue it again")
    if not is_sql_author(conn, who):
        raise SqlNotAllowed(
            f"ad-hoc SQL refused: role {who!r}, which enqueued the job, is not a member of {author_role()}"
            " (GRANT it, or have an operator approve the file: tidegate sql approve FILE)")
    return who


def run_own_sql(conn: Connection, statement: str, params: dict[str, Any]) -> None:
    """Run a job's own statement in the batch's transaction; no setting it makes outlives the batch.

    Right after the statement, in the same transaction, ``tidegate_reset_session()`` (migration 0008)
    runs RESET ALL, which puts every setting back to its session default (a ``set_config(..., false)``
    made by the statement is overridden, and the override commits with the batch; a rolled-back batch
    undoes both), and RESET ROLE, which RESET ALL leaves alone. It runs in the transaction that ran
    the statement, hence on the same server connection even behind PgBouncer in transaction mode,
    where a reset at checkin (DISCARD ALL) would land on some other client's server connection. The
    statement timeout in force is kept, LOCAL, for the rest of the batch (the time box needs it).
    """
    conn.execute(text(statement), params)
    store.reset_session(conn)
