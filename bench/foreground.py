"""Foreground impact: pgbench TPS while a backfill runs, unthrottled and with default throttling.

One scratch database holds pgbench's tables (scale 10) and the demo snapshots. For each pgbench
mode (select-only, tpcb-like) it measures TPS on the idle database, then with a backfill-range job
(the demo's SQL handler, batches of 5,000, one worker process) running unthrottled, then the same
job with DEFAULT_THROTTLE; each ratio is against the idle TPS of the same mode in the same run. The
backfill's progress (source rows/s) in each window is read from its job row. pgbench runs with 2
clients and 2 threads: on this 2-core machine that saturates the server, the hardest case.

DEFAULT_THROTTLE is what this benchmark calls default throttling: the worker's health gates on (its
defaults), batches sized adaptively to 0.1 s, and 1 s of sleep after each batch: a duty cycle of
about 1/11 for the job's one process.

Windows of a mode run in the order idle, throttled, idle, unthrottled, idle, and each backfill
window is compared with the mean of the two idle windows around it: the shared machine drifts.
Before every window pgbench's own housekeeping runs (VACUUM of its small tables, TRUNCATE of its
history, what pgbench does itself without -n) and then a CHECKPOINT, so that no window pays for
the dirty pages and full-page writes the window before it left behind (an unthrottled backfill
writes far more WAL than the throttled one).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

from sqlalchemy import text

from bench.common import TIDEGATE, cli, engine_for, scratch_database, seed, server_url

DEFAULT_THROTTLE = ("--target-batch-seconds", "0.1", "--sleep-between-batches", "1.0",
                    "--min-batch-size", "50", "--max-batch-size", "5000")
RANGE = ("--from", "2024-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z")
MODES = {"select-only": ["-S"], "tpcb-like": []}


def pgbench() -> str | None:
    return shutil.which("pgbench") or ("/usr/bin/pgbench" if os.path.exists("/usr/bin/pgbench") else None)


def _tps(exe: str, url: str, mode: str, seconds: int, clients: int) -> float:
    out = subprocess.run([exe, "-n", *MODES[mode], "-c", str(clients), "-j", str(clients), "-T", str(seconds), url],
                         capture_output=True, text=True, check=True).stdout
    found = re.search(r"tps = ([0-9.]+)", out)
    if not found:
        raise RuntimeError(f"no tps in pgbench output:\n{out}")
    return float(found.group(1))


def _settle(engine) -> None:  # type: ignore[no-untyped-def]
    """What pgbench does before a run without -n, then a checkpoint: each window starts clean."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM pgbench_branches, pgbench_tellers"))
        conn.execute(text("TRUNCATE pgbench_history"))
        conn.execute(text("CHECKPOINT"))


def _idle(exe: str, db: str, engine, mode: str, seconds: int, clients: int) -> float:  # type: ignore[no-untyped-def]
    _settle(engine)
    return _tps(exe, db, mode, seconds, clients)


def _with_backfill(exe: str, db: str, engine, mode: str, seconds: int, clients: int,  # type: ignore[no-untyped-def]
                   sql_handler: str, throttle: tuple[str, ...]) -> dict:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE user_troops"))
    job = cli(db, "enqueue", "backfill-range", *RANGE, "--handler", f"sql:{sql_handler}", "--batch-size", "5000",
              "--concurrency", "1", "--owner", "bench", *throttle).splitlines()[0]
    pool = subprocess.Popen([TIDEGATE, "--log-level", "WARNING", "worker", "--concurrency", "1", "--no-maintenance",
                             "--allow-sql"],
                            env={**os.environ, "DATABASE_URL": db})
    processed = "SELECT processed_count FROM backfill_jobs WHERE job_id = :id"
    try:
        time.sleep(3)  # the pool is up and the job planned
        with engine.connect() as conn:
            before = conn.execute(text(processed), {"id": job}).scalar() or 0
        started = time.perf_counter()
        tps = _tps(exe, db, mode, seconds, clients)
        elapsed = time.perf_counter() - started
        with engine.connect() as conn:
            after = conn.execute(text(processed), {"id": job}).scalar() or 0
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(timeout=60)
        cli(db, "cancel", job)
    return {"tps": tps, "rows_per_s": (after - before) / elapsed, "finished": False}


def run(url: str | None = None, rows: int = 1_000_000, seconds: int = 20, clients: int = 2,
        scale: int = 10) -> dict:
    exe = pgbench()
    if exe is None:
        print("pgbench not found (Debian: apt-get install postgresql-client): skipping", flush=True)
        return {"skipped": "pgbench not found (Debian: apt-get install postgresql-client)"}
    from bench.backfill import SQL_HANDLER

    server = url or server_url()
    out: dict = {"rows": rows, "seconds": seconds, "clients": clients, "scale": scale, "modes": {}}
    with scratch_database(server) as db:
        engine = engine_for(db)
        seed(db, rows)
        subprocess.run([exe, "-i", "-q", "-s", str(scale), db], check=True, capture_output=True)
        for mode in MODES:
            x: dict = {}
            idle = [_idle(exe, db, engine, mode, seconds, clients)]
            for name, throttle in (("throttled", DEFAULT_THROTTLE), ("unthrottled", ())):
                _settle(engine)
                x[name] = _with_backfill(exe, db, engine, mode, seconds, clients, str(SQL_HANDLER), throttle)
                idle.append(_idle(exe, db, engine, mode, seconds, clients))
                x[name]["idle"] = (idle[-2] + idle[-1]) / 2
                x[name]["ratio"] = x[name]["tps"] / x[name]["idle"]
            x["idle"] = idle
            print(f"{mode}: idle windows " + " / ".join(f"{t:,.0f}" for t in idle) + " tps", flush=True)
            for name in ("unthrottled", "throttled"):
                r = x[name]
                print(f"{mode}: {name} backfill {r['tps']:,.0f} tps = {r['ratio']:.2f} of idle,"
                      f" backfill {r['rows_per_s']:,.0f} rows/s", flush=True)
            out["modes"][mode] = x
        engine.dispose()
    return out


def report(r: dict) -> str:
    if "skipped" in r:
        return f"### Foreground impact (pgbench)\n\nSkipped: {r['skipped']}."
    lines = [f"### Foreground impact: pgbench ({r['clients']} clients, {r['seconds']} s per window, scale {r['scale']})"
             f" while a backfill runs over {r['rows']:,} snapshots", "",
             "| pgbench mode | idle TPS (3 windows) | TPS, default-throttled backfill | ratio | backfill rows/s |"
             " TPS, unthrottled backfill | ratio | backfill rows/s |", "|---|---|---|---|---|---|---|---|"]
    for mode, x in r["modes"].items():
        u, t = x["unthrottled"], x["throttled"]
        lines.append(f"| {mode} | " + " / ".join(f"{v:,.0f}" for v in x["idle"]) +
                     f" | {t['tps']:,.0f} | {t['ratio']:.2f} | {t['rows_per_s']:,.0f} |"
                     f" {u['tps']:,.0f} | {u['ratio']:.2f} | {u['rows_per_s']:,.0f} |")
    lines += ["", "Default throttling here: `" + " ".join(DEFAULT_THROTTLE) + "` on `tidegate enqueue backfill-range`,"
              " with the worker's health gates at their defaults. Target: throttled backfill keeps pgbench at 0.9"
              " or more of idle TPS while still making progress. Each ratio is against the mean of the idle windows"
              " before and after its own window; every window starts after pgbench's housekeeping and a CHECKPOINT."]
    return "\n".join(lines)
