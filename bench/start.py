"""Pool start: from `tidegate worker --concurrency 2` (the process launch) to the first slice claim.

One small backfill-range job (the demo handler over 200 snapshots, 2 slices, concurrency 2) is queued,
then `tidegate worker --concurrency 2 --drain` is launched; the launch time is taken just before the
exec, and the claim times are the database's: ``backfill_slices.locked_at`` (``now()`` of the claim's
transaction, same host clock): the first slice taken, when work starts. Runs are repeated; median and
spread are reported, with the whole drain (launch to exit) beside it.

``--start-compare PATH`` runs another `tidegate` executable (e.g. main's .venv/bin/tidegate) in the same
rounds, interleaved A B B A, for a before/after ratio on a noisy machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time

from sqlalchemy import text

from bench.common import TIDEGATE, cli, engine_for, reset, scratch_database, server_url

RANGE = ("--from", "2024-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z")
CLAIMS = text("SELECT extract(epoch FROM locked_at) FROM backfill_slices"
              " WHERE job_id = (SELECT job_id FROM backfill_jobs ORDER BY created_at DESC LIMIT 1)"
              " AND locked_at IS NOT NULL ORDER BY locked_at")


def _one(url: str, engine, exe: str, pycache: str) -> dict:  # type: ignore[no-untyped-def]
    reset(engine, "user_troops")
    cli(url, "enqueue", "backfill-range", *RANGE, "--handler", "hero_troops", "--batch-size", "50",
        "--concurrency", "2", "--owner", "bench")
    # with bytecode, as an installed wheel has it (pip compiles at install); the source trees stay as they
    # are: the .pyc files go to a directory of the bench's own, filled by the first (uncounted) start
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "DATABASE_URL": url,
           "PYTHONPYCACHEPREFIX": pycache}
    launched = time.time()
    code = subprocess.run([exe, "--log-level", "WARNING", "worker", "--concurrency", "2", "--drain"],
                          env=env).returncode
    ended = time.time()
    if code != 0:
        raise RuntimeError(f"{exe} worker exited {code}")
    with engine.connect() as conn:
        claims = [float(t) for t in conn.execute(CLAIMS).scalars()]
    return {"first": claims[0] - launched, "pool_seconds": ended - launched}


def _summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def run(url: str | None = None, runs: int = 7, compare: str | None = None) -> dict:
    server = url or server_url()
    systems = {"this": TIDEGATE, **({"compare": compare} if compare else {})}
    results: dict[str, list[dict]] = {name: [] for name in systems}
    with scratch_database(server) as db, tempfile.TemporaryDirectory(prefix="tg-pycache-") as pycache:
        engine = engine_for(db)
        cli(db, "demo", "seed", "--rows", "200", "--users", "200")
        for exe in systems.values():  # bytecode, page cache and server warmed; not counted
            _one(db, engine, exe, pycache)
        order = list(systems)
        for i in range(runs):
            for name in (order if i % 2 == 0 else order[::-1]):  # A B B A ...
                x = _one(db, engine, systems[name], pycache)
                results[name].append(x)
                print(f"{name} run {i + 1}: first claim {x['first']:.3f}s, whole drain {x['pool_seconds']:.2f}s",
                      flush=True)
        engine.dispose()
    out: dict = {"runs": runs, "systems": systems, "results": {}}
    for name, xs in results.items():
        out["results"][name] = {k: _summary([x[k] for x in xs]) for k in ("first", "pool_seconds")}
    if compare:
        pairs = [c["first"] / t["first"] for t, c in zip(results["this"], results["compare"], strict=True)]
        out["speedup"] = _summary(pairs)
    return out


def report(r: dict) -> str:
    lines = [f"### Pool start: `tidegate worker --concurrency 2 --drain` launch -> first slice claim"
             f" ({r['runs']} runs each{', interleaved' if 'speedup' in r else ''})", "",
             "| tidegate | first claim, median (min-max) | whole drain, median (min-max) |", "|---|---|---|"]
    for name, x in r["results"].items():
        label = "this tree" if name == "this" else f"compare: `{r['systems'][name]}`"
        f, p = x["first"], x["pool_seconds"]
        lines.append(f"| {label} | {f['median']:.3f} s ({f['min']:.3f}-{f['max']:.3f}) |"
                     f" {p['median']:.2f} s ({p['min']:.2f}-{p['max']:.2f}) |")
    if "speedup" in r:
        sp = r["speedup"]
        lines += ["", f"Per round, compare's first claim / this tree's: median {sp['median']:.2f}x"
                  f" (min {sp['min']:.2f}x, max {sp['max']:.2f}x)."]
    return "\n".join(lines)
