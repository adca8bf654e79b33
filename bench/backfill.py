"""backfill-range vs the same work as one INSERT ... SELECT (the core issue's figures).

500,000 hero_snapshots, one user each, so the demo transformation writes 5,000,000 user_troops
rows. The single statement is the SQL handler file run once over the whole range; tidegate runs
the same file per batch of 5,000 keys at concurrency 1 and 2, and the Python handler at 2.
Every run must leave user_troops with the single statement's checksum.
"""

from __future__ import annotations

import time

from sqlalchemy import text

from bench.common import ROOT, cli, engine_for, reset, run_pool, scratch_database, seed, server_url
from tidegate.worker.sql import load

SQL_HANDLER = ROOT / "jobs/demo/hero_troops.sql"
RANGE = ("--from", "2024-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z")


def _checksum(engine) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        row = conn.execute(text(load("tidegate.jobs.demo", "demo.sql")["troops_checksum"])).one()
    return int(row.rows), int(row.checksum)


def _tidegate(url: str, engine, handler: str, concurrency: int, batch: int,  # type: ignore[no-untyped-def]
              exe: str | None = None) -> dict:
    reset(engine, "user_troops")
    cli(url, "enqueue", "backfill-range", *RANGE, "--handler", handler, "--batch-size", str(batch),
        "--concurrency", str(concurrency), "--owner", "bench")
    seconds, rss = run_pool(url, concurrency, exe=exe)
    return {"seconds": seconds, "rss_mb": rss, "checksum": _checksum(engine)}


MEMORY_ROWS = (100_000, 1_000_000, 5_000_000)


RUNS = (("sql_c1", "sql", 1, 5000), ("python_c1", "hero_troops", 1, 5000),
        ("python_c1_compare", "hero_troops", 1, 5000), ("sql_c2", "sql", 2, 5000),
        ("python_c2", "hero_troops", 2, 5000), ("python_c2_compare", "hero_troops", 2, 5000))
LABELS = {"sql_c1": "tidegate, SQL handler, concurrency 1", "python_c1": "tidegate, Python handler, concurrency 1",
          "python_c1_compare": "compare's Python handler, concurrency 1",
          "sql_c2": "tidegate, SQL handler, concurrency 2", "python_c2": "tidegate, Python handler, concurrency 2",
          "python_c2_compare": "compare's Python handler, concurrency 2"}


def run(url: str | None = None, rows: int = 500_000, memory_rows: tuple[int, ...] = MEMORY_ROWS,
        compare: str | None = None) -> dict:
    """``compare``: another `tidegate` executable (main's, say) whose Python handler runs in the same run,
    right after this tree's at each concurrency: the before/after of a handler change."""
    server = url or server_url()
    out: dict = {"rows": rows, "compare": compare}
    with scratch_database(server) as db:
        engine = engine_for(db)
        with engine.connect() as conn:
            out["server"] = conn.execute(text("SHOW server_version")).scalar()
        seed(db, rows)

        reset(engine, "user_troops")
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text(SQL_HANDLER.read_text()), {"lo": "2000-01-01Z", "hi": "2100-01-01Z"})
        single = {"seconds": time.perf_counter() - started, "checksum": _checksum(engine)}
        out["single_statement"] = single
        print(f"single statement: {single['seconds']:.1f}s, {single['checksum'][0]} rows", flush=True)

        for name, handler, conc, batch in RUNS:
            if name.endswith("_compare") and not compare:
                continue
            handler = f"sql:{SQL_HANDLER}" if handler == "sql" else handler
            result = _tidegate(db, engine, handler, conc, batch, exe=compare if name.endswith("_compare") else None)
            result["ratio"] = single["seconds"] / result["seconds"]
            if name.startswith("python"):  # the Python handler against the SQL handler at the same concurrency
                result["vs_sql"] = out[f"sql_c{conc}"]["seconds"] / result["seconds"]
            result["same_data"] = result["checksum"] == single["checksum"]
            out[name] = result
            print(f"{name}: {result['seconds']:.1f}s ratio {result['ratio']:.2f}"
                  + (f" vs SQL handler {result['vs_sql']:.2f}" if "vs_sql" in result else "")
                  + f" same data {result['same_data']} worker RSS {result['rss_mb']:.0f} MiB", flush=True)

        with engine.connect() as conn:
            out["checkpoint_tables"] = [dict(r._mapping) for r in conn.execute(text(
                "SELECT relname, n_tup_upd, n_tup_hot_upd, n_dead_tup FROM pg_stat_user_tables"
                " WHERE relname IN ('backfill_jobs', 'backfill_slices') ORDER BY relname"))]
        engine.dispose()

    out["memory"] = {}
    for n in memory_rows:  # flat memory: a Python handler that reads every row, over growing ranges
        with scratch_database(server) as db:
            engine = engine_for(db)
            with engine.begin() as conn:  # bench-owned fixed DDL: a narrow synthetic source, fast to make
                conn.execute(text("CREATE TABLE bench_items (id bigint PRIMARY KEY, body text NOT NULL)"))
                conn.execute(text("INSERT INTO bench_items SELECT g, repeat(md5(g::text), 3) FROM"
                                  " generate_series(1, :n) g"), {"n": n})
                conn.execute(text("CREATE TABLE bench_sink (items bigint NOT NULL, chars bigint NOT NULL)"))
                conn.execute(text("INSERT INTO bench_sink VALUES (0, 0)"))
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE bench_items"))
            env = {"PYTHONPATH": str(ROOT), "TIDEGATE_HANDLERS": "bench.memory_handler"}
            cli(db, "enqueue", "backfill-range", "--source", "bench_items", "--key", "id", "--from", "1",
                "--to", str(n + 1), "--handler", "bench.memory_handler:HANDLER", "--batch-size", "5000",
                "--owner", "bench", env=env)
            seconds, rss = run_pool(db, 1, env=env)
            with engine.connect() as conn:
                items = conn.execute(text("SELECT items FROM bench_sink")).scalar()
            out["memory"][n] = {"rss_mb": rss, "seconds": seconds, "items": items}
            print(f"memory at {n} rows: peak worker RSS {rss:.0f} MiB, {items} items in {seconds:.1f}s", flush=True)
            engine.dispose()
    return out


def report(r: dict) -> str:
    s = r["single_statement"]
    lines = [
        f"### backfill-range vs one INSERT ... SELECT ({r['rows']:,} snapshots -> {s['checksum'][0]:,} rows,"
        f" PostgreSQL {r['server']})",
        "",
        "| run | seconds | rows/s (source) | ratio vs single statement | vs SQL handler, same concurrency |"
        " same data | peak worker RSS |",
        "|---|---|---|---|---|---|---|",
        f"| single statement | {s['seconds']:.1f} | {r['rows'] / s['seconds']:,.0f} | 1.00 | - | - | - |",
    ]
    for name, label in LABELS.items():
        if name not in r:
            continue
        x = r[name]
        vs = f"{x['vs_sql']:.2f}" if "vs_sql" in x else "-"
        lines.append(f"| {label} | {x['seconds']:.1f} | {r['rows'] / x['seconds']:,.0f} | {x['ratio']:.2f} | {vs} |"
                     f" {'yes' if x['same_data'] else 'NO'} | {x['rss_mb']:.0f} MiB |")
    if r.get("compare"):
        lines += ["", f"compare: `{r['compare']}` (its own demo handler), same data, same run."]
    lines += ["", "Checkpoint tables after these runs (HOT updates, dead tuples):", "",
              "| table | updates | HOT updates | dead tuples |", "|---|---|---|---|"]
    for t in r["checkpoint_tables"]:
        lines.append(f"| {t['relname']} | {t['n_tup_upd']} | {t['n_tup_hot_upd']} | {t['n_dead_tup']} |")
    lines += ["", "Worker memory: a Python handler that reads every row into Python (bench/memory_handler.py),"
              " batches of 5,000, one worker process, over a narrow synthetic source (`bench_items`):", "",
              "| source rows | peak worker RSS | seconds | rows seen by the handler |", "|---|---|---|---|"]
    for n, m in r["memory"].items():
        lines.append(f"| {n:,} | {m['rss_mb']:.0f} MiB | {m['seconds']:.1f} | {m['items']:,} |")
    return "\n".join(lines)
