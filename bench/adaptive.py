"""Adaptive batch sizing: time per batch against the target on a source with skewed row sizes.

The demo snapshots, with every other block of BLOCK rows made heavy (100 troops instead of 10, and
a 2 KB text field), so a fixed batch size gives batches ten times longer in the heavy blocks. One
backfill-range job with the demo's SQL handler and `--target-batch-seconds`, one worker process, no
gates; then, for contrast, the same job at a fixed batch size (the adaptive run's median). Batch
durations come from the worker's JSON debug logs (one line per batch, `seconds` = the whole batch
transaction); the last batch of the slice (a short page) is left out.
"""

from __future__ import annotations

import statistics

from sqlalchemy import text

from bench.common import cli, engine_for, run_pool_logged, scratch_database, seed, server_url

RANGE = ("--from", "2024-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z")
HEAVY = """
UPDATE hero_snapshots SET raw = jsonb_set(raw, '{ProfileData,Troops}', (
        SELECT jsonb_agg(jsonb_build_object('Id', 6000 + ((id * 7 + k * 31) % 300), 'Level', 1 + k % 20,
                                            'Count', 1 + k % 50, 'Ascension', k % 6) ORDER BY k)
        FROM generate_series(0, 99) k)) || jsonb_build_object('Blob', repeat(md5(id::text), 64))
WHERE (id / :block) % 2 = 1 AND jsonb_typeof(raw->'ProfileData'->'Troops') = 'array'
"""


def _stats(batches: list[dict], target: float) -> dict:
    durations = [b["seconds"] for b in batches]
    dev = [abs(d - target) / target for d in durations]
    q = statistics.quantiles(dev, n=10) if len(dev) >= 2 else dev * 9
    return {"batches": len(durations), "within_25": sum(d <= 0.25 for d in dev) / len(dev),
            "median_dev": statistics.median(dev), "p90_dev": q[8],
            "median_s": statistics.median(durations), "max_s": max(durations),
            "median_rows": statistics.median(b["rows"] for b in batches)}


def _job(db: str, handler: str, *knobs: str) -> list[dict]:
    cli(db, "enqueue", "backfill-range", *RANGE, "--handler", f"sql:{handler}", "--concurrency", "1",
        "--owner", "bench", *knobs)
    _, _, batches = run_pool_logged(db, 1, "--no-gates")
    return batches[:-1]  # the slice's last batch is a short page


def run(url: str | None = None, rows: int = 100_000, block: int = 5_000, target: float = 0.25) -> dict:
    from bench.backfill import SQL_HANDLER

    server = url or server_url()
    out: dict = {"rows": rows, "block": block, "target": target}
    with scratch_database(server) as db:
        engine = engine_for(db)
        seed(db, rows)
        with engine.begin() as conn:
            conn.execute(text(HEAVY), {"block": block})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE hero_snapshots"))
        adaptive = _job(db, str(SQL_HANDLER), "--batch-size", "1000", "--target-batch-seconds", str(target),
                        "--min-batch-size", "10", "--max-batch-size", "50000")
        out["adaptive"] = _stats(adaptive, target)
        out["adaptive_after_warmup"] = _stats(adaptive[5:], target)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE user_troops"))
        fixed_size = int(out["adaptive"]["median_rows"])
        out["fixed_size"] = fixed_size
        out["fixed"] = _stats(_job(db, str(SQL_HANDLER), "--batch-size", str(fixed_size)), target)
        engine.dispose()
    for name in ("adaptive", "adaptive_after_warmup", "fixed"):
        x = out[name]
        print(f"{name}: {x['batches']} batches, {x['within_25']:.0%} within 25% of {target}s, median deviation"
              f" {x['median_dev']:.0%}, p90 {x['p90_dev']:.0%}, median {x['median_s']:.3f}s", flush=True)
    return out


def report(r: dict) -> str:
    lines = [f"### Adaptive batch sizing: target {r['target']} s per batch, {r['rows']:,} snapshots, every other"
             f" block of {r['block']:,} rows ten times heavier", "",
             "| run | batches | within 25% of target | median deviation | p90 deviation | median batch (s) |"
             " longest batch (s) | median rows per batch |", "|---|---|---|---|---|---|---|---|"]
    for name, label in (("adaptive", "adaptive (`--target-batch-seconds`)"),
                        ("adaptive_after_warmup", "adaptive, after its first 5 batches"),
                        ("fixed", f"fixed `--batch-size {r['fixed_size']}` (for contrast)")):
        x = r[name]
        lines.append(f"| {label} | {x['batches']} | {x['within_25']:.0%} | {x['median_dev']:.0%} |"
                     f" {x['p90_dev']:.0%} | {x['median_s']:.3f} | {x['max_s']:.3f} | {x['median_rows']:,.0f} |")
    return "\n".join(lines)
