"""Connections: which database, engines, and driver errors as tidegate errors.

Resolution order for every command: ``--database-url``, then ``DATABASE_URL``,
then the embedded PostgreSQL server in ``$TIDEGATE_HOME/pgdata`` (default
``./.tidegate``), started on first use and left running between commands.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import sqlalchemy.exc
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.array import ListBinaryDumper
from sqlalchemy import Engine, create_engine, event, pool
from sqlalchemy.exc import DBAPIError

from tidegate.worker.errors import DatabaseUnavailable, InvalidInput, quote
from tidegate.worker.redact import redact, register_url

EMBEDDED = "embedded"


def tidegate_home() -> Path:
    return Path(os.environ.get("TIDEGATE_HOME", ".tidegate")).resolve()


def resolve_url(url: str | None, source: str = "--database-url") -> str:
    """The libpq URL to use: explicit, ``DATABASE_URL``, else the embedded server.

    A malformed URL (not PostgreSQL, no scheme, a bad port, an unencoded ``@`` in the password,
    empty) raises InvalidInput naming ``source`` (where it came from), its password masked."""
    if url is None:
        url, source = os.environ.get("DATABASE_URL"), "DATABASE_URL"
    if url is not None and url.strip() != EMBEDDED:
        return check_url(url, source)
    from tidegate.worker.embedded import embedded_url  # imported late: starts a server

    return embedded_url(tidegate_home() / "pgdata")


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_POSTGRES = re.compile(r"^postgres(?:ql)?(?:\+\w+)?(?=://)")
FORM = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


def check_url(url: str, source: str = "the database URL") -> str:
    """``url`` in libpq's form, checked without connecting; else InvalidInput, the password masked."""
    if not url.strip():
        unset = ", or unset it to use the embedded server" if source == "DATABASE_URL" else ""
        raise InvalidInput(f"{source} is empty: give {FORM}{unset}")

    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"{source} {quote(mask_url(url), 120)}: {why}")

    scheme = _SCHEME.match(url)
    if scheme is None:
        raise bad(f"no scheme: write it as {FORM}")
    if not _POSTGRES.match(url):
        raise bad(f"{quote(scheme[1], 30)} is not PostgreSQL: tidegate needs {FORM}")
    libpq = libpq_url(url)
    head = libpq[scheme.end():].split("?", 1)[0]  # user:password@host:port/database
    at, slash = head.rfind("@"), head.find("/")
    if at >= 0 and (head.count("@") > 1 or 0 <= slash < at):
        raise bad("the user name or password holds '@' or '/': percent-encode them (@ as %40, / as %2F)")
    try:
        parts = conninfo_to_dict(libpq)
    except psycopg.ProgrammingError as err:
        password = head[:at].partition(":")[2] if at >= 0 else ""
        message = first_line(err)
        raise bad(message.replace(password, "***") if password else message) from None
    for port in str(parts.get("port") or "").split(","):
        if port and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
            raise bad(f"port {quote(port, 20)} is not a port number (1 to 65535)")
    return libpq


def libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs too (``postgresql+psycopg://``)."""
    return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql://", url)


def sqlalchemy_url(url: str) -> str:
    return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql+psycopg://", url)


def mask_url(url: str) -> str:
    """The URL with its password replaced, for logs, status and errors. The password is taken to run
    to the last ``@``, so one holding an unencoded ``@``, ``/`` or ``?`` is masked whole."""
    masked = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?]*:).*@", r"\1***@", url, flags=re.DOTALL)
    return redact(re.sub(r"(password=)[^&\s]*", r"\1***", masked))


class TextList(list):  # type: ignore[type-arg]
    """A list of strings that goes to the server as one binary ``text[]`` parameter. psycopg sends a plain
    list of str as an array literal in text format, each element quoted on the way out and parsed on the way
    in: for an archive batch's 1,000 stream ids that cost several times the binary array (bench/RESULTS.md)."""


psycopg.adapters.register_dumper(TextList, ListBinaryDumper)


def make_engine(url: str, *, application_name: str = "tidegate", pool_size: int = 2, max_overflow: int = 2,
                connect_timeout: int | None = None) -> Engine:
    """An engine with a small pool; tidegate keeps no session state.

    Nothing that correctness depends on lives in the session (no advisory
    locks, no prepared statements, no LISTEN), so it works through PgBouncer
    in transaction mode. A session whose TimeZone is another name of UTC is
    put in 'UTC' as it connects (``_plain_utc``): the same zone.
    """
    register_url(url)  # masked wherever this process prints it, even inside a handler's own message
    engine = create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        poolclass=pool.QueuePool,
        connect_args={"application_name": application_name, "prepare_threshold": None,
                      **({"connect_timeout": connect_timeout} if connect_timeout else {})},
    )
    event.listen(engine, "handle_error", _translate)
    event.listen(engine, "connect", _plain_utc)
    return engine


# Other names of UTC itself in the time zone database: the same offset, always, and the same abbreviation
UTC_ALIASES = frozenset({b"Etc/UTC", b"Etc/UCT", b"UCT", b"Etc/Universal", b"Universal", b"Etc/Zulu", b"Zulu"})


def _plain_utc(dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
    """A session whose TimeZone is another name of UTC (Debian's initdb sets 'Etc/UTC') is put in 'UTC': the
    same zone for every statement, but psycopg then gives timestamptz values the fixed ``timezone.utc``, not
    a ``ZoneInfo``, and a Python handler's records carrying them are COPYed in 8 ms instead of 22 per 50,000
    (the demo's batch: bench/RESULTS.md). psycopg's C loader maps only 'UTC' itself so."""
    pgconn = getattr(dbapi_connection, "pgconn", None)
    if pgconn is not None and pgconn.parameter_status(b"TimeZone") in UTC_ALIASES:
        dbapi_connection.execute("SET TimeZone = 'UTC'")
        dbapi_connection.commit()


def _translate(context) -> None:  # type: ignore[no-untyped-def]
    """Driver errors that mean "no database" become one tidegate error."""
    err = context.original_exception
    if isinstance(err, psycopg.OperationalError) and (context.is_disconnect or context.connection is None):
        if getattr(err, "sqlstate", None) == "57014":  # the server is there: its statement_timeout is not
            raise DatabaseUnavailable(
                f"database unusable: a statement timed out as the connection opened ({first_line(err)}): the "
                "statement_timeout set for this login or database (SHOW statement_timeout) is too short for "
                "tidegate; raise it, e.g. ALTER ROLE ... SET statement_timeout = '30s'") from err
        raise DatabaseUnavailable(f"database unavailable: {mask_url(first_line(err))}") from err


def is_timeout(err: BaseException) -> bool:
    return sqlstate(err) == "57014"  # query_canceled: our statement_timeout


# SQLSTATEs that mean "the connection or the server is gone", not "this batch is wrong"
OUTAGE_STATES = ("08", "57P01", "57P02", "57P03")


def is_outage(err: BaseException) -> bool:
    if isinstance(err, DatabaseUnavailable):
        return True
    if isinstance(err, DBAPIError):
        if err.connection_invalidated:
            return True
        orig = err.orig
        if isinstance(orig, psycopg.OperationalError):
            state = getattr(orig, "sqlstate", None)
            return state is None or state.startswith(OUTAGE_STATES)
    return isinstance(err, psycopg.OperationalError) and not getattr(err, "sqlstate", None)


def sqlstate(err: BaseException) -> str | None:
    """The SQLSTATE of a database error, whether SQLAlchemy wrapped it or not (else None)."""
    orig = err.orig if isinstance(err, DBAPIError) else err
    state = getattr(orig, "sqlstate", None)
    return state if isinstance(state, str) else None


# SQLSTATE classes of errors that are a row's own fault: its data does not fit (22), it breaks a
# constraint (23) or a view's CHECK OPTION (44), or a PL/pgSQL function raised about it (P0).
ROW_FAULT_CLASSES = ("22", "23", "44", "P0")


def is_row_fault(err: BaseException) -> bool:
    """Is this exception, raised by a handler for one row, that row's fault (an item error)?

    A plain Python exception (``ValueError``, ``KeyError``...) is: the handler refused the row. A
    database error is only for the classes above. Everything else is an error of the database or of
    the transaction — connection (08), rollback (40), resources such as a full disk (53), program
    limits (54), lock not available (55), operator intervention such as a statement timeout or a
    cancel (57), system (58), invalid transaction state such as read-only (25), a missing table or
    privilege (42), internal (XX) — or an error of SQLAlchemy's transaction bookkeeping (a savepoint
    that cannot be rolled back to): the whole batch rolls back and is retried, its rows are never
    filed as bad items behind the checkpoint. ``BaseException`` subclasses that are not
    ``Exception`` (``SystemExit``, ``KeyboardInterrupt``) and ``MemoryError`` are never a row's fault.
    """
    if not isinstance(err, Exception) or isinstance(err, MemoryError):
        return False
    if isinstance(err, DatabaseUnavailable | sqlalchemy.exc.InvalidRequestError | sqlalchemy.exc.ResourceClosedError):
        return False
    if isinstance(err, DBAPIError | psycopg.Error):
        state = sqlstate(err)
        return state is not None and state.startswith(ROW_FAULT_CLASSES)
    return True


def is_database_fault(err: BaseException) -> bool:
    """An error of the database or the transaction (see :func:`is_row_fault`): worth retrying the batch
    unchanged later, and no reason to fail the job — after enough in a row the job pauses instead."""
    if isinstance(err, DBAPIError | psycopg.Error):
        state = sqlstate(err)
        return state is None or not state.startswith(ROW_FAULT_CLASSES)
    return isinstance(err, DatabaseUnavailable)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def connect(url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A plain psycopg connection (used where SQLAlchemy would only add overhead)."""
    register_url(url)
    try:
        conn = psycopg.connect(libpq_url(url), autocommit=autocommit, prepare_threshold=None)
    except psycopg.OperationalError as err:
        raise DatabaseUnavailable(f"cannot connect to {mask_url(url)}: {first_line(err)}") from err
    with conn:
        yield conn
