"""Adaptive batch sizing: time per batch against the target on sources with skewed row sizes.

Two sources, both the demo snapshots made heavy in places:

- ``blocks``: every other block of BLOCK rows heavy (100 troops instead of 10, and a 2 KB text
  field), so a fixed batch size gives batches ten times longer in the heavy blocks. Long, regular
  runs: the easy case for a sizer that learns from past batches.
- ``runs``: closer to real tables, where big rows come in runs of any length and of any size (a
  tenant's period, a feature's rollout): chunks of CHUNK rows, 40% of them heavy with 30..100
  troops and a 0.5..2.5 KB text field, drawn by a hash of the chunk, so heavy runs last from one
  chunk to several and a batch often straddles light and heavy rows.

One backfill-range job with the demo's SQL handler and `--target-batch-seconds`, one worker
process, no gates; then, for contrast on ``blocks``, the same job at a fixed batch size (the
adaptive run's median). Batch durations come from the worker's JSON debug logs (one line per
batch, `seconds` = the whole batch transaction); the last batch of the slice (a short page) is
left out. A batch cut short by its statement timeout (4x the target, at least 1 s; rolled back and
retried smaller) is not in the log's batches: it is counted apart, and as a miss in "within 25%,
timeouts counted".
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
RUNS = """
WITH c AS (SELECT id, abs(hashtext((id / :chunk)::text)) % 100 AS h FROM hero_snapshots)
UPDATE hero_snapshots s SET raw = jsonb_set(raw, '{ProfileData,Troops}', (
        SELECT jsonb_agg(jsonb_build_object('Id', 6000 + ((s.id * 7 + k * 31) % 300), 'Level', 1 + k % 20,
                                            'Count', 1 + k % 50, 'Ascension', k % 6) ORDER BY k)
        FROM generate_series(0, 29 + c.h * 70 / 39) k))
    || jsonb_build_object('Blob', repeat(md5(s.id::text), 16 + c.h * 2))
FROM c WHERE c.id = s.id AND c.h < 40 AND jsonb_typeof(raw->'ProfileData'->'Troops') = 'array'
"""


def _stats(batches: list[dict], target: float, timeouts: int = 0) -> dict:
    durations = [b["seconds"] for b in batches]
    dev = [abs(d - target) / target for d in durations]
    q = statistics.quantiles(dev, n=10) if len(dev) >= 2 else dev * 9
    within_25 = sum(d <= 0.25 for d in dev)
    return {"batches": len(durations), "within_25": within_25 / len(dev),
            "within_50": sum(d <= 0.5 for d in dev) / len(dev), "timeouts": timeouts,
            "within_25_with_timeouts": within_25 / (len(dev) + timeouts),
            "median_dev": statistics.median(dev), "p90_dev": q[8],
            "median_s": statistics.median(durations), "max_s": max(durations),
            "median_rows": statistics.median(b["rows"] for b in batches)}


def _job(db: str, handler: str, *knobs: str) -> tuple[list[dict], int]:
    cli(db, "enqueue", "backfill-range", *RANGE, "--handler", f"sql:{handler}", "--concurrency", "1",
        "--owner", "bench", *knobs)
    timeouts: list[dict] = []
    _, _, batches = run_pool_logged(db, 1, "--no-gates", timeouts=timeouts)
    return batches[:-1], len(timeouts)  # the slice's last batch is a short page


def _prepare(db: str, rows: int, sql: str, params: dict) -> None:
    """``rows`` snapshots, made heavy in places by ``sql``."""
    engine = engine_for(db)
    seed(db, rows)
    with engine.begin() as conn:
        conn.execute(text(sql), params)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE hero_snapshots"))
    engine.dispose()


def run(url: str | None = None, rows: int = 100_000, block: int = 5_000, chunk: int = 500,
        target: float = 0.25) -> dict:
    from bench.backfill import SQL_HANDLER

    server = url or server_url()
    out: dict = {"rows": rows, "block": block, "chunk": chunk, "target": target}
    adaptive_knobs = ("--batch-size", "1000", "--target-batch-seconds", str(target),
                      "--min-batch-size", "10", "--max-batch-size", "50000")
    with scratch_database(server) as db:
        _prepare(db, rows, HEAVY, {"block": block})
        adaptive, timeouts = _job(db, str(SQL_HANDLER), *adaptive_knobs)
        out["adaptive"] = _stats(adaptive, target, timeouts)
        out["adaptive_after_warmup"] = _stats(adaptive[5:], target, timeouts)
        engine = engine_for(db)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE user_troops"))
        engine.dispose()
        fixed_size = int(out["adaptive"]["median_rows"])
        out["fixed_size"] = fixed_size
        fixed, timeouts = _job(db, str(SQL_HANDLER), "--batch-size", str(fixed_size))
        out["fixed"] = _stats(fixed, target, timeouts)
    with scratch_database(server) as db:
        _prepare(db, rows, RUNS, {"chunk": chunk})
        runs, timeouts = _job(db, str(SQL_HANDLER), *adaptive_knobs)
        out["runs"] = _stats(runs, target, timeouts)
    for name in LABELS:
        x = out[name]
        print(f"{name}: {x['batches']} batches, {x['within_25']:.0%} within 25% of {target}s, {x['within_50']:.0%}"
              f" within 50%, median deviation {x['median_dev']:.0%}, p90 {x['p90_dev']:.0%}, median"
              f" {x['median_s']:.3f}s, {x['timeouts']} timeouts", flush=True)
    return out


LABELS = {"adaptive": "blocks: adaptive (`--target-batch-seconds`)",
          "adaptive_after_warmup": "blocks: adaptive, after its first 5 batches",
          "fixed": "blocks: fixed `--batch-size {fixed_size}` (for contrast)",
          "runs": "runs: adaptive (`--target-batch-seconds`)"}


def report(r: dict) -> str:
    lines = [f"### Adaptive batch sizing: target {r['target']} s per batch, {r['rows']:,} snapshots; blocks: every"
             f" other block of {r['block']:,} rows ten times heavier; runs: chunks of {r['chunk']:,} rows, 40%"
             " of them 3 to 10 times heavier", "",
             "| run | batches | within 25% of target | within 50% | median deviation | p90 deviation |"
             " timeouts | within 25%, timeouts counted | median batch (s) | longest batch (s) |"
             " median rows per batch |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, label in LABELS.items():
        x = r[name]
        lines.append(f"| {label.format(**r)} | {x['batches']} | {x['within_25']:.0%} | {x['within_50']:.0%} |"
                     f" {x['median_dev']:.0%} | {x['p90_dev']:.0%} | {x['timeouts']} |"
                     f" {x['within_25_with_timeouts']:.0%} | {x['median_s']:.3f} | {x['max_s']:.3f} |"
                     f" {x['median_rows']:,.0f} |")
    return "\n".join(lines)
