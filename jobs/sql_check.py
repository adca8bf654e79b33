"""Validation of a job's own SQL statement (payload ``sql``, ``--handler sql:PATH``, approved files).

Validation never runs the statement. It checks, in this order:

1. the text (no database): one statement, no comment or string can hide a second one; it starts with
   INSERT, UPDATE, DELETE, MERGE or WITH; it binds exactly ``:lo`` and ``:hi``; it names none of the
   functions in :data:`DENIED` (session settings, dynamic SQL, locks, files, other backends);
2. the plan: plain ``EXPLAIN (VERBOSE, FORMAT JSON)`` of it, inside a savepoint that is always rolled
   back. The top node must modify a table (ModifyTable: Insert, Update, Delete or Merge), so a WITH must
   end in one; and the plan, where every function call shows with its resolved name, is scanned for
   :data:`DENIED` again (catches ``U&"..."`` spellings and inlined SQL functions).

Limits (ops/security.md, Ad-hoc SQL): the deny-list is a list. A function of the deployment's own that changes
session state, or calls one that does, passes; the planner may evaluate immutable and stable functions
while planning. That is why running a statement of one's own is a privilege (tg_sql_author) and why the
worker resets the session after every statement (worker/trust.py).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from tidegate.worker import keys
from tidegate.worker.errors import InvalidInput

MAX_CHARS = 100_000
INSUFFICIENT_PRIVILEGE = "42501"
FIRST_WORDS = ("insert", "update", "delete", "merge", "with")
OPERATIONS = ("Insert", "Update", "Delete", "Merge")
class _Lazy:
    """A regular expression compiled at its first use: the three of this module take longer to compile (the
    wide character classes) than the rest of the module to import, and a pool's start needs none of them
    (bench/RESULTS.md, pool start)."""

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern, self.flags = pattern, flags

    @functools.cached_property
    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern, self.flags)

    def search(self, text: str) -> re.Match[str] | None:
        return self.compiled.search(text)

    def match(self, text: str, pos: int = 0) -> re.Match[str] | None:
        return self.compiled.match(text, pos)


# Functions a batch statement has no business calling: session settings, dynamic SQL (which could
# reach set_config by a string), session-level locks, the server's files and programs, other
# backends, replication, notifications.
DENIED = _Lazy(
    r"\b(set_config|query_to_xml\w*|cursor_to_xml\w*|ts_stat|dblink\w*|pg_advisory_\w+|pg_try_advisory_\w+"
    r"|lo_\w+|pg_read_\w*file|pg_ls_\w+|pg_stat_file|pg_file_\w+|pg_terminate_backend|pg_cancel_backend"
    r"|pg_reload_conf|pg_rotate_logfile|pg_notify|pg_switch_wal|pg_promote|pg_create_restore_point"
    r"|pg_backup_\w+|pg_start_backup|pg_stop_backup|pg_logical_\w+|pg_replication_\w+|\w*replication_slot\w*"
    r"|pg_stat_reset\w*|pg_wal_replay_\w+|pg_export_snapshot|pg_log_backend_memory_contexts"
    r"|pg_import_system_collations)\s*\(",
    re.IGNORECASE,
)


class NotPlanned(InvalidInput):
    """The server would not plan the statement."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        if sqlstate == INSUFFICIENT_PRIVILEGE:  # the CLI plans as the enqueuer: a grant is missing
            self.exit_code = 6


_DOLLAR = _Lazy(r"\$([A-Za-z_\u0080-\uffff][A-Za-z_0-9\u0080-\uffff]*)?\$")
_IDENT_CHAR = _Lazy(r"[A-Za-z_0-9$\u0080-\uffff]")


def read_file(path: Path) -> str:
    """A statement from a file (the CLI's sql:PATH, sql approve FILE): UTF-8, read at most a little
    past the length limit (check_text refuses it then)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CHARS * 4 + 1)
    except OSError as err:
        raise InvalidInput(f"cannot read SQL file {path}: {err.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"SQL file {path} is not UTF-8 text") from None


def check(conn: Connection, statement: Any, key_type: keys.KeyType) -> str:
    """Both checks; returns the statement as it will run."""
    statement = check_text(statement)
    check_plan(conn, statement, key_type)
    return statement


def check_text(statement: Any) -> str:
    """The checks that need no database; returns the statement without a trailing semicolon."""
    if not isinstance(statement, str):
        raise InvalidInput(f"sql handler: the statement must be a string, got {type(statement).__name__}")
    if not statement.strip():
        raise InvalidInput("sql handler: the statement is empty")
    if len(statement) > MAX_CHARS:
        raise InvalidInput(f"sql handler: the statement is longer than {MAX_CHARS:,} characters")
    if "\x00" in statement:
        raise InvalidInput("sql handler: the statement contains a NUL character")
    code, semicolons = _lex(statement)
    body = statement
    if semicolons:
        last = semicolons[-1]
        if code[last + 1:].strip() or len(semicolons) > 1:
            raise InvalidInput("sql handler: one statement only (found a ';' before the end)")
        body = statement[:last]
    names = set(text(body).compile().params)
    if names != {"lo", "hi"}:
        raise InvalidInput(
            "sql handler: the statement must use the bind parameters :lo and :hi and no others"
            f" (found {', '.join(sorted(names)) or 'none'}; write CAST(:lo AS type), not :lo::type)"
        )
    first = re.match(r"\s*([A-Za-z_]+)", code)
    word = first.group(1).lower() if first else code.strip()[:1]
    if word not in FIRST_WORDS:
        raise InvalidInput(
            f"sql handler: the statement must be one INSERT, UPDATE, DELETE or MERGE (optionally after WITH),"
            f" not {word.upper() or 'nothing'}")
    denied = DENIED.search(code)
    if denied:
        raise InvalidInput(f"sql handler: the statement may not call {denied.group(1).lower()}()")
    return body


def check_plan(conn: Connection, statement: str, key_type: keys.KeyType) -> None:
    """Plan the statement (never run it) and look at the plan; raise InvalidInput if it is not one
    table-modifying statement or calls a denied function."""
    probe = keys.parse(key_type, 0 if key_type == "bigint" else "2000-01-01T00:00:00Z")
    savepoint = conn.begin_nested()  # always rolled back: nothing of the check stays
    try:
        plan = conn.execute(text("EXPLAIN (VERBOSE, FORMAT JSON) " + statement), {"lo": probe, "hi": probe}).scalar()
    except DBAPIError as err:
        savepoint.rollback()
        first = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        if "distributed plan" in first:  # Citus: not pushed down to colocated shards
            first += (" (on Citus a SQL handler must read and write colocated distributed tables; into a reference"
                      " or non-colocated table, use a Python handler: ops/citus.md)")
        raise NotPlanned(f"sql handler does not plan: {first}", getattr(err.orig, "sqlstate", None)) from None
    savepoint.rollback()
    if isinstance(plan, str):
        plan = json.loads(plan)
    top = _distributed_task(plan[0]["Plan"] if isinstance(plan, list) and plan else {})
    if top.get("Node Type") != "ModifyTable" or top.get("Operation") not in OPERATIONS:
        raise InvalidInput("sql handler: the statement must modify a table (one INSERT, UPDATE, DELETE or MERGE,"
                           f" optionally after WITH); its plan is a {top.get('Node Type', 'nothing')}")
    denied = DENIED.search(json.dumps(plan))
    if denied:
        raise InvalidInput(f"sql handler: the statement may not call {denied.group(1).lower()}()")


def _distributed_task(top: dict) -> dict:
    """On Citus, a statement pushed down to the shards plans as a Citus Custom Scan whose tasks hold the
    real plan: the first task's plan (every task runs the same statement on its shard); else ``top``."""
    if top.get("Node Type") != "Custom Scan" or not str(top.get("Custom Plan Provider", "")).startswith("Citus"):
        return top
    try:
        return top["Distributed Query"]["Job"]["Tasks"][0]["Remote Plan"][0][0]["Plan"]
    except (KeyError, IndexError, TypeError):
        return top


def _lex(statement: str) -> tuple[str, list[int]]:
    """The statement's code with comments blanked and string literals emptied (same length, so
    positions match), quoted identifiers unquoted in place; and the positions of ``;`` in code."""
    out: list[str] = []
    semicolons: list[int] = []
    i, n = 0, len(statement)

    def blank(start: int, end: int, keep: str = " ") -> None:
        out.append(keep + " " * (end - start - len(keep)))

    while i < n:
        c = statement[i]
        nxt = statement[i + 1] if i + 1 < n else ""
        if c == "-" and nxt == "-":
            end = statement.find("\n", i)
            end = n if end < 0 else end
            blank(i, end)
            i = end
        elif c == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if statement.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif statement.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                raise InvalidInput("sql handler: unterminated /* comment")
            blank(i, j)
            i = j
        elif c == "'":
            escapes = i > 0 and statement[i - 1] in "eE" and (i < 2 or not _IDENT_CHAR.match(statement[i - 2]))
            j = i + 1
            while True:
                if j >= n:
                    raise InvalidInput("sql handler: unterminated string literal")
                if escapes and statement[j] == "\\":
                    j += 2
                elif statement[j] == "'":
                    if statement.startswith("''", j):
                        j += 2
                    else:
                        break
                else:
                    j += 1
            blank(i, j + 1, "''")
            i = j + 1
        elif c == '"':
            j = i + 1
            while True:
                j = statement.find('"', j)
                if j < 0:
                    raise InvalidInput('sql handler: unterminated quoted identifier')
                if statement.startswith('""', j):
                    j += 2
                    continue
                break
            out.append(" " + statement[i + 1:j].replace('""', '"') + " ")  # same length as the quoted text
            out[-1] = out[-1][: j + 1 - i].ljust(j + 1 - i)
            i = j + 1
        elif c == "$" and (i == 0 or not _IDENT_CHAR.match(statement[i - 1])) and _DOLLAR.match(statement, i):
            tag = _DOLLAR.match(statement, i).group(0)  # type: ignore[union-attr]
            end = statement.find(tag, i + len(tag))
            if end < 0:
                raise InvalidInput("sql handler: unterminated dollar-quoted string")
            blank(i, end + len(tag), "''")
            i = end + len(tag)
        else:
            if c == ";":
                semicolons.append(i)  # the code is as long as the statement: positions match
            out.append(c)
            i += 1
    return "".join(out), semicolons
