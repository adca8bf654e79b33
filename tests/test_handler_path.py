"""Handler modules are found the way Python users expect (issue 17, point 5): a module in the current
directory, named by the deployment (--handlers, $TIDEGATE_HANDLERS), works without PYTHONPATH, in the CLI
and in every spawned worker process; a module a payload names is still never imported, even one lying in
that same directory."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import TIDEGATE, scalar
from tests.fixtures import log_report, make_items

pytestmark = pytest.mark.slow

MYMOD = """
from sqlalchemy import text

import myhelper  # a sibling module of the same directory: imports as in any script


def record(conn, row):
    conn.execute(text("INSERT INTO processed_log (k) VALUES (:k)"), {"k": myhelper.key(row)})
"""
MYHELPER = "def key(row):\n    return row['k']\n"
# what a payload might name: importing it at all leaves a mark
OTHERMOD = """
import pathlib

pathlib.Path(__file__).with_name("othermod-was-imported").write_text("imported")


def record(conn, row):
    pass
"""


def run(url: str, cwd: Path, *args: str, handlers: str | None = None) -> subprocess.CompletedProcess[str]:
    """`tidegate` in ``cwd`` as a user starts it there: no PYTHONPATH, no handler modules but ``handlers``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TIDEGATE_HANDLERS")}
    env.update(DATABASE_URL=url, **({"TIDEGATE_HANDLERS": handlers} if handlers else {}))
    return subprocess.run([TIDEGATE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_a_handler_module_of_the_current_directory_runs_in_a_pool_without_pythonpath(engine, db_url, tmp_path):
    make_items(engine, 1000)
    work = tmp_path / "deploy"
    work.mkdir()
    (work / "mymod.py").write_text(MYMOD)
    (work / "myhelper.py").write_text(MYHELPER)
    (work / "othermod.py").write_text(OTHERMOD)
    enqueue = ("enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to", "1000000",
               "--batch-size", "50", "--concurrency", "4", "--owner", "tests")

    # the CLI: the deployment names mymod, found in the current directory
    out = run(db_url, work, *enqueue, "--handler", "mymod:record", handlers="mymod")
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    # a module the deployment did not name is refused, though it lies in the same directory
    out = run(db_url, work, *enqueue, "--handler", "othermod:record", handlers="mymod")
    assert out.returncode == 2 and "is not available" in out.stderr, out.stderr
    # and so is a payload inserted by SQL that names it: the worker fails that job, imports nothing
    with engine.begin() as conn:
        sneaky = str(conn.execute(text(
            "INSERT INTO queue_jobs (type, payload) VALUES ('backfill_range', CAST(:p AS jsonb)) RETURNING id"),
            {"p": json.dumps({"source": "items", "key": "k", "from": "1", "to": "100", "owner": "x",
                              "handler": "othermod:record"})}).scalar())

    # the pool: --handlers mymod, 2 spawned processes, no PYTHONPATH
    pool = run(db_url, work, "worker", "--handlers", "mymod", "--concurrency", "2", "--drain", "--poll", "0.1",
               "--no-maintenance")
    assert pool.returncode == 0, pool.stdout + pool.stderr

    assert scalar(engine, "SELECT status FROM backfill_jobs WHERE job_id = :j", j=job) == "done"
    assert log_report(engine) == {"logged": 1000, "distinct_keys": 1000, "items": 1000, "missing": 0}
    assert scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=sneaky) == "failed"
    assert "is not available" in scalar(engine, "SELECT last_error FROM queue_jobs WHERE id = :j", j=sneaky)
    assert not (work / "othermod-was-imported").exists()


def test_a_module_named_nowhere_still_fails_the_start(db_url, tmp_path):
    out = run(db_url, tmp_path, "worker", "--handlers", "nosuchmod", "--drain")
    assert out.returncode == 2 and "no module 'nosuchmod'" in out.stderr, out.stderr
    out = run(db_url, tmp_path, "worker", "--handlers", "../etc", "--drain")
    assert out.returncode == 2 and "no module '../etc'" in out.stderr, out.stderr
