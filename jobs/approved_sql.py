"""Approved statements: SQL files an operator registered, which any enqueuer may name.

``tidegate sql approve FILE [--name NAME]`` validates the file as a job's statement (jobs/sql_check.py)
and stores its text and the sha256 of its UTF-8 bytes (``sha256sum FILE`` prints the same) in
``tidegate_sql_approved``; the database checks the hash against the text and records who approved it.
A payload then names it: ``"sql_approved": "NAME"`` (the newest version of that name) or the sha256
(that exact version); the CLI's ``--handler sql-approved:NAME`` writes the same. The planned job pins
the sha256, so approving a new version changes no running job, and ``tidegate sql revoke NAME``
stops the jobs that run it at their next batch.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Connection

from tidegate.jobs import sql_check
from tidegate.worker import keys, store, trust
from tidegate.worker.cliutil import Database, actor_option, database_option, echo_json
from tidegate.worker.errors import InvalidInput, NotFound
from tidegate.worker.store import Approved

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def check_ref(value: Any) -> str:
    """A payload's ``sql_approved``: a name or a sha256."""
    if not isinstance(value, str) or not NAME.match(value):
        raise InvalidInput(f"sql_approved must name an approved statement (letters, digits, _.-), got {value!r}")
    return value


def sha256_of(statement: str) -> str:
    return hashlib.sha256(statement.encode("utf-8")).hexdigest()


def find(conn: Connection, ref: str) -> Approved:
    found = store.approved_sql(conn, ref)
    if found is None:
        names = sorted({r["name"] for r in store.list_approved_sql(conn)})
        raise InvalidInput(f"no approved statement {ref!r}; approved: {', '.join(names) or 'none'}"
                           " (an operator runs: tidegate sql approve FILE)")
    return found


def check(conn: Connection, approved: Approved, key_type: keys.KeyType) -> None:
    """Validate an approved statement for a job. A worker must be able to plan it; an enqueuer need
    not hold the grants it uses (it runs with the worker's), so the CLI lets a permission error pass."""
    try:
        sql_check.check(conn, approved.sql, key_type)
    except sql_check.NotPlanned as err:
        if trust.in_worker() or err.sqlstate != sql_check.INSUFFICIENT_PRIVILEGE:
            raise


def text_of(conn: Connection, sha256: str) -> str | None:
    return store.approved_sql_text(conn, sha256)


def approve(conn: Connection, statement: str, name: str, actor: str) -> tuple[Approved, str | None]:
    """Validate and store; returns the approved row and a note when the check could not plan it."""
    if not NAME.match(name):
        raise InvalidInput(f"--name must be 1 to 100 letters, digits or _.- characters, got {name!r}")
    sql_check.check_text(statement)
    note = _plan_either_key_type(conn, statement)
    digest = sha256_of(statement)
    approved = store.approve_sql(conn, name, digest, statement)
    store.audit(conn, actor, "sql-approve", None, {"name": name, "sha256": digest, "approved_by": approved.approved_by})
    return approved, note


def _plan_either_key_type(conn: Connection, statement: str) -> str | None:
    """The statement must plan with :lo/:hi as bigint or as timestamptz (each job plans it again,
    as the worker, with its own key type). A role that may not write its tables cannot plan it:
    then the check is left to the worker, and the note says so."""
    body = sql_check.check_text(statement)
    failures: list[sql_check.NotPlanned] = []
    for key_type in ("bigint", "timestamptz"):
        try:
            sql_check.check_plan(conn, body, key_type)  # type: ignore[arg-type]
            return None
        except sql_check.NotPlanned as err:
            failures.append(err)
    for err in failures:
        if err.sqlstate == sql_check.INSUFFICIENT_PRIVILEGE:
            return f"not planned here ({err}): every job plans it as the worker before it runs"
    raise InvalidInput(f"{failures[0]} (tried :lo and :hi as bigint and as timestamptz)")


def revoke(conn: Connection, name: str, actor: str) -> int:
    gone = store.revoke_sql(conn, name)
    if not gone:
        raise NotFound(f"no approved statement named {name!r}")
    store.audit(conn, actor, "sql-revoke", None, {"name": name, "sha256": gone})
    return len(gone)


# -- commands -------------------------------------------------------------------


@click.group("sql")
def sql_group() -> None:
    """Statements an operator approved: any enqueuer may name one (--handler sql-approved:NAME)."""


@sql_group.command("approve")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Name enqueuers use (default: the file's name without .sql).")
@click.option("--json", "as_json", is_flag=True)
@actor_option
@database_option
def approve_cmd(db: Database, file: Path, name: str | None, as_json: bool, actor: str) -> None:
    """Validate FILE as a job's statement (one INSERT/UPDATE/DELETE/MERGE using :lo and :hi, never run)
    and register its text and sha256."""
    statement = sql_check.read_file(file)
    with db.engine.begin() as conn:
        approved, note = approve(conn, statement, name or file.stem, actor)
    if as_json:
        echo_json({"name": approved.name, "sha256": approved.sha256, "approved_by": approved.approved_by,
                   "approved_at": approved.approved_at.isoformat(), "note": note})
        return
    click.echo(f"approved {approved.name} sha256:{approved.sha256} by {approved.approved_by}")
    if note:
        click.echo(f"note: {note}", err=True)


@sql_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@database_option
def list_cmd(db: Database, as_json: bool) -> None:
    """Approved statements, each name's newest version first."""
    with db.engine.connect() as conn:
        rows = store.list_approved_sql(conn)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']}  sha256:{r['sha256']}  {r['chars']} chars  by {r['approved_by']}"
                   f"  {r['approved_at']:%Y-%m-%d %H:%M:%S}")
    if not rows:
        click.echo("no approved statements")


@sql_group.command("revoke")
@click.argument("name")
@actor_option
@database_option
def revoke_cmd(db: Database, name: str, actor: str) -> None:
    """Forget every version of NAME; jobs that run one fail at their next batch."""
    with db.engine.begin() as conn:
        count = revoke(conn, name, actor)
    click.echo(f"revoked {name} ({count} version(s))")
