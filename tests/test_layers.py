"""The layering is a contract, checked on every test run: worker/ knows no job kind,
jobs/ knows no processes, and no runtime module builds SQL with f-strings."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, parse_python


def test_import_contracts_hold():
    linter = str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([str(ROOT / ".ci/lint-imports")], env={**os.environ, "LINT_IMPORTS": linter},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_no_fstring_sql_in_the_runtime():
    pattern = re.compile(r"""f["'](\s*)(SELECT|INSERT|UPDATE|DELETE|WITH)\b""", re.I)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "worker").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


# -- SQL in one place (worker/sql/__init__.py says where the boundary runs) -------------------------

BOUNDARY = {"worker/store.py", "worker/identifiers.py", "worker/sql/__init__.py"}
SQL_START = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|MERGE|CREATE|ALTER|DROP|TRUNCATE)\s")
LIVE_RULE = re.compile(r"heartbeat_at\s*>\s*now\(\)\s*-\s*make_interval\(\s*secs\s*=>\s*(\w+\.)?lease_seconds\s*\)")


def _modules(*folders: str) -> dict[str, ast.Module]:
    return {str(p.relative_to(ROOT)): parse_python(p.read_text()) for folder in folders
            for p in sorted((ROOT / folder).rglob("*.py"))}


def _named_queries(tree: ast.Module) -> list[str]:
    """The names passed to q(...) / store.q(...) / raw(...) in a module ("?" when not a literal)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called in ("q", "raw"):
                arg = node.args[0] if node.args else None
                found.append(arg.value if isinstance(arg, ast.Constant) else "?")
    return found


def test_only_the_query_boundary_runs_named_queries():
    offenders = {path: names for path, tree in _modules("worker", "jobs").items()
                 if path not in BOUNDARY and (names := set(_named_queries(tree)))}
    assert offenders == {}, "call a store function (worker/store.py) instead"


def test_the_runtime_keeps_no_sql_outside_queries_sql():
    """No statement text in a worker/ module: a literal that starts like SQL, or one given to text()."""
    inline = []
    for path, tree in _modules("worker").items():
        if path.startswith("worker/sql/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_START.match(node.value):
                inline.append(f"{path}:{node.lineno}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "text"
                    and node.args and isinstance(node.args[0], ast.Constant | ast.JoinedStr | ast.BinOp)):
                inline.append(f"{path}:{node.lineno}")
    assert inline == []


def test_every_named_query_is_called_and_exists():
    from tidegate.worker.sql import load

    queries = set(load("tidegate.worker.sql", "queries.sql"))
    called = {name for tree in _modules("worker", "jobs").values() for name in _named_queries(tree)}
    called.discard("?")
    assert called - queries == set()  # a call of a query that does not exist
    dynamic = {"job_errors", "job_errors_no_sample"}  # store.job_errors picks one by name
    assert queries - called - dynamic == set()  # a query nothing runs


def test_the_live_worker_rule_is_written_once():
    """The view tidegate_live_workers (migration 0011) is the one place; queries and tests read the view."""
    files = [p for folder in ("worker", "jobs", "tests", "ops", "migrations", "bench")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".sql", ".md") and p.is_file()]
    written = [str(p.relative_to(ROOT)) for p in files for _ in LIVE_RULE.finditer(p.read_text())]
    assert written == ["migrations/versions/0011_live_workers.py"]
    assert (ROOT / "worker/sql/queries.sql").read_text().count("tidegate_live_workers") >= 6


# -- a job kind's SQL: in .sql files beside it, filled by render() --------------------------------

JOB_SQL_START = re.compile(SQL_START.pattern.replace("TRUNCATE", "TRUNCATE|SET|EXPLAIN|ANALYZE"))
# Statements that stay in Python, each for a reason:
JOB_SQL_ALLOWED = {
    # a handler is user code: the demo's reads as the example a user copies, its SQL beside its transform
    ("jobs/demo/handlers.py", "SELECT level, amount, ascension, snapshot_id, snapshot_at FROM user_troops"),
    # EXPLAIN of the job's own statement: the author's text (sql_check.check_text), nothing to fill
    ("jobs/sql_check.py", "EXPLAIN (VERBOSE, FORMAT JSON)"),
}
# str.replace in jobs/ that is not SQL templating: a label shown to a user, a quoted identifier un-doubled
REPLACE_ALLOWED = {("jobs/archive/cli.py", "key.replace('_', ' ')"),
                   ("jobs/sql_check.py", "statement[i + 1:j].replace('\"\"', '\"')"),
                   # escaping for the driver's paramstyle (a % inside a quoted name), not filling a template
                   ("jobs/handlers.py", "sql.replace('%', '%%')")}


def test_job_kinds_keep_their_sql_in_sql_files():
    """No statement text in a jobs/ module (a literal that starts like SQL, or one given to text() or
    render()): it lives in the .sql file beside the module, under a ``-- name:`` header."""
    inline = set()
    for path, tree in _modules("jobs").items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and JOB_SQL_START.match(node.value):
                inline.add((path, " ".join(node.value.split())))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("text", "render")
                    and node.args and isinstance(node.args[0], ast.Constant | ast.JoinedStr | ast.BinOp)):
                inline.add((path, " ".join(ast.unparse(node.args[0]).split())))
    unexplained = {(path, sql) for path, sql in inline
                   if not any(path == p and start in sql for p, start in JOB_SQL_ALLOWED)}
    assert unexplained == set()
    assert {p for p, _ in inline} == {p for p, _ in JOB_SQL_ALLOWED}  # each exception still needed


def test_no_sql_template_is_filled_with_replace():
    """One template syntax: ``{placeholders}`` filled by render() (identifiers) and compose() (fragments)."""
    calls = {(path, ast.unparse(node)) for path, tree in _modules("jobs").items() for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "replace"}
    assert calls - REPLACE_ALLOWED == set()


def test_every_named_job_sql_section_is_used():
    """Each ``-- name:`` section of a job kind's .sql file is read by its module (SQL["name"])."""
    from tidegate.worker.sql import load

    unused = []
    for sql_file in sorted((ROOT / "jobs").rglob("*.sql")):
        folder = sql_file.parent
        if "-- name:" not in sql_file.read_text():
            continue  # a whole-file statement (demo/hero_troops.sql: the demo's SQL handler)
        package = "tidegate." + ".".join(folder.relative_to(ROOT).parts)
        code = "\n".join(p.read_text() for p in (ROOT / "jobs").rglob("*.py"))
        for name in load(package, sql_file.name):
            if f'["{name}"]' not in code:
                unused.append(f"{sql_file.relative_to(ROOT)}: {name}")
    assert unused == []
