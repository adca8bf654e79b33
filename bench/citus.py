"""Citus vs a single node: the demo's SQL-handler backfill over colocated distributed tables on a 3-node
cluster (a coordinator and two workers, tests/citus.py), against the same backfill over plain tables on
one PostgreSQL server without Citus; each against one INSERT ... SELECT (the handler file over the whole
range) on the same setup.

Both setups are the same PostgreSQL 15 binaries with the same settings (tests/citus.py SETTINGS: 32 MB
shared buffers, fsync off), started for this run on free ports, all on this one machine: the cluster's
three servers share its cores, so this measures what distribution costs here, not what it buys on
separate machines. Both hold the same rows (seeded on the single node, copied to the cluster), tables
keyed (user_id, id) on both, distributed by user_id on the cluster (4 shards). Skipped, with the reason,
when citus.so is not installed.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from pathlib import Path

import psycopg
from sqlalchemy import text

from bench.common import ROOT, cli, data_range, engine_for, run_pool
from tidegate.worker.sql import load

SQL_HANDLER = ROOT / "jobs/demo/hero_troops.sql"
EVERYTHING = {"lo": "2000-01-01Z", "hi": "2100-01-01Z"}
COLUMNS = "id, user_id, namecode, created_at, size_bytes, raw, processed_at"
TABLES = """
CREATE TABLE hero_snapshots (
    id bigserial, user_id bigint NOT NULL, namecode text NOT NULL, created_at timestamptz NOT NULL,
    size_bytes integer NOT NULL, raw jsonb NOT NULL, processed_at timestamptz, PRIMARY KEY (user_id, id));
CREATE INDEX hero_snapshots_created_at_idx ON hero_snapshots (created_at);
CREATE TABLE user_troops (
    user_id bigint NOT NULL, troop_id integer NOT NULL, level integer NOT NULL, amount integer NOT NULL,
    ascension integer NOT NULL DEFAULT 0, snapshot_id bigint NOT NULL, snapshot_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, troop_id));
"""
DISTRIBUTE = """
SELECT create_distributed_table('hero_snapshots', 'user_id');
SELECT create_distributed_table('user_troops', 'user_id', colocate_with => 'hero_snapshots');
"""
JOB_SECONDS = ("SELECT extract(epoch FROM finished_at - started_at) FROM backfill_jobs"
               " ORDER BY created_at DESC LIMIT 1")
SETUPS = ("single node", "citus")


def unavailable() -> str | None:
    """Why the cluster cannot run here, or None."""
    from tests.citus import PG_BIN

    pg_config = PG_BIN / "pg_config"
    if not (PG_BIN / "initdb").exists() or not pg_config.exists():
        return f"no PostgreSQL 15 server binaries in {PG_BIN}"
    libdir = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True, check=True).stdout.strip()
    if not (Path(libdir) / "citus.so").exists():
        return f"citus.so is not in {libdir} (`make citus` builds it)"
    return None


def _checksum(engine) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        row = conn.execute(text(load("tidegate.jobs.demo", "demo.sql")["troops_checksum"])).one()
    return int(row.rows), int(row.checksum)


def _reset(engine, nodes) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE user_troops"))
    for node in nodes:
        node.query("CHECKPOINT")


def _single(engine, nodes) -> dict:  # type: ignore[no-untyped-def]
    _reset(engine, nodes)
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(SQL_HANDLER.read_text()), EVERYTHING)
    return {"seconds": time.perf_counter() - started, "checksum": _checksum(engine)}


def _tidegate(url: str, engine, nodes, concurrency: int, batch: int) -> dict:  # type: ignore[no-untyped-def]
    _reset(engine, nodes)
    cli(url, "enqueue", "backfill-range", *data_range(url), "--handler", f"sql:{SQL_HANDLER}",
        "--batch-size", str(batch), "--concurrency", str(concurrency), "--owner", "bench")
    seconds, _ = run_pool(url, concurrency)
    with engine.connect() as conn:
        job = float(conn.execute(text(JOB_SECONDS)).scalar())
    return {"seconds": seconds, "job_seconds": job, "checksum": _checksum(engine)}


def run(url: str | None = None, rows: int = 50_000, batch: int = 5000, rounds: int = 2,
        concurrency: tuple[int, ...] = (1, 2)) -> dict:
    """``url`` is not used: both setups are servers of this run's own."""
    reason = unavailable()
    if reason:
        print(f"citus: skipped: {reason}", flush=True)
        return {"skipped": reason}
    from tests.citus import SHARDS, Cluster, migrate, plain_node
    from tests.fixtures import seed_demo

    out: dict = {"rows": rows, "batch": batch, "rounds": rounds, "concurrency": concurrency, "shards": SHARDS}
    cluster, plain = Cluster(), None
    engines: dict = {}
    try:
        t0 = time.perf_counter()
        cluster.start()
        plain = plain_node()
        migrate(plain.url)
        print(f"cluster and single node up: {time.perf_counter() - t0:.1f}s", flush=True)
        urls = {"single node": plain.url, "citus": cluster.url}
        nodes = {"single node": [plain], "citus": cluster.nodes}
        engines = {s: engine_for(u) for s, u in urls.items()}
        for setup, engine in engines.items():
            with engine.begin() as conn:
                conn.execute(text(TABLES))
                if setup == "citus":
                    conn.execute(text(DISTRIBUTE))
        seed_demo(engines["single node"], rows)
        with psycopg.connect(plain.url) as src, psycopg.connect(cluster.url) as dst:  # the same rows on both
            with src.cursor().copy(f"COPY hero_snapshots ({COLUMNS}) TO STDOUT") as read, \
                    dst.cursor().copy(f"COPY hero_snapshots ({COLUMNS}) FROM STDIN") as write:
                for data in read:
                    write.write(data)
        for engine in engines.values():
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE hero_snapshots"))
            with engine.connect() as conn:
                out["server"] = conn.execute(text("SHOW server_version")).scalar()
        out["citus_version"] = cluster.coordinator.query(
            "SELECT extversion FROM pg_extension WHERE extname = 'citus'")[0][0]
        print(f"{rows:,} snapshots on both: {time.perf_counter() - t0:.1f}s", flush=True)

        names = [(s, "single") for s in SETUPS] + [(s, f"c{c}") for c in concurrency for s in SETUPS]
        rounds_out: list[dict] = []
        for r in range(rounds):
            got: dict = {}
            for setup, what in names:
                if what == "single":
                    x = _single(engines[setup], nodes[setup])
                else:
                    x = _tidegate(urls[setup], engines[setup], nodes[setup], int(what[1:]), batch)
                got[(setup, what)] = x
                print(f"round {r + 1}, {setup}, {what}: {x['seconds']:.1f}s"
                      + (f" (job {x['job_seconds']:.1f}s)" if "job_seconds" in x else "")
                      + f", {x['checksum'][0]:,} rows", flush=True)
            rounds_out.append(got)
        out["runs"] = _summary(rounds_out, names)
        reference = rounds_out[0][("single node", "single")]["checksum"]
        out["troops"] = reference[0]
        out["same_data"] = all(x["checksum"] == reference for got in rounds_out for x in got.values())
    finally:
        for engine in engines.values():
            engine.dispose()
        cluster.stop()
        if plain is not None:
            try:
                plain.stop("immediate")
            except RuntimeError:
                pass
            shutil.rmtree(plain.pgdata.parent, ignore_errors=True)
    return out


def _summary(rounds: list[dict], names: list[tuple[str, str]]) -> dict:
    """Per run: median seconds, and median (min-max) of the ratios taken within each round."""
    def med(values: list[float]) -> tuple[float, float, float]:
        return statistics.median(values), min(values), max(values)

    out: dict = {}
    for setup, what in names:
        xs = [got[(setup, what)] for got in rounds]
        y: dict = {"seconds": med([x["seconds"] for x in xs])}
        if "job_seconds" in xs[0]:
            y["job_seconds"] = med([x["job_seconds"] for x in xs])
            single = [got[(setup, "single")]["seconds"] for got in rounds]
            y["vs_single"] = med([s / x["seconds"] for s, x in zip(single, xs, strict=True)])
            y["job_vs_single"] = med([s / x["job_seconds"] for s, x in zip(single, xs, strict=True)])
        other = [got[("single node", what)] for got in rounds]  # citus's time over the single node's, same run
        y["vs_plain"] = med([x["seconds"] / o["seconds"] for x, o in zip(xs, other, strict=True)])
        key = "job_seconds" if "job_seconds" in xs[0] else "seconds"
        y["job_vs_plain"] = med([x[key] / o[key] for x, o in zip(xs, other, strict=True)])
        out[(setup, what)] = y
    return out


def report(r: dict) -> str:
    title = "### Citus (3 nodes) vs a single node: the demo's SQL-handler backfill"
    if "skipped" in r:
        return f"{title}\n\nSkipped: {r['skipped']}."

    def fmt(t: tuple[float, float, float]) -> str:
        return f"{t[0]:.2f} ({t[1]:.2f}-{t[2]:.2f})" if len(set(t)) > 1 else f"{t[0]:.2f}"

    lines = [f"{title} ({r['rows']:,} snapshots -> {r['troops']:,} rows, PostgreSQL {r['server']}, Citus"
             f" {r['citus_version']}, {r['shards']} shards, median of {r['rounds']} rounds)", "",
             "| setup | run | seconds, wall | seconds, job | vs one statement, wall (range) | vs one statement, job |"
             " time, Citus / single node, wall (range) | time, Citus / single node, job |",
             "|---|---|---|---|---|---|---|---|"]
    for (setup, what), y in r["runs"].items():
        run_ = "one INSERT ... SELECT" if what == "single" else f"tidegate, SQL handler, concurrency {what[1:]}"
        job = f"{y['job_seconds'][0]:.1f}" if "job_seconds" in y else "-"
        vs = fmt(y["vs_single"]) if "vs_single" in y else "1.00"
        job_vs = fmt(y["job_vs_single"]) if "job_vs_single" in y else "1.00"
        lines.append(f"| {setup} | {run_} | {y['seconds'][0]:.1f} | {job} | {vs} | {job_vs} |"
                     f" {fmt(y['vs_plain']) if setup == 'citus' else '1.00'} |"
                     f" {fmt(y['job_vs_plain']) if setup == 'citus' else '1.00'} |")
    lines += ["", f"Batches of {r['batch']:,}; every run left the same user_troops (checksum):"
              f" {'yes' if r['same_data'] else 'NO'}. Both setups are this machine's PostgreSQL 15 with the same"
              " settings (32 MB shared buffers, fsync off), started by the bench: the cluster's coordinator and"
              " two workers **share this machine's 2 cores**, so this is what distribution costs on one machine,"
              " not what it buys on three. Wall: pool launch to exit; job: plan to last batch. A ratio above 1"
              " in 'vs one statement' is faster than the statement; 'Citus / single node' above 1 is Citus slower."]
    return "\n".join(lines)
