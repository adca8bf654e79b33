"""Fan-out: one pool over 1, 4 and 16 databases (`tidegate worker --targets ...`), the same total work.

``rows`` demo snapshots in all, split evenly across the databases of a run; each database is a copy
(CREATE DATABASE ... TEMPLATE) of one seeded template of rows/k snapshots, all on the same server. Every
database gets the same SQL-handler backfill (the demo's jobs/demo/hero_troops.sql, batches of ``batch``,
2 slices), and one pool of ``processes`` worker processes serves them all through $TIDEGATE_TARGETS.
For contrast, the same databases served by k separate single-database pools of one worker process each.

Reported per run: total source rows/s (launch to exit, and the jobs' own time: first plan to last
batch, the database's clock), the ratio to the 1-database pool, the peak connections the pool(s) held
(pg_stat_activity rows of tidegate's own application names in the run's databases, sampled every
0.1 s), and fairness: each database's finish time counted from the first plan, the first's over the
last's (1.0 = all finished together).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
import uuid
from contextlib import contextmanager

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.common import ROOT, TIDEGATE, ConnectionPeak, cli, data_range, engine_for, scratch_database, seed, server_url
from tidegate.worker.db import libpq_url

SQL_HANDLER = ROOT / "jobs/demo/hero_troops.sql"
LAST_JOB = ("SELECT processed_count, extract(epoch FROM started_at) AS started,"
            " extract(epoch FROM finished_at) AS finished FROM backfill_jobs ORDER BY created_at DESC LIMIT 1")
TROOPS = "SELECT count(*) FROM user_troops"


@contextmanager
def copies(server: str, template: str, n: int):  # type: ignore[no-untyped-def]
    """``n`` databases made from ``template`` (a database name of ours), dropped afterwards; their URLs."""
    names = [f"tg_bench_{uuid.uuid4().hex[:8]}" for _ in range(n)]
    made: list[str] = []
    try:
        with psycopg.connect(libpq_url(server), autocommit=True) as conn:
            for name in names:  # bench-made names, not input
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
                made.append(name)
        yield [make_url(libpq_url(server)).set(database=name).render_as_string(hide_password=False) for name in names]
    finally:
        with psycopg.connect(libpq_url(server), autocommit=True) as conn:
            for name in made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _enqueue(url: str, batch: int) -> None:
    """The backfill over exactly the data's range: a range far wider than the keys (say to 2100) is split
    into many empty slices at its end, each a claim of its own, which would swamp a small run."""
    cli(url, "enqueue", "backfill-range", *data_range(url), "--handler", f"sql:{SQL_HANDLER}",
        "--batch-size", str(batch), "--concurrency", "2", "--owner", "bench")


def _launch(url: str | None, processes: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    run_env = {**os.environ, **(env or {})}
    if url:
        run_env["DATABASE_URL"] = url
    return subprocess.Popen([TIDEGATE, "--log-level", "WARNING", "worker", "--concurrency", str(processes),
                             "--drain", "--allow-sql", "--no-gates", *extra], env=run_env)


def _one_run(server: str, urls: list[str], mode: str, processes: int, max_open: int | None) -> dict:
    """The pool(s) over ``urls``, fresh copies of a template whose backfill is enqueued, not yet planned."""
    with psycopg.connect(libpq_url(server), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    names = [make_url(u).database for u in urls]
    with ConnectionPeak(server, names) as peak:
        started = time.perf_counter()
        if mode == "multi":
            targets = ",".join(f"t{i}={u}" for i, u in enumerate(urls))
            env = {"TIDEGATE_TARGETS": targets, "TIDEGATE_TARGETS_FILE": "/nonexistent/tidegate-bench-targets.toml"}
            extra = ["--targets", ",".join(f"t{i}" for i in range(len(urls)))]
            if max_open:
                extra += ["--max-open-targets", str(max_open)]
            procs = [_launch(urls[0], processes, *extra, env=env)]  # $DATABASE_URL: not served, not used
        else:  # one single-database pool per database, all at once
            procs = [_launch(u, processes) for u in urls]
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"worker pool(s) exited {codes}")
    jobs, troops = [], 0
    for url in urls:
        engine = engine_for(url)
        with engine.connect() as conn:
            jobs.append(conn.execute(text(LAST_JOB)).one())
            troops += conn.execute(text(TROOPS)).scalar()
        engine.dispose()
    first_start = min(j.started for j in jobs)
    finish = sorted(float(j.finished - first_start) for j in jobs)
    return {"seconds": seconds, "job_seconds": finish[-1], "first_finish": finish[0], "last_finish": finish[-1],
            "fairness": finish[0] / finish[-1] if finish[-1] > 0 else 1.0, "peak_connections": peak.peak,
            "processed": sum(int(j.processed_count) for j in jobs), "troops": troops,
            "os_processes": len(procs) * (1 + processes)}


RUNS = (("multi", 1, None), ("multi", 4, None), ("separate", 4, None), ("multi", 16, None),
        ("multi", 16, 16), ("separate", 16, None))


def _label(mode: str, k: int, max_open: int | None, processes: int) -> str:
    if mode == "multi":
        return (f"one pool, {processes} processes, {k} database{'s' if k > 1 else ''}"
                + (f", --max-open-targets {max_open}" if max_open else ""))
    return f"{k} separate pools, 1 process each"


def run(url: str | None = None, rows: int = 48_000, batch: int = 1000, processes: int = 2, rounds: int = 1,
        counts: tuple[int, ...] = (1, 4, 16), separate: bool = True) -> dict:
    server = url or server_url()
    rows -= rows % max(counts)
    out: dict = {"rows": rows, "batch": batch, "processes": processes, "rounds": rounds, "runs": {}}
    runs = [r for r in RUNS if r[1] in counts and (separate or r[0] == "multi")]
    results: dict[tuple, list[dict]] = {r: [] for r in runs}
    with psycopg.connect(libpq_url(server), autocommit=True) as conn:
        out["server"] = conn.execute("SHOW server_version").fetchone()[0]
    dbs: dict[int, list[str]] = {}
    t0 = time.perf_counter()
    with _templates(server, rows, counts, batch) as templates:
        print(f"templates seeded and enqueued: {time.perf_counter() - t0:.1f}s", flush=True)
        for round_ in range(rounds):
            for key in runs:
                mode, k, max_open = key
                label = _label(mode, k, max_open, processes)
                try:
                    with copies(server, templates[k], k) as dbs:  # each run on fresh copies
                        x = _one_run(server, dbs, mode, 1 if mode == "separate" else processes, max_open)
                except RuntimeError as err:
                    print(f"{label}: failed: {err}", flush=True)
                    results[key].append({"failed": str(err)[:200]})
                    continue
                results[key].append(x)
                print(f"round {round_ + 1}, {label}: {x['seconds']:.1f}s wall, jobs {x['job_seconds']:.1f}s,"
                      f" {x['processed']:,} rows, peak connections {x['peak_connections']},"
                      f" finish first/last {x['first_finish']:.1f}/{x['last_finish']:.1f}s", flush=True)
    for key, xs in results.items():
        ok = [x for x in xs if "failed" not in x]
        if not ok:
            out["runs"][key] = {"failed": xs[0]["failed"] if xs else "not run"}
            continue
        med = {f: statistics.median(x[f] for x in ok) for f in ("seconds", "job_seconds", "first_finish",
                                                                 "last_finish", "fairness")}
        med.update(peak_connections=max(x["peak_connections"] for x in ok), os_processes=ok[0]["os_processes"],
                   all_rows=all(x["processed"] == rows for x in ok), troops=ok[0]["troops"],
                   wall_range=(min(x["seconds"] for x in ok), max(x["seconds"] for x in ok)), n=len(ok))
        out["runs"][key] = med
    base = out["runs"].get(("multi", min(counts), None), {})
    for x in out["runs"].values():
        if base and "failed" not in base and "failed" not in x:
            x["ratio"] = base["seconds"] / x["seconds"]
            x["job_ratio"] = base["job_seconds"] / x["job_seconds"]
    return out


@contextmanager
def _templates(server: str, rows: int, counts: tuple[int, ...], batch: int):  # type: ignore[no-untyped-def]
    """Per database count k, a template database (by name): migrated, rows/k snapshots, the backfill enqueued."""
    base = rows // max(counts)  # demo seed's JSON generator is slow: generate the smallest share, copy the rest
    with scratch_database(server) as migrated, copies(server, make_url(migrated).database, len(counts)) as urls:
        for k, url in zip(counts, urls, strict=True):
            seed(url, rows // k, base=base)
            _enqueue(url, batch)
        yield {k: make_url(u).database for k, u in zip(counts, urls, strict=True)}


@contextmanager
def _nest(managers: list):  # type: ignore[no-untyped-def]
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield [stack.enter_context(m) for m in managers]


def report(r: dict) -> str:
    lines = [f"### Fan-out: one pool over 1, 4 and 16 databases ({r['rows']:,} snapshots in all, split evenly;"
             f" SQL handler, batches of {r['batch']:,}, 2 slices per database; PostgreSQL {r['server']},"
             f" {'median of ' + str(r['rounds']) + ' rounds' if r['rounds'] > 1 else 'one round'})", "",
             "| run | OS processes | seconds, wall (range) | rows/s, wall | vs 1 database | seconds, jobs |"
             " rows/s, jobs | vs 1 database | peak connections | finish, first / last db (s) |"
             " fairness (first / last) | all rows |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (mode, k, max_open), x in r["runs"].items():
        label = _label(mode, k, max_open, r["processes"])
        if "failed" in x:
            lines.append(f"| {label} | - | failed: {x['failed']} | | | | | | | | | |")
            continue
        lo, hi = x["wall_range"]
        span = f" ({lo:.1f}-{hi:.1f})" if x["n"] > 1 else ""
        lines.append(
            f"| {label} | {x['os_processes']} | {x['seconds']:.1f}{span} | {r['rows'] / x['seconds']:,.0f} |"
            f" {x.get('ratio', 0):.2f} | {x['job_seconds']:.1f} | {r['rows'] / x['job_seconds']:,.0f} |"
            f" {x.get('job_ratio', 0):.2f} | {x['peak_connections']} |"
            f" {x['first_finish']:.1f} / {x['last_finish']:.1f} |"
            f" {x['fairness']:.2f} | {'yes' if x['all_rows'] else 'NO'} |")
    lines += ["", "Wall: launch of the pool(s) to exit. Jobs: the first database's plan to the last database's last"
              " batch (backfill_jobs.started_at/finished_at). Peak connections: tidegate's own (workers, pool,"
              " maintenance) in the run's databases, sampled every 0.1 s. Fairness: when the first database"
              " finished over when the last did, both from the first plan (1.00: all finished together;"
              " a round-robin over k databases that served each to the end in turn would give about 1/k). Each"
              " database is a copy of a template of rows/k snapshots; the pool serves them through $TIDEGATE_TARGETS."]
    return "\n".join(lines)
