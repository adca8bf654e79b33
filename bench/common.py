"""Shared bench plumbing: a scratch database, the CLI, timing, process memory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import psutil
import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from tidegate.worker.db import libpq_url, make_engine, resolve_url

ROOT = Path(__file__).resolve().parent.parent
TIDEGATE = str(Path(sys.executable).parent / "tidegate")


def server_url() -> str:
    return resolve_url(os.environ.get("TIDEGATE_BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL"))


@contextmanager
def scratch_database(server: str, keep: bool = False):  # type: ignore[no-untyped-def]
    """A fresh database with tidegate's and the demo's migrations applied."""
    from alembic import command
    from alembic.config import Config

    name = f"tg_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(server), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(libpq_url(server)).set(database=name).render_as_string(hide_password=False)
    for section in ("alembic", "demo"):
        cfg = Config(str(ROOT / "alembic.ini"), ini_section=section)
        cfg.attributes["url"] = url
        command.upgrade(cfg, "head")
    try:
        yield url
    finally:
        if not keep:
            with psycopg.connect(libpq_url(server), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cli(url: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([TIDEGATE, "--log-level", "WARNING", *args], capture_output=True, text=True,
                          env={**os.environ, "DATABASE_URL": url, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"tidegate {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout.strip()


class Sampler:
    """A thread that samples (``_run``, until ``_stop`` is set) while the ``with`` block runs."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


class PeakRss(Sampler):
    """Samples the resident memory of a process's children every 0.2 s; keeps the peak per child."""

    def __init__(self, pid: int, probe: Callable[[], float] | None = None, every: float = 2.0) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        # with a probe (the run's progress, 0..1): (progress, largest child RSS in MiB) every ``every`` s
        self.probe = probe
        self.every = every
        self.trace: list[tuple[float, float]] = []
        super().__init__()

    def _run(self) -> None:
        next_probe = time.monotonic()
        while not self._stop.wait(0.2):
            try:
                children = psutil.Process(self.pid).children()
                now_mb = max((c.memory_info().rss / 2**20 for c in children), default=0.0)
            except psutil.Error:
                continue
            self.peak_mb = max(self.peak_mb, now_mb)
            if self.probe is not None and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + self.every
                try:
                    self.trace.append((self.probe(), now_mb))
                except Exception:  # noqa: BLE001 - a missed sample, not a failed bench
                    continue

    def at(self, progress: float) -> float | None:
        """The largest child RSS sampled at the first probe that reached ``progress`` (0..1)."""
        return next((mb for p, mb in self.trace if p >= progress), None)


def run_pool(url: str, concurrency: int, *extra: str, env: dict[str, str] | None = None,
             exe: str | None = None) -> tuple[float, float]:
    """`tidegate worker --drain` (``exe``: another tidegate executable) until it exits; (seconds, peak
    worker RSS in MiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen([exe or TIDEGATE, "--log-level", "WARNING", "worker", "--concurrency", str(concurrency),
                             "--drain", "--allow-sql", *extra], env={**os.environ, "DATABASE_URL": url, **(env or {})})
    with PeakRss(proc.pid) as rss:
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"worker pool exited {code}")
    return time.perf_counter() - started, rss.peak_mb


def reset(engine: Engine, *tables: str) -> None:
    with engine.begin() as conn:
        for table in tables:
            conn.execute(text(f"TRUNCATE {table}"))  # bench-owned fixed names, not input
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        conn.execute(text("CHECKPOINT"))


def engine_for(url: str) -> Engine:
    return make_engine(url, application_name="tidegate-bench")


def run_pool_logged(url: str, concurrency: int, *extra: str, env: dict[str, str] | None = None,
                    timeouts: list[dict] | None = None, slices: list[dict] | None = None,
                    maintenance: bool = False, rss: PeakRss | None = None) -> tuple[float, float, list[dict]]:
    """Like :func:`run_pool`, with JSON debug logs: (seconds, peak RSS, one record per batch).
    Batches cut short by their statement timeout (rolled back, retried smaller) go to ``timeouts``; the
    workers' per-slice phase sums (worker/runner.py "slice times") to ``slices``. ``maintenance``: keep the
    pool's maintenance on, as `run_pool` does. ``rss``: a PeakRss made for the pool's pid (set here)."""
    import json
    import tempfile

    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as logfile:
        proc = subprocess.Popen([TIDEGATE, "--log-level", "DEBUG", "--log-format", "json", "worker",
                                 "--concurrency", str(concurrency), "--drain",
                                 *([] if maintenance else ["--no-maintenance"]), "--allow-sql", *extra],
                                env={**os.environ, "DATABASE_URL": url, **(env or {})}, stderr=logfile)
        if rss is None:
            rss = PeakRss(proc.pid)
        rss.pid = proc.pid
        with rss:
            code = proc.wait()
        logfile.seek(0)
        lines = logfile.read().splitlines()
    if code != 0:
        raise RuntimeError(f"worker pool exited {code}:\n" + "\n".join(lines[-20:]))
    batches = []
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("level") == "debug" and "seconds" in doc and "rows" in doc and "lo" in doc:
            batches.append(doc)
        elif slices is not None and "slice_times" in doc:
            slices.append(doc)
        elif timeouts is not None and "batch timed out" in str(doc.get("msg", "")):
            timeouts.append(doc)
    return time.perf_counter() - started, rss.peak_mb, batches


def ts(doc: dict) -> float:
    """A JSON log line's time as seconds since the epoch."""
    import datetime

    return datetime.datetime.strptime(doc["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def seed(url: str, rows: int, base: int = 100_000) -> None:
    """``rows`` demo snapshots, one user each: `demo seed` makes the first ``base`` (its JSON
    generator is slow), copies shifted in time and user id make the rest."""
    first = min(rows, base)
    cli(url, "demo", "seed", "--rows", str(first), "--users", str(first))
    engine = engine_for(url)
    for k in range(1, -(-rows // first)):
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO hero_snapshots (user_id, namecode, created_at, size_bytes, raw)"
                " SELECT user_id + CAST(:k AS bigint) * :n, namecode,"
                " created_at + make_interval(secs => CAST(:k AS bigint) * :n * 30.0),"
                " size_bytes, raw FROM hero_snapshots WHERE id <= :take ORDER BY id"),
                {"k": k, "n": first, "take": min(first, rows - k * first)})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE hero_snapshots"))
    engine.dispose()


# tidegate's own connections (workers, pool, maintenance, metrics), not the bench's or the CLI's
POOL_CONNECTIONS = ("SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s)"
                    " AND application_name LIKE 'tidegate-%%'"
                    " AND application_name NOT IN ('tidegate-bench', 'tidegate-cli')")


class ConnectionPeak(Sampler):
    """Samples pg_stat_activity every 0.1 s: the most connections tidegate's processes held at once in
    the databases named (from a connection of its own to the server's maintenance database)."""

    def __init__(self, server: str, databases: list[str]) -> None:
        self.server = libpq_url(server)
        self.databases = databases
        self.peak = 0
        super().__init__()

    def _run(self) -> None:
        with psycopg.connect(self.server, autocommit=True, application_name="tidegate-bench") as conn:
            while True:
                row = conn.execute(POOL_CONNECTIONS, (self.databases,)).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)
                if self._stop.wait(0.1):
                    return


SPAN = ("SELECT to_char((min(created_at) - interval '1 second') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
        " to_char((max(created_at) + interval '1 second') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
        " FROM hero_snapshots")


def data_range(url: str) -> tuple[str, str, str, str]:
    """``--from``/``--to`` just around the demo snapshots' created_at. A range far wider than the keys (to
    2100, say) ends in a run of empty slices, each halving what is left and each a claim of its own."""
    engine = engine_for(url)
    with engine.connect() as conn:
        lo, hi = conn.execute(text(SPAN)).one()
    engine.dispose()
    return ("--from", lo, "--to", hi)
