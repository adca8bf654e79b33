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

from worker.db import first_line, is_outage, make_engine, mask_url, resolve_url
from worker.errors import DatabaseUnavailable, PermissionDenied, TidegateError

F = Callable[..., Any]


def database_option(func: F) -> F:
    """Add ``--database-url`` (default ``DATABASE_URL``, else the embedded server)."""

    @click.option(
        "--database-url",
        "database_url",
        envvar="DATABASE_URL",
        default=None,
        metavar="URL",
        help="PostgreSQL URL. Default: $DATABASE_URL, else the embedded server in $TIDEGATE_HOME (./.tidegate).",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, database_url: str | None, **kwargs: Any) -> Any:
        return func(*args, db=Database(database_url), **kwargs)

    return wrapper


class Database:
    """The command's database, connected on first use."""

    def __init__(self, url: str | None) -> None:
        self._given = url
        self._url: str | None = None
        self._engine: Engine | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = resolve_url(self._given)
        return self._url

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.url, application_name="tidegate-cli", pool_size=1)
        return self._engine

    @property
    def masked(self) -> str:
        return mask_url(self.url)


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
        click.echo(f"error: the database refused: {message}", err=True)
        sys.exit(1)
    except SystemExit:
        raise
