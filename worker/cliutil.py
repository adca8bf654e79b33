"""Pieces every command shares (also used by the job kinds' commands).

``--database-url`` is declared once here; its value is resolved lazily, so
``--help`` never starts a database.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from tidegate.worker.db import EMBEDDED, first_line, is_outage, make_engine, mask_url, resolve_url, tidegate_home
from tidegate.worker.errors import DatabaseUnavailable, InvalidInput, PermissionDenied, SchemaNotReady, TidegateError
from tidegate.worker.schema import check as check_schema

F = Callable[..., Any]


def database_option(func: F | None = None, *, schema: bool = True) -> Any:
    """Add ``--database-url`` (default ``DATABASE_URL``, else the embedded server) and ``--target NAME``
    (a named database of worker/targets.py; default ``$TIDEGATE_TARGET``), so every command that acts
    on jobs can be pointed at one target. ``--database-url`` given on the command line wins over
    ``$TIDEGATE_TARGET``; both on the command line is an error.

    ``schema``: check before the first query that the database's tidegate schema is this code's
    (exit 5 and `tidegate db upgrade` otherwise); False for the commands that create it."""

    def decorate(func: F) -> F:
        @click.option(
            "--database-url",
            "database_url",
            envvar="DATABASE_URL",
            default=None,
            metavar="URL",
            help="PostgreSQL URL. Default: $DATABASE_URL, else the embedded server in $TIDEGATE_HOME"
                 " (./.tidegate).",
        )
        @click.option(
            "--target",
            "target",
            envvar="TIDEGATE_TARGET",
            default=None,
            metavar="NAME",
            help="A named database (`tidegate targets list`) instead of --database-url. Default:"
                 " $TIDEGATE_TARGET, else the database above.",
        )
        @functools.wraps(func)
        def wrapper(*args: Any, database_url: str | None, target: str | None, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            source = ctx.get_parameter_source("database_url")
            given = "DATABASE_URL" if source == click.core.ParameterSource.ENVIRONMENT else "--database-url"
            if target is not None:
                explicit = click.core.ParameterSource.COMMANDLINE
                if source == explicit and ctx.get_parameter_source("target") == explicit:
                    raise InvalidInput("give --database-url or --target, not both")
                if source != explicit:
                    return func(*args, db=Database.of_target(target, schema=schema), **kwargs)
            return func(*args, db=Database(database_url, given, schema=schema), **kwargs)

        return wrapper

    return decorate(func) if func is not None else decorate


class Database:
    """The command's database, connected on first use."""

    def __init__(self, url: str | None, source: str = "--database-url", *, schema: bool = True) -> None:
        self._given = url
        self._source = source
        self._schema = schema
        self._url: str | None = None
        self._engine: Engine | None = None
        self.target: str | None = None  # the target's name, when the database is one

    @classmethod
    def of_target(cls, name: str, *, schema: bool = True) -> Database:
        """The target's database; an unknown name is InvalidInput listing the known ones (exit 2)."""
        from tidegate.worker import targets

        found = targets.get(name)
        db = cls(found.url, f"target {found.name}", schema=schema)
        db.target = found.name
        return db

    @property
    def url(self) -> str:
        if self._url is None:
            if self.embedded:  # said before the server starts: the first line a command or a worker prints
                click.echo(f"tidegate: using {self.described}", err=True)
            self._url = resolve_url(self._given, self._source)
        return self._url

    @property
    def named(self) -> bool:
        """A database was named: --database-url, $DATABASE_URL or --target (else the embedded default)."""
        return self._given is not None or self.target is not None

    @property
    def embedded(self) -> bool:
        given = self._given if self._given is not None else os.environ.get("DATABASE_URL")
        return given is None or given.strip() == EMBEDDED

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = make_engine(self.url, application_name="tidegate-cli", pool_size=1)
            if self._schema:
                try:
                    check_schema(engine, self.described)
                except SchemaNotReady as err:
                    engine.dispose()
                    if self.target is None:
                        raise
                    raise SchemaNotReady(str(err).replace("`tidegate db upgrade`",
                                                          f"`tidegate db upgrade --target {self.target}`")) from None
                except BaseException:
                    engine.dispose()
                    raise
            self._engine = engine
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    @property
    def described(self) -> str:
        """The database as an error message names it (saying when it is the embedded default)."""
        if self.target is not None:
            return f"target {self.target} ({self.masked})"
        given = self._given if self._given is not None else os.environ.get("DATABASE_URL")
        if given is None:
            return (f"the embedded database in {tidegate_home() / 'pgdata'} (the default: no --database-url"
                    " or DATABASE_URL given)")
        if given.strip() == EMBEDDED:
            return f"the embedded database in {tidegate_home() / 'pgdata'}"
        return f"database {self.masked}"


def find_job(db: Database, ref: str) -> str:
    """The full id of the job ``ref`` names (a full id or an unambiguous prefix, as `pause` and `status` take
    them): every command and option that takes a job id resolves it here (worker/control.py's find_job)."""
    from tidegate.worker.control import find_job

    with db.engine.connect() as conn:
        return find_job(conn, ref)


def refuse_one_database(with_: str) -> None:
    """``with_`` (--targets, --run) acts on several databases: --target or --database-url given on the command
    line too is InvalidInput (exit 2). $DATABASE_URL and $TIDEGATE_TARGET are ignored then."""
    ctx = click.get_current_context()
    for name, flag in (("target", "--target"), ("database_url", "--database-url")):
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise InvalidInput(f"give {with_} or {flag}, not both ({with_} acts on several targets;"
                               " narrow it with --targets NAME)")


def run_targets(spec: str | None) -> list[Any]:
    """The targets a fan-out command acts on: those ``--targets SPEC`` selects (worker/runs.py), else every one."""
    from tidegate.worker import runs, targets

    return runs.select_targets(spec) if spec is not None else targets.select(None)


class TidegateExit(TidegateError):
    """A command that acted on several databases and failed on some: the worst exit code of theirs."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def actor_option(func: F) -> F:
    return click.option(
        "--by", "actor", default=lambda: os.environ.get("TIDEGATE_ACTOR") or _user(), show_default="$USER",
        help="Who is doing this (recorded in the audit table and status).",
    )(func)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def run_cli(group: click.Group) -> None:
    """Run the CLI; tidegate errors become one clear line and an exit code, no traceback."""
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except TidegateError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except DBAPIError as err:  # a grant missing, say: the server's words, not a traceback
        orig = err.orig
        message = first_line(orig) if orig is not None else first_line(err)
        if is_outage(err):
            click.echo(f"error: {DatabaseUnavailable()} ({message})", err=True)
            sys.exit(DatabaseUnavailable.exit_code)
        if isinstance(orig, psycopg.errors.InsufficientPrivilege):
            click.echo(f"error: {message} (the role lacks a grant: ops/roles.sql lists what each role needs)",
                       err=True)
            sys.exit(PermissionDenied.exit_code)
        if isinstance(orig, psycopg.errors.QueryCanceled):  # nothing of tidegate's cancels a command's statement
            message += (" (the statement_timeout set for this login or database, SHOW statement_timeout, is too"
                        " short for this command)")
        click.echo(f"error: the database refused: {message}", err=True)
        sys.exit(1)
    except SystemExit:
        raise
