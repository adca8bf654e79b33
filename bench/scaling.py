"""Claim-path scaling: batches per second on one job with 1, 2, 4 and 8 worker processes.

One backfill-range job over the demo snapshots, cut into 16 slices, with a SQL handler that only
counts its batch (`SELECT count(*)` over the batch's keys) and small batches, so what is measured is
tidegate's own path: lock the slice row, page the keys, record the checkpoint, commit, and claim
the next slice. The rate is batches between the first and the last batch's log lines (JSON debug
logs), so pool start-up does not count. The machine has 2 cores, shared with PostgreSQL: past 2
processes the figures show contention, not parallelism.
"""

from __future__ import annotations

import statistics
import tempfile

from sqlalchemy import text

from bench.common import cli, engine_for, run_pool_logged, scratch_database, server_url, ts

COUNT_SQL = "SELECT count(*) FROM hero_snapshots WHERE created_at > :lo AND created_at <= :hi"
RANGE = ("--from", "2024-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z")


def run(url: str | None = None, rows: int = 200_000, batch: int = 100, slices: int = 16,
        processes: tuple[int, ...] = (1, 2, 4, 8)) -> dict:
    server = url or server_url()
    out: dict = {"rows": rows, "batch": batch, "slices": slices, "runs": []}
    with scratch_database(server) as db, tempfile.NamedTemporaryFile("w", suffix=".sql") as handler:
        handler.write(COUNT_SQL)
        handler.flush()
        engine = engine_for(db)
        cli(db, "demo", "seed", "--rows", str(rows))
        for procs in processes:
            cli(db, "enqueue", "backfill-range", *RANGE, "--handler", f"sql:{handler.name}", "--batch-size",
                str(batch), "--concurrency", str(slices), "--owner", "bench")
            seconds, _, batches = run_pool_logged(db, procs, "--no-gates")
            times = sorted(ts(b) for b in batches)
            span = max(times[-1] - times[0], 1e-3)
            x = {"processes": procs, "batches": len(batches), "span": span, "batches_per_s": (len(batches) - 1) / span,
                 "median_ms": 1000 * statistics.median(b["seconds"] for b in batches)}
            with engine.connect() as conn:
                x["processed"] = conn.execute(text(
                    "SELECT processed_count FROM backfill_jobs ORDER BY created_at DESC LIMIT 1")).scalar()
            out["runs"].append(x)
            print(f"{procs} process(es): {x['batches']} batches in {span:.1f}s = {x['batches_per_s']:,.0f}/s,"
                  f" median batch {x['median_ms']:.1f} ms", flush=True)
        engine.dispose()
    return out


def report(r: dict) -> str:
    base = r["runs"][0]["batches_per_s"]
    lines = [f"### Claim-path scaling: one job, {r['slices']} slices, {r['rows']:,} rows, batches of {r['batch']}"
             " (count-only SQL handler)", "",
             "| worker processes | batches | batches/s | vs 1 process | median batch (ms) | rows processed |",
             "|---|---|---|---|---|---|"]
    for x in r["runs"]:
        lines.append(f"| {x['processes']} | {x['batches']:,} | {x['batches_per_s']:,.0f} |"
                     f" {x['batches_per_s'] / base:.2f} | {x['median_ms']:.1f} | {x['processed']:,} |")
    return "\n".join(lines)
