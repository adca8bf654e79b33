"""One pool over several target databases (issue 15 point 2): fair claims, a database that goes down or
is gated is skipped while the others finish exactly, a bounded number of connections, a SIGKILL storm
that ends with each database exactly like a clean run, and metrics labelled by target."""

from __future__ import annotations

import random
import re
import signal
import time
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from tests import pg
from tests.conftest import job_row, pool_starter, run_cli, scalar, target_databases, targets_env, wait_for
from tests.fixtures import LOG_HANDLER, SLOW_LOG_HANDLER, log_report, make_items
from tests.ports import free_port
from tidegate.worker.db import libpq_url

NAMES = ("t_a", "t_b", "t_c")
pytestmark = pytest.mark.xdist_group("multi_targets")


@pytest.fixture
def shards(pg_server: str, template: str) -> Iterator[dict[str, tuple[str, Engine]]]:
    """Three databases from the template (migrated), each with items(k) and processed_log."""
    with target_databases(pg_server, template, NAMES) as found:
        yield found


env_of = targets_env


def enqueue(shards: dict, tmp_path, name: str, sql: str, *, rows: int, batch: int = 50, concurrency: int = 2) -> str:
    handler = tmp_path / f"h-{abs(hash(sql))}.sql"
    handler.write_text(sql)
    out = run_cli(shards[name][0], "enqueue", "backfill-range", "--target", name, "--source", "items", "--key", "k",
                  "--from", "1", "--to", str(rows + 1), "--handler", f"sql:{handler}", "--batch-size", str(batch),
                  "--concurrency", str(concurrency), "--owner", "tests", env=env_of(shards))
    return out.stdout.strip()


def exact(engine: Engine) -> bool:
    r = log_report(engine)
    return r["logged"] == r["items"] == r["distinct_keys"] and r["missing"] == 0


def status(engine: Engine, job: str) -> str:
    return job_row(engine, job).status


def dbname(url: str) -> str:
    return make_url(url).database


def test_bad_target_lists_are_refused(shards, tmp_path):
    env = env_of(shards)
    url = shards["t_a"][0]
    for bad, code in (("t_a,nope", 2), ("t_a,../x", 2), ("", 2)):
        out = run_cli(url, "worker", "--targets", bad, "--drain", env=env, check=False)
        assert out.returncode == code, (bad, out.stderr)
    with pg.admin(shards["t_c"][0]) as conn:
        conn.execute("DROP TABLE tidegate_alembic_version")  # t_c now looks unmigrated
    out = run_cli(url, "worker", "--targets", "t_a,t_c", "--drain", env=env, check=False)
    assert out.returncode == 5 and "target t_c" in out.stderr and "db upgrade --target t_c" in out.stderr


def test_a_pool_over_targets_does_not_touch_database_url(shards, pg_server, tmp_path):
    """With --targets the pool serves the targets only: $DATABASE_URL naming a database without tidegate's
    tables (the server's maintenance database) neither fails the start nor is connected to."""
    for _, engine in shards.values():
        make_items(engine, 100)
    jobs = {n: enqueue(shards, tmp_path, n, LOG_HANDLER, rows=100) for n in NAMES}
    out = run_cli(pg_server, "worker", "--targets", ",".join(NAMES), "-c", "1", "--drain", "--allow-sql",
                  env=env_of(shards), check=False)
    assert out.returncode == 0, out.stderr
    for n in NAMES:
        assert status(shards[n][1], jobs[n]) == "done" and exact(shards[n][1]), n


def test_a_database_down_mid_run_does_not_stall_the_others(shards, pg_server, tmp_path):
    """t_b is made unreachable mid-run (ALLOW_CONNECTIONS false, its backends terminated): t_a and t_c
    finish exactly while it is down; t_b finishes exactly once it is back. The pool drains out only then."""
    for _, engine in shards.values():
        make_items(engine, 1500)
    jobs = {n: enqueue(shards, tmp_path, n, SLOW_LOG_HANDLER.replace(":delay", "0.02"), rows=1500) for n in NAMES}
    with pool_starter(shards["t_a"][0], tmp_path, env_of(shards)) as start:
        pool = start("--targets", ",".join(NAMES), "-c", "2", "--drain", "--lease", "2", "--poll", "0.2",
                     "--slice-quantum", "0.5")
        b_url, b_engine = shards["t_b"]
        wait_for(lambda: scalar(b_engine, "SELECT count(*) FROM processed_log") >= 200, what="t_b under way")
        with pg.admin(pg_server) as conn:
            conn.execute(f'ALTER DATABASE "{dbname(b_url)}" ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                         (dbname(b_url),))
        b_engine.dispose()
        try:
            for n in ("t_a", "t_c"):
                wait_for(lambda n=n: status(shards[n][1], jobs[n]) == "done", timeout=180, what=f"{n} done")
                assert exact(shards[n][1]), n
            assert pool.proc.poll() is None  # still waiting for t_b: not drained out
        finally:
            with pg.admin(pg_server) as conn:
                conn.execute(f'ALTER DATABASE "{dbname(b_url)}" ALLOW_CONNECTIONS true')
        assert pool.wait(180) == 0
    assert status(b_engine, jobs["t_b"]) == "done"
    assert exact(b_engine)
    assert "target t_b unavailable" in pool.output() and "target t_b is back" in pool.output()


def test_a_gated_database_is_skipped_and_gates_are_per_target(shards, tmp_path):
    """A long transaction in t_b holds t_b's job (its gate, its database); t_a and t_c are not held and
    finish; t_b finishes once the transaction ends."""
    for _, engine in shards.values():
        make_items(engine, 600)
    b_url = shards["t_b"][0]
    blocker = psycopg.connect(libpq_url(b_url), application_name="blocker")
    try:
        blocker.execute("SELECT txid_current()")  # a transaction open from now on
        jobs = {n: enqueue(shards, tmp_path, n, LOG_HANDLER, rows=600) for n in NAMES}
        with pool_starter(shards["t_a"][0], tmp_path, env_of(shards)) as start:
            pool = start("--targets", ",".join(NAMES), "-c", "1", "--drain", "--poll", "0.2",
                         "--gate-long-transactions", "0.5")
            for n in ("t_a", "t_c"):
                wait_for(lambda n=n: status(shards[n][1], jobs[n]) == "done", timeout=120, what=f"{n} done")
                assert exact(shards[n][1]), n
            b_engine = shards["t_b"][1]
            wait_for(lambda: job_row(b_engine, jobs["t_b"]).held_by == "long_transactions", what="t_b held")
            assert scalar(b_engine, "SELECT count(*) FROM processed_log") == 0
            blocker.rollback()
            assert pool.wait(120) == 0
    finally:
        blocker.close()
    assert exact(shards["t_b"][1])
    for n in ("t_a", "t_c"):
        assert job_row(shards[n][1], jobs[n]).held_by is None


def test_claims_are_fair_across_targets(shards, tmp_path):
    """One worker process, three one-slice jobs: without per-claim round robin it would run one job to its
    end, then the next. Each target's first batch must come before any target's last batch."""
    for _, engine in shards.values():
        make_items(engine, 600)
    for n in NAMES:
        enqueue(shards, tmp_path, n, SLOW_LOG_HANDLER.replace(":delay", "0.02"), batch=20, concurrency=1, rows=600)
    with pool_starter(shards["t_a"][0], tmp_path, env_of(shards)) as start:
        pool = start("--targets", ",".join(NAMES), "-c", "1", "--drain", "--poll", "0.2", "--slice-quantum", "0.3")
        assert pool.wait(180) == 0
    spans = {}
    for n, (_, engine) in shards.items():
        assert exact(engine), n
        with engine.connect() as conn:
            spans[n] = conn.execute(text("SELECT extract(epoch FROM min(at)), extract(epoch FROM max(at))"
                                         " FROM processed_log")).one()
    first_end = min(end for _, end in spans.values())
    assert all(start < first_end for start, _ in spans.values()), spans
    ends = sorted(float(end) for _, end in spans.values())
    total = ends[-1] - min(float(s) for s, _ in spans.values())
    print(f"finish spread {ends[-1] - ends[0]:.2f}s of {total:.2f}s total")


def test_connections_stay_within_the_documented_bound(shards, pg_server, tmp_path):
    """-c 2 over 3 targets with --max-open-targets 2: at most 2 x 2 x 4 worker connections in all, at most
    2 x 4 (+3 of the supervisor) in any one database, sampled from pg_stat_activity all along the run."""
    for _, engine in shards.values():
        make_items(engine, 1500)
    jobs = {n: enqueue(shards, tmp_path, n, SLOW_LOG_HANDLER.replace(":delay", "0.01"), rows=1500) for n in NAMES}
    dbs = {dbname(u): n for n, (u, _) in shards.items()}
    peak_total, peak_db = 0, dict.fromkeys(NAMES, 0)
    with pool_starter(shards["t_a"][0], tmp_path, env_of(shards)) as start:
        pool = start("--targets", ",".join(NAMES), "-c", "2", "--drain", "--poll", "0.2", "--slice-quantum", "0.3",
                     "--max-open-targets", "2")
        with pg.admin(pg_server) as conn:
            while pool.proc.poll() is None:
                rows = conn.execute("SELECT datname, application_name FROM pg_stat_activity"
                                    " WHERE datname = ANY(%s) AND application_name LIKE 'tidegate%%'",
                                    (list(dbs),)).fetchall()
                workers = [d for d, app in rows if app.startswith("tidegate-worker")]
                peak_total = max(peak_total, len(workers))
                for d, n in dbs.items():
                    peak_db[n] = max(peak_db[n], sum(1 for r in rows if r[0] == d))
                time.sleep(0.05)
        assert pool.wait(10) == 0
    for n, (_, engine) in shards.items():
        assert status(engine, jobs[n]) == "done" and exact(engine), n
    print(f"peak worker connections {peak_total} (bound 16); per database {peak_db} (bound 11)")
    assert 0 < peak_total <= 2 * 2 * 4
    assert all(v <= 2 * 4 + 3 for v in peak_db.values()), peak_db


def test_kill_storm_over_three_targets_ends_exact_in_each(shards, tmp_path):
    """SIGKILL a random worker process every 0.2-1 s while a pool serves three databases: each ends with
    every key processed exactly once, as a clean run."""
    for _, engine in shards.values():
        make_items(engine, 3000)
    jobs = {n: enqueue(shards, tmp_path, n, SLOW_LOG_HANDLER.replace(":delay", "0.1"), batch=50, concurrency=3,
                       rows=3000) for n in NAMES}
    rng = random.Random(15)
    kills = 0
    with pool_starter(shards["t_a"][0], tmp_path, env_of(shards)) as start:
        # --max-worker-deaths: kills this dense can land three in a row in one job's batches, which fails
        # the job as poison (worker/deadline.py), a rule of its own tested in tests/test_poison_chaos.py
        pool = start("--targets", ",".join(NAMES), "-c", "3", "--lease", "1", "--poll", "0.2",
                     "--slice-quantum", "0.5", "--max-worker-deaths", "1000")
        pool.wait_workers(3)

        def all_done() -> bool:
            return all(status(shards[n][1], jobs[n]) == "done" for n in NAMES)

        while kills < 10 and not all_done():  # more only lengthens the pool's restart backoff (up to 60 s a slot)
            time.sleep(rng.uniform(0.2, 1.0))
            workers = pool.workers()
            if workers:
                rng.choice(workers).send_signal(signal.SIGKILL)
                kills += 1
        try:
            wait_for(all_done, timeout=240, what="every target's job done")
        except AssertionError as err:  # say where each job stands and why
            rows = {n: (r.status, r.status_reason) for n in NAMES if (r := job_row(shards[n][1], jobs[n]))}
            raise AssertionError(f"{err}: {rows}\n{pool.output()[-3000:]}") from None
        assert pool.terminate() == 0
    assert kills >= 5
    for n, (_, engine) in shards.items():
        assert exact(engine), (n, log_report(engine))
    print(f"{kills} SIGKILLs over 3 targets")


def test_metrics_carry_a_target_label(shards, tmp_path):
    for _, engine in shards.values():
        make_items(engine, 200)
    for n in NAMES:
        enqueue(shards, tmp_path, n, LOG_HANDLER, rows=200)
    port = free_port()
    with pool_starter(shards["t_a"][0], tmp_path, env_of(shards)) as start:
        pool = start("--targets", ",".join(NAMES), "-c", "1", "--poll", "0.2", "--metrics-port", str(port))
        for n in NAMES:
            wait_for(lambda n=n: exact(shards[n][1]), timeout=120, what=f"{n} done")

        def scrape() -> str:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                return ""

        body = wait_for(lambda: (b := scrape()) and all(
            f'tidegate_batches_total{{kind="backfill_range",target="{n}"}}' in b for n in NAMES) and b,
            timeout=60, what="labelled counters")
        for n in NAMES:
            assert f'tidegate_database_up{{target="{n}"}} 1.0' in body
            assert f'tidegate_jobs{{kind="backfill_range",status="done",target="{n}"}} 1.0' in body
        assert body.count("# HELP tidegate_database_up ") == 1
        assert pool.terminate() == 0


def test_sixteen_targets_over_eight_open_each_finish_in_a_turn_not_a_unit_at_a_time(pg_server, template, tmp_path):
    """16 targets, --max-open-targets 8, one process (issue 15): every target's job finishes exactly, and a
    target with work keeps its turn. Served one unit at a time (a plan, then a slice, then the next target),
    each unit of each job opened its target anew: a connection and a registration, some 4 opens a target."""
    names = tuple(f"t{i:02d}" for i in range(16))
    with target_databases(pg_server, template, names) as dbs:
        for _, engine in dbs.values():
            make_items(engine, 200)
        jobs = {n: enqueue(dbs, tmp_path, n, LOG_HANDLER, rows=200, batch=20) for n in names}
        with pool_starter(dbs[names[0]][0], tmp_path, env_of(dbs)) as start:
            # --poll 60: no second look at a finished target within the run, so the opens are the turns'
            pool = start("--targets", ",".join(names), "-c", "1", "--drain", "--poll", "60",
                         "--max-open-targets", "8")
            assert pool.wait(300) == 0, pool.output()[-2000:]
        for n, (_, engine) in dbs.items():
            assert status(engine, jobs[n]) == "done" and exact(engine), n
        opened = re.search(r"targets opened (\d+) times", pool.output())
        assert opened is not None, pool.output()[-2000:]
        assert len(names) <= int(opened[1]) <= 2 * len(names), opened[0]
