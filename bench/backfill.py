"""backfill-range vs the same work as one INSERT ... SELECT (the core issue's figures).

500,000 hero_snapshots, one user each, so the demo transformation writes 5,000,000 user_troops
rows. The single statement is the SQL handler file run once over the whole range; tidegate runs
the same file per batch of 5,000 keys at concurrency 1 and 2, and the Python handler (the demo's
``hero_troops``) at 1 and 2, each right after the SQL handler at the same concurrency. Every run must
leave user_troops with the single statement's checksum. All runs go in interleaved rounds (median and
range of the ratios within each round); the SQL handler's workers log where each batch's time goes
(worker/runner.py PHASES), summed per slice, for the "where the time goes" table.

``large``: one job at scale instead (`make bench BENCH_ARGS="--large"`): 5,000,000 snapshots (``rows``),
the single statement once, then tidegate's SQL handler at concurrency 2, with the worker's RSS at 10%,
50% and 100% of the job's rows; against the seed's 30-minute target.
"""

from __future__ import annotations

import statistics
import time

from sqlalchemy import text

from bench.common import (
    ROOT,
    PeakRss,
    cli,
    engine_for,
    reset,
    run_pool,
    run_pool_logged,
    scratch_database,
    seed,
    server_url,
)
from tidegate.worker.runner import PHASES
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


def _single(engine) -> dict:  # type: ignore[no-untyped-def]
    reset(engine, "user_troops")
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(SQL_HANDLER.read_text()), {"lo": "2000-01-01Z", "hi": "2100-01-01Z"})
    return {"seconds": time.perf_counter() - started, "checksum": _checksum(engine)}


def _sql_handler(url: str, engine, concurrency: int, batch: int,  # type: ignore[no-untyped-def]
                 rss: PeakRss | None = None) -> dict:
    """The SQL handler's job at ``concurrency``, its workers' JSON debug logs read for the phase sums."""
    reset(engine, "user_troops")
    cli(url, "enqueue", "backfill-range", *RANGE, "--handler", f"sql:{SQL_HANDLER}", "--batch-size", str(batch),
        "--concurrency", str(concurrency), "--owner", "bench")
    slices: list[dict] = []
    seconds, peak, _ = run_pool_logged(url, concurrency, slices=slices, maintenance=True, rss=rss)
    times = {k: sum(float(d["slice_times"].get(k, 0.0)) for d in slices)
             for k in (*PHASES, "batches", "slice_claim")}
    return {"seconds": seconds, "rss_mb": peak, "checksum": _checksum(engine), "times": times,
            "slices_claimed": len(slices), "concurrency": concurrency}


SQL_RUNS = (("sql_c1", 1, 5000), ("sql_c2", 2, 5000))


def _rounds(url: str, engine, rounds: int, compare: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    """The single statement, then at each concurrency the SQL handler and right after it the Python handler
    (and ``compare``'s), interleaved, ``rounds`` times: medians and ranges of the ratios taken within each
    round. Runs minutes apart on this machine differ by a third (its disk, checkpoints, autovacuum of the
    last run's rows): only a ratio within a round says something."""
    singles: list[dict] = []
    names = [name for name, _, _, _ in RUNS if compare or not name.endswith("_compare")]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for i in range(rounds):
        singles.append(_single(engine))
        print(f"round {i + 1}: single statement {singles[-1]['seconds']:.1f}s", flush=True)
        for name, handler, conc, batch in RUNS:
            if name not in runs:
                continue
            if handler == "sql":
                x = _sql_handler(url, engine, conc, batch)
            else:
                x = _tidegate(url, engine, handler, conc, batch, exe=compare if name.endswith("_compare") else None)
                x["vs_sql"] = runs[f"sql_c{conc}"][-1]["seconds"] / x["seconds"]
            runs[name].append(x)
            print(f"round {i + 1}: {name} {x['seconds']:.1f}s ratio {singles[-1]['seconds'] / x['seconds']:.2f}"
                  + (f" vs SQL handler {x['vs_sql']:.2f}" if "vs_sql" in x else ""), flush=True)
    single = {"seconds": statistics.median(s["seconds"] for s in singles),
              "all": [s["seconds"] for s in singles], "checksum": singles[0]["checksum"]}
    out: dict = {"single_statement": single}
    for name, all_runs in runs.items():
        ratios = [s["seconds"] / x["seconds"] for s, x in zip(singles, all_runs, strict=True)]
        mid = sorted(range(len(all_runs)), key=lambda k: all_runs[k]["seconds"])[len(all_runs) // 2]
        out[name] = {**all_runs[mid], "run_seconds": all_runs[mid]["seconds"],
                     "seconds": statistics.median(x["seconds"] for x in all_runs),
                     "all": [x["seconds"] for x in all_runs], "ratio": statistics.median(ratios),
                     "ratio_range": (min(ratios), max(ratios)), "rss_mb": max(x["rss_mb"] for x in all_runs),
                     "same_data": all(x["checksum"] == single["checksum"] for x in all_runs)}
        vs_sql = [x["vs_sql"] for x in all_runs if "vs_sql" in x]
        if vs_sql:
            out[name] |= {"vs_sql": statistics.median(vs_sql), "vs_sql_range": (min(vs_sql), max(vs_sql))}
    return out


def _large(url: str, engine, rows: int) -> dict:  # type: ignore[no-untyped-def]
    """One job at scale: the single statement once, then the SQL handler at concurrency 2, its worker's
    RSS sampled against the job's progress."""
    single = _single(engine)
    print(f"single statement: {single['seconds']:.1f}s, {single['checksum'][0]} rows", flush=True)
    progress_engine = engine_for(url)

    def progress() -> float:
        with progress_engine.connect() as conn:
            row = conn.execute(text("SELECT processed_count, total_estimate FROM backfill_jobs"
                                    " ORDER BY created_at DESC LIMIT 1")).first()
        return 0.0 if row is None or not row.total_estimate else row.processed_count / row.total_estimate

    rss = PeakRss(0, probe=progress, every=2.0)
    run = _sql_handler(url, engine, 2, 5000, rss=rss)
    progress_engine.dispose()
    run["ratio"] = single["seconds"] / run["seconds"]
    run["same_data"] = run["checksum"] == single["checksum"]
    last = [mb for _, mb in rss.trace if mb > 0]  # the last sample while the workers were still there
    run["rss_at"] = {p: rss.at(p) for p in (0.1, 0.5)} | {1.0: last[-1] if last else None}
    run["rss_samples"] = len(rss.trace)
    print(f"sql_c2: {run['seconds']:.1f}s ratio {run['ratio']:.2f} same data {run['same_data']}"
          f" RSS at 10/50/100%: {run['rss_at']}", flush=True)
    return {"single_statement": single, "sql_c2": run}


MEMORY_ROWS = (100_000, 1_000_000, 5_000_000)


RUNS = (("sql_c1", "sql", 1, 5000), ("python_c1", "hero_troops", 1, 5000),
        ("python_c1_compare", "hero_troops", 1, 5000), ("sql_c2", "sql", 2, 5000),
        ("python_c2", "hero_troops", 2, 5000), ("python_c2_compare", "hero_troops", 2, 5000))
RUNS_NAMES = [name for name, _, _, _ in RUNS]
LABELS = {"sql_c1": "tidegate, SQL handler, concurrency 1", "python_c1": "tidegate, Python handler, concurrency 1",
          "python_c1_compare": "compare's Python handler, concurrency 1",
          "sql_c2": "tidegate, SQL handler, concurrency 2", "python_c2": "tidegate, Python handler, concurrency 2",
          "python_c2_compare": "compare's Python handler, concurrency 2"}


def run(url: str | None = None, rows: int | None = None, memory_rows: tuple[int, ...] = MEMORY_ROWS,
        compare: str | None = None, rounds: int = 3, large: bool = False) -> dict:
    """``compare``: another `tidegate` executable (main's, say) whose Python handler runs in the same run,
    right after this tree's at each concurrency: the before/after of a handler change."""
    server = url or server_url()
    rows = rows or (5_000_000 if large else 500_000)
    out: dict = {"rows": rows, "compare": compare, "large": large}
    with scratch_database(server) as db:
        engine = engine_for(db)
        with engine.connect() as conn:
            out["server"] = conn.execute(text("SHOW server_version")).scalar()
        seeding = time.perf_counter()
        seed(db, rows)
        out["seed_seconds"] = time.perf_counter() - seeding
        if large:
            out.update(_large(db, engine, rows))
            engine.dispose()
            return out

        out.update(_rounds(db, engine, rounds, compare))
        out["rounds"] = rounds
        for name in RUNS_NAMES:
            x = out.get(name)
            if x is None:
                continue
            vs = (f" vs SQL handler {x['vs_sql']:.2f} ({x['vs_sql_range'][0]:.2f}-{x['vs_sql_range'][1]:.2f})"
                  if "vs_sql" in x else "")
            print(f"{name}: median {x['seconds']:.1f}s ratio {x['ratio']:.2f} ({x['ratio_range'][0]:.2f}-"
                  f"{x['ratio_range'][1]:.2f}){vs} same data {x['same_data']} worker RSS {x['rss_mb']:.0f} MiB",
                  flush=True)

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


def _times_table(r: dict) -> list[str]:
    """Where one batch's time goes, at concurrency 1 and 2 (the median round's run)."""
    lines = ["", "Where the time goes (SQL handler, batches of 5,000 snapshots; the median round's run; per batch,"
             " summed over its workers' slices and divided by the batches; \"outside batches\": each worker's"
             " time not in a batch (process start, planning, claiming slices, idle at the tail), per worker):", "",
             f"| run | batches | {' | '.join(PHASES)} | batch total | outside batches |",
             "|---|---|" + "---|" * len(PHASES) + "---|---|"]
    for name in ("sql_c1", "sql_c2"):
        x = r.get(name)
        if not x or "times" not in x:
            continue
        t, n = x["times"], max(1, int(x["times"]["batches"]))
        total = sum(t[p] for p in PHASES)
        wall = x.get("run_seconds", x["seconds"])  # the run the times are of
        outside = wall - total / x["concurrency"]
        cells = " | ".join(f"{1000 * t[p] / n:.1f} ms ({100 * t[p] / total:.0f}%)" for p in PHASES)
        lines.append(f"| {LABELS[name]} | {n} | {cells} | {1000 * total / n:.1f} ms |"
                     f" {outside:.1f} s of {wall:.1f} s |")
    return lines


def _report_large(r: dict) -> str:
    s, x = r["single_statement"], r["sql_c2"]
    rss = " / ".join("-" if v is None else f"{v:.0f} MiB" for v in x["rss_at"].values())
    lines = [f"### One job at scale: {r['rows']:,} snapshots -> {s['checksum'][0]:,} rows (PostgreSQL {r['server']})",
             "", "| run | seconds | rows/s (source) | ratio vs single statement | vs 30-minute target | same data |"
             " worker RSS at 10% / 50% / 100% of the job | peak worker RSS |", "|---|---|---|---|---|---|---|---|",
             f"| single statement | {s['seconds']:.1f} | {r['rows'] / s['seconds']:,.0f} | 1.00 |"
             f" {s['seconds'] / 1800:.0%} of it | - | - | - |",
             f"| {LABELS['sql_c2']} | {x['seconds']:.1f} | {r['rows'] / x['seconds']:,.0f} | {x['ratio']:.2f} |"
             f" {x['seconds'] / 1800:.0%} of it | {'yes' if x['same_data'] else 'NO'} | {rss}"
             f" | {x['rss_mb']:.0f} MiB |",
             "", f"Seeding took {r['seed_seconds']:.0f} s (not counted). RSS: the largest worker process's, sampled"
             f" every 2 s against the job's processed rows ({x['rss_samples']} samples)."]
    lines += _times_table(r)
    return "\n".join(lines)


def report(r: dict) -> str:
    if r.get("large"):
        return _report_large(r)
    s = r["single_statement"]
    rounds = f", median of {r['rounds']} interleaved rounds" if r.get("rounds", 1) > 1 else ""
    lines = [
        f"### backfill-range vs one INSERT ... SELECT ({r['rows']:,} snapshots -> {s['checksum'][0]:,} rows,"
        f" PostgreSQL {r['server']}{rounds})",
        "",
        "| run | seconds | rows/s (source) | ratio vs single statement | vs SQL handler, same concurrency |"
        " same data | peak worker RSS |",
        "|---|---|---|---|---|---|---|",
        f"| single statement ({', '.join(f'{v:.1f}' for v in s.get('all', []))} s) | {s['seconds']:.1f} |"
        f" {r['rows'] / s['seconds']:,.0f} | 1.00 | - | - | - |",
    ]
    for name, label in LABELS.items():
        if name not in r:
            continue
        x = r[name]
        vs = f"{x['vs_sql']:.2f}" if "vs_sql" in x else "-"
        if "vs_sql_range" in x:
            vs += f" ({x['vs_sql_range'][0]:.2f}-{x['vs_sql_range'][1]:.2f})"
        if "ratio_range" in x:  # the SQL handler's rounds
            label = f"{label} ({', '.join(f'{v:.1f}' for v in x['all'])} s)"
            ratio = f"{x['ratio']:.2f} ({x['ratio_range'][0]:.2f}-{x['ratio_range'][1]:.2f})"
        else:
            ratio = f"{x['ratio']:.2f}"
        lines.append(f"| {label} | {x['seconds']:.1f} | {r['rows'] / x['seconds']:,.0f} | {ratio} | {vs} |"
                     f" {'yes' if x['same_data'] else 'NO'} | {x['rss_mb']:.0f} MiB |")
    lines += _times_table(r)
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
        rss = f"{m['rss_mb']:.0f} MiB" if m["rss_mb"] else "not sampled (the run ended before the first sample)"
        lines.append(f"| {n:,} | {rss} | {m['seconds']:.1f} | {m['items']:,} |")
    return "\n".join(lines)
