"""Alembic up and down, the CLI's help and status output."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import click
from click.testing import CliRunner
from sqlalchemy import text

from tests.conftest import ROOT, job_row, run_cli, scalar
from tests.fixtures import seed_demo
from tidegate.worker import schema
from tidegate.worker.db import make_engine

TABLES = {"queue_jobs", "backfill_jobs", "backfill_slices", "etl_errors", "tidegate_audit", "tidegate_workers",
          "tidegate_sql_approved"}


def _tables(engine) -> set[str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))}


def test_tidegate_db_upgrade_downgrade_and_alembic_itself(empty_db):
    engine = make_engine(empty_db)
    assert "base" in run_cli(empty_db, "db", "current").stdout
    run_cli(empty_db, "db", "upgrade")
    assert run_cli(empty_db, "db", "current").stdout.strip() == ",".join(schema.revisions()[0])
    assert TABLES <= _tables(engine)
    run_cli(empty_db, "db", "downgrade", "base")
    assert not (TABLES & _tables(engine))
    # plain alembic works too, from the project directory, with the URL from DATABASE_URL
    alembic = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, capture_output=True,
                             text=True, env={**__import__("os").environ, "DATABASE_URL": empty_db})
    assert alembic.returncode == 0, alembic.stderr
    assert TABLES <= _tables(engine)
    engine.dispose()


def test_roles_granted_before_the_live_workers_view_can_read_it_after_the_upgrade(empty_db):
    """A pool's role from ops/roles.sql, applied before migration 0011, reads tidegate_workers: the upgrade
    lets it read the view its claims now go through, so its workers keep claiming after the deploy."""
    role = f"tg_old_{uuid.uuid4().hex[:8]}"
    engine = make_engine(empty_db)
    run_cli(empty_db, "db", "upgrade", "0010")
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE ROLE {role} NOLOGIN"))
            conn.execute(text(f"GRANT SELECT ON tidegate_workers TO {role}"))
        run_cli(empty_db, "db", "upgrade")
        assert scalar(engine, "SELECT has_table_privilege(:r, 'tidegate_live_workers', 'SELECT')", r=role) is True
        run_cli(empty_db, "db", "downgrade", "0010")
        assert scalar(engine, "SELECT to_regclass('tidegate_live_workers')") is None
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        engine.dispose()


def test_checkpoint_tables_leave_room_for_hot_updates(engine):
    with engine.connect() as conn:
        options = dict(conn.execute(text(
            "SELECT relname, reloptions::text FROM pg_class WHERE relname IN ('backfill_jobs', 'backfill_slices')")).all())
        indexed = {r[0] for r in conn.execute(text(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid IN ('backfill_jobs'::regclass, 'backfill_slices'::regclass)"))}
    assert all("fillfactor=50" in v for v in options.values())
    # nothing a batch updates is indexed, so the per-batch updates stay HOT
    assert not indexed & {"processed_count", "error_count", "last_checkpoint", "checkpoint", "updated_at", "batches"}


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


def test_every_command_has_help():
    from tidegate.worker import cli as cli_module

    for command in __import__("tidegate.worker.kinds", fromlist=["x"]).plugin_commands():
        target = cli_module.enqueue if getattr(command, "tidegate_enqueue", False) else cli_module.cli
        target.add_command(command)
    paths = list(_commands(cli_module.cli))
    assert ("enqueue", "backfill-range") in paths and ("worker",) in paths and ("db", "upgrade") in paths
    runner = CliRunner()
    for path in paths:  # in process: one interpreter start per command would cost ~1 s each
        out = runner.invoke(cli_module.cli, [*path, "--help"])
        assert out.exit_code == 0 and "Usage:" in out.output and "--help" in out.output, (path, out.output)
    real = subprocess.run([sys.executable, "-m", "tidegate.worker.cli", "--help"], capture_output=True, text=True)
    assert real.returncode == 0 and "enqueue" in real.stdout and "worker" in real.stdout, real.stderr


def test_status_shows_progress_and_json(engine, db_url):
    seed_demo(engine, 1000)
    job = run_cli(db_url, "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2025-01-01",
                  "--batch-size", "100", "--owner", "data-team").stdout.strip()
    queued = json.loads(run_cli(db_url, "status", "--json").stdout)
    assert queued[0]["job_id"] == job and queued[0]["status"] == "pending"
    run_cli(db_url, "worker", "--drain")
    table = run_cli(db_url, "status").stdout
    assert job[:8] in table and "done" in table and "1000" in table and "100%" in table
    doc = json.loads(run_cli(db_url, "status", job[:8], "--json").stdout)
    assert doc["processed_count"] == 1000 and doc["owner"] == "data-team" and doc["slices_done"] == 1
    assert doc["error_count"] == scalar(engine, "SELECT count(*) FROM etl_errors")


def test_database_passwords_never_reach_output(db_url):
    url = "postgresql://tidegate:s3cret-pw@127.0.0.1:1/nowhere"
    proc = run_cli(url, "status", check=False)
    assert proc.returncode != 0
    assert "s3cret-pw" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_watch_redraws_a_live_table(engine, db_url):
    import os
    import signal
    import time

    from tests.conftest import CHILD_ENV, TIDEGATE
    from tidegate.worker.watch import RecentRate

    seed_demo(engine, 500)
    job = run_cli(db_url, "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2025-01-01",
                  "--owner", "sre").stdout.strip()
    run_cli(db_url, "worker", "--drain")
    proc = subprocess.Popen([TIDEGATE, "status", "--watch", "--interval", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **CHILD_ENV, "DATABASE_URL": db_url, "COLUMNS": "200"})
    # interrupt it once it is watching (its connection is open), not after a fixed sleep: on a loaded machine
    # the command may still be importing after seconds. Without a terminal, Live draws its last frame at exit.
    from tests.conftest import wait_for

    wait_for(lambda: scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                    " AND application_name = 'tidegate-cli'"), timeout=120, what="the watch to connect")
    time.sleep(1.0)  # a few of its 0.2 s rounds
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert job[:8] in out and "done" in out and "100.0%" in out, err
    rates = RecentRate()  # rows/s over the last minute, from the watcher's own samples
    assert rates.update("j", 0, 0.0) is None
    assert rates.update("j", 600, 10.0) == 60.0
    assert rates.update("j", 600, 70.0) == 0.0  # the first sample fell out of the window


def test_json_logs_carry_job_slice_bounds_and_counts(engine, db_url):
    seed_demo(engine, 600)
    job = run_cli(db_url, "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2025-01-01",
                  "--batch-size", "100", "--owner", "sre").stdout.strip()
    proc = run_cli(db_url, "--log-format", "json", "worker", "--drain", "--progress-every", "2")
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert all({"ts", "level", "msg", "process"} <= set(doc) for doc in lines)
    progress = [d for d in lines if d.get("job_id") == job and "lo" in d]
    assert len(progress) >= 3
    assert all(d["slice"] == 0 and d["rows"] > 0 and "hi" in d and "job_processed" in d for d in progress)
    assert any(d.get("status") == "done" and d.get("job_id") == job for d in lines)


def test_the_demo_as_make_run_runs_it_and_the_sql_handler_gives_the_same_table(engine, db_url):
    # make run's steps, smaller: seed, enqueue, a 2-process pool to the end, status, check
    run_cli(db_url, "demo", "seed", "--rows", "3000")
    assert scalar(engine, "SELECT count(*) FROM hero_snapshots") == 3000
    job = run_cli(db_url, "enqueue", "backfill-range", "--from", "2024-01-01T00:00:00Z", "--to",
                  "2030-01-01T00:00:00Z", "--handler", "hero_troops", "--batch-size", "500", "--concurrency", "2",
                  "--owner", "demo").stdout.strip()
    run_cli(db_url, "worker", "--concurrency", "2", "--drain")
    assert job[:8] in run_cli(db_url, "status", "--limit", "5").stdout
    python = json.loads(run_cli(db_url, "demo", "check").stdout)
    row = job_row(engine, job)
    assert (row.status, row.processed_count) == ("done", 3000)
    assert row.error_count == scalar(engine, "SELECT count(*) FROM etl_errors WHERE job_id = :j", j=job) > 0
    assert python["user_troops_rows"] > 3000

    run_cli(db_url, "demo", "seed", "--rows", "3000")  # same rows kept, user_troops emptied
    assert scalar(engine, "SELECT count(*) FROM user_troops") == 0
    handler = Path(__file__).resolve().parent.parent / "jobs/demo/hero_troops.sql"
    run_cli(db_url, "enqueue", "backfill-range", "--source", "hero_snapshots", "--key", "created_at", "--from",
            "2024-01-01T00:00:00Z", "--to", "2030-01-01T00:00:00Z", "--handler", f"sql:{handler}", "--batch-size",
            "500", "--owner", "demo")
    run_cli(db_url, "worker", "--drain")
    assert json.loads(run_cli(db_url, "demo", "check").stdout) == python


# What `tidegate worker` imports before it forks its workers, and what it must not (bench/RESULTS.md, pool
# start): each of these cost the pool's start without being used by it.
NOT_FOR_A_POOL = ["prometheus_client", "http.server", "urllib.request", "alembic", "rich", "tidegate.jobs.cli",
                  "tidegate.jobs.archive.cli", "tidegate.jobs.inspect", "tidegate.jobs.rollout",
                  "tidegate.worker.control", "tidegate.worker.status", "tidegate.worker.web"]
# the console script (worker/entry.py) with run_pool replaced by a report of the process at the fork
_AT_THE_FORK = """
import atexit, gc, json, sys
from tidegate.worker import entry
import tidegate.worker.pool as pool

def report(*args, **kwargs):
    print(json.dumps({"gc": gc.isenabled(), "frozen": gc.get_freeze_count(),
                      "imported": [m for m in sys.argv[1].split(",") if m in sys.modules],
                      "kinds": sorted(__import__("tidegate.worker.kinds", fromlist=["x"]).kinds())}))
    return 0

pool.run_pool = report
atexit.register(lambda: print(json.dumps({"gc_at_exit": gc.isenabled()})))
sys.argv = ["tidegate", *sys.argv[2:]]
entry.main()
"""


def _console(db_url: str, *args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", _AT_THE_FORK, ",".join(NOT_FOR_A_POOL), *args], capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ, "DATABASE_URL": db_url})
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_a_pool_starts_without_the_cli_commands_metrics_or_alembic_and_with_the_collector_back_on(db_url):
    at_fork, at_exit = _console(db_url, "--log-level", "WARNING", "worker", "--drain")
    assert at_fork["imported"] == [], at_fork  # each one is imported by the code that uses it, when it runs
    assert {"backfill_range", "archive_range"} <= set(at_fork["kinds"])
    # paused while the pool's code was imported, back on (over the imported objects, frozen) before the fork
    assert at_fork["gc"] is True and at_fork["frozen"] > 10_000, at_fork
    assert at_exit == {"gc_at_exit": True}
    # any other command: back on once its group's options are parsed, and its commands found on demand
    *_, at_exit = _console(db_url, "targets", "list", "--json")
    assert at_exit == {"gc_at_exit": True}
    assert "backfill-range" in run_cli(db_url, "enqueue", "--help").stdout
    assert "--handler" in run_cli(db_url, "enqueue", "backfill-range", "--help").stdout


def test_metrics_are_created_at_first_use_all_together():
    code = ("import sys; from tidegate.worker import metrics; assert 'prometheus_client' not in sys.modules;"
            " metrics.BATCHES.labels('k').inc();"
            " from prometheus_client import REGISTRY;"
            " print(sorted(n for n in REGISTRY._names_to_collectors if n.endswith('_total')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert {"tidegate_batches_total", "tidegate_rows_processed_total", "tidegate_gate_holds_total",
            "tidegate_one_shot_jobs_total"} <= set(json.loads(proc.stdout.replace("'", '"')))
