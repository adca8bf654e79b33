"""Queue overhead: the same no-op jobs drained by tidegate, PgQueuer and Procrastinate.

All three run in one scratch database, one after the other, each with its own schema and its
own normal worker as separate OS processes (1 and 2 of them: the machine has 2 cores):

* tidegate: `tidegate worker --concurrency P --drain --no-maintenance`, the `noop` kind loaded
  through $TIDEGATE_PLUGINS (bench/noop_kind.py, the registry real kinds use); one-shot jobs are
  claimed (and marked done by the same statement) 50 per transaction (WorkerConfig.claim_batch).
* PgQueuer: P processes, each `QueueManager.run(batch_size=50, mode=drain)`, async no-op entrypoint.
* Procrastinate: P processes, each `run_worker_async(concurrency=10, wait=False)`, async no-op task;
  only at the largest P (it drains a few hundred jobs/s here, so each run takes minutes).

Jobs are enqueued in bulk before the clock starts. A run's time is launch-to-exit of its
processes minus the same command's launch-to-exit on an empty queue (imports, connections,
drain check), so startup cost does not count against a system; both are reported.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import time

import psycopg
from sqlalchemy import text

from bench.common import ROOT, TIDEGATE, engine_for, scratch_database, server_url

ENV = {"TIDEGATE_PLUGINS": "bench.noop_kind", "PYTHONPATH": str(ROOT)}
PEER = [sys.executable, "-m", "bench.peers"]


def _timed(cmds: list[list[str]], url: str) -> float:
    started = time.perf_counter()
    procs = [subprocess.Popen(c, env={**os.environ, **ENV, "DATABASE_URL": url}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(p.args)} exited {p.returncode}:\n{err[-2000:]}")
    return time.perf_counter() - started


def _sql(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)  # bench-owned fixed statements
        row = cur.fetchone() if cur.description else None
    return int(row[0]) if row and row[0] is not None else 0


def _tidegate(url: str, jobs: int, procs: int) -> tuple[float, float, int]:
    cmd = [[TIDEGATE, "--log-level", "WARNING", "worker", "--concurrency", str(procs), "--drain", "--no-maintenance"]]
    _sql(url, "TRUNCATE queue_jobs CASCADE")
    empty = _timed(cmd, url)
    _sql(url, f"INSERT INTO queue_jobs (type, payload) SELECT 'noop', '{{}}' FROM generate_series(1, {int(jobs)})")
    _sql(url, "VACUUM ANALYZE queue_jobs")
    seconds = _timed(cmd, url)
    return seconds, empty, _sql(url, "SELECT count(*) FROM queue_jobs WHERE type = 'noop' AND status = 'done'")


def _peer(system: str, url: str, jobs: int, procs: int, batch: int, concurrency: int) -> tuple[float, float, int]:
    cmd = [*PEER, system, "work", url, "--batch", str(batch), "--concurrency", str(concurrency)]
    empty = _timed([cmd] * procs, url)
    subprocess.run([*PEER, system, "enqueue", url, "--jobs", str(jobs)], check=True, capture_output=True)
    table = "pgqueuer" if system == "pgqueuer" else "procrastinate_jobs"
    _sql(url, f"VACUUM ANALYZE {table}")
    seconds = _timed([cmd] * procs, url)
    if system == "pgqueuer":
        done = jobs - _sql(url, "SELECT count(*) FROM pgqueuer")  # finished jobs leave the table
    else:
        done = _sql(url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
        _sql(url, "TRUNCATE procrastinate_jobs CASCADE")
    return seconds, empty, done


SYSTEMS = ("tidegate", "pgqueuer", "procrastinate")


def run(url: str | None = None, jobs: int = 20_000, processes: tuple[int, ...] = (1, 2),
        systems: tuple[str, ...] = SYSTEMS, repeats: int = 3) -> dict:
    """Each system and process count drains ``jobs`` fresh jobs ``repeats`` times, the systems taking
    turns; the median counts (at 20,000 jobs a drain takes a second or two, so one run swings)."""
    server = url or server_url()
    out: dict = {"jobs": jobs, "runs": [], "repeats": repeats}
    with scratch_database(server) as db:
        libpq = db
        engine = engine_for(db)
        with engine.connect() as conn:
            out["server"] = conn.execute(text("SHOW server_version")).scalar()
        engine.dispose()
        out["versions"] = {name: md.version(name) for name in ("pgqueuer", "procrastinate")}
        for system in set(systems) - {"tidegate"}:
            subprocess.run([*PEER, system, "install", libpq], check=True, capture_output=True)
        for procs in processes:
            tries: dict[str, list[dict]] = {}
            for attempt in range(repeats):
                for system in systems:
                    if system == "procrastinate" and (procs != max(processes) or attempt > 0):
                        continue  # a few hundred jobs/s here: once, at its best setting, to keep make bench short
                    if system == "tidegate":
                        seconds, empty, done = _tidegate(libpq, jobs, procs)
                    else:
                        seconds, empty, done = _peer(system, libpq, jobs, procs, batch=50, concurrency=10)
                    net = max(seconds - empty, 1e-3)
                    tries.setdefault(system, []).append({"seconds": seconds, "startup": empty,
                                                         "jobs_per_s": jobs / net, "done": done})
                    print(f"{system} x{procs} #{attempt + 1}: {seconds:.1f}s (startup {empty:.1f}s)"
                          f" {jobs / net:,.0f} jobs/s, {done} done", flush=True)
            for system, runs in tries.items():
                mid = sorted(runs, key=lambda x: x["jobs_per_s"])[len(runs) // 2]
                out["runs"].append({"system": system, "processes": procs, **mid,
                                    "all_jobs_per_s": [x["jobs_per_s"] for x in runs],
                                    "done": min(x["done"] for x in runs)})
    return out


def report(r: dict) -> str:
    by = {(x["system"], x["processes"]): x for x in r["runs"]}
    v = r["versions"]
    lines = [f"### Queue overhead: {r['jobs']:,} no-op jobs (PostgreSQL {r['server']}; PgQueuer {v['pgqueuer']},"
             f" Procrastinate {v['procrastinate']})", "",
             f"| system | worker processes | seconds (launch to exit) | of which startup | jobs/s (net of startup),"
             f" median of {r['repeats']} | all runs, jobs/s | tidegate / this | all done |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["runs"]:
        tg = by[("tidegate", x["processes"])]
        runs = " / ".join(f"{j:,.0f}" for j in x["all_jobs_per_s"])
        lines.append(f"| {x['system']} | {x['processes']} | {x['seconds']:.1f} | {x['startup']:.1f} |"
                     f" {x['jobs_per_s']:,.0f} | {runs} | {tg['jobs_per_s'] / x['jobs_per_s']:.2f} |"
                     f" {'yes' if x['done'] == r['jobs'] else 'NO (' + str(x['done']) + ')'} |")
    lines += ["", "Settings: tidegate claims 50 one-shot jobs per transaction; PgQueuer batch_size=50; Procrastinate"
              " concurrency=10 per process (run once). Target: tidegate at least 1.5x PgQueuer."]
    return "\n".join(lines)
