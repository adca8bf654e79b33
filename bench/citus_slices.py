"""Slices that follow the data on Citus (issue 15.4): one slice per shard vs the normal key-range slices.

A three-node cluster of tests/citus.py (coordinator + 2 worker nodes, 4 shards), ``hero_snapshots``
distributed by ``user_id`` and paged by ``created_at``; the Python handler of tests/citus_handlers.py
writes one row per snapshot into ``troop_log``, colocated with it.

* ``key``: one job, ``--concurrency 4``: four slices of the created_at range. Each batch reads from
  all four shards and writes rows of every shard: both worker nodes, so Citus commits it with 2PC.
* ``shard``: four jobs, ``--concurrency 1`` each, one per shard: ``--where "user_id in (...)"``
  lists exactly the users of that shard, so Citus prunes every read to that one shard (a router
  query) and the batch writes only there. This is the best case of slicing by shard (no read
  fan-out, no hash filter evaluated on other shards): if it does not pay, nothing that slices by
  shard through the coordinator will.

Same data, same pool (``tidegate worker --concurrency 4 --drain``), interleaved rounds; each run must
leave troop_log with exactly one row per good snapshot. Prints per-round rows/s and the median ratio.

    .venv/bin/python -m bench.citus_slices [--rows 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from sqlalchemy import text

from bench.common import cli, run_pool
from tests.citus import SNAPSHOTS as DISTRIBUTED_SNAPSHOTS
from tests.citus import Cluster, ensure_built
from tests.fixtures import seed_demo

ENV = {"TIDEGATE_HANDLERS": "tests.citus_handlers"}
SNAPSHOTS = DISTRIBUTED_SNAPSHOTS + """
CREATE TABLE troop_log (user_id bigint NOT NULL, snapshot_id bigint NOT NULL, troops int);
SELECT create_distributed_table('troop_log', 'user_id', colocate_with => 'hero_snapshots');
"""
GOOD = "SELECT count(*) FROM hero_snapshots WHERE jsonb_typeof(raw->'ProfileData'->'Troops') = 'array'"
COMMON = ("--source", "hero_snapshots", "--key", "created_at", "--from", "2024-01-01", "--to", "2025-01-01",
          "--handler", "tests.citus_handlers:troop_log", "--owner", "bench")


def _reset(cluster: Cluster) -> None:
    with cluster.engine.begin() as conn:
        conn.execute(text("TRUNCATE troop_log"))
        conn.execute(text("TRUNCATE queue_jobs, backfill_jobs, backfill_slices, etl_errors CASCADE"))


def _run(cluster: Cluster, mode: str, users: dict[int, list[int]], batch: int) -> tuple[float, int]:
    """(seconds, batches committed with two-phase commit: the rows pg_dist_transaction gained)."""
    _reset(cluster)
    cluster.coordinator.query("DELETE FROM pg_dist_transaction")
    if mode == "key":
        cli(cluster.url, "enqueue", "backfill-range", *COMMON, "--batch-size", str(batch), "--concurrency", "4",
            env=ENV)
    else:
        for ids in users.values():
            cli(cluster.url, "enqueue", "backfill-range", *COMMON, "--batch-size", str(batch), "--concurrency", "1",
                "--where", "user_id in " + ",".join(map(str, ids)), env=ENV)
    seconds, _ = run_pool(cluster.url, 4, "--no-maintenance", env=ENV)
    with cluster.engine.connect() as conn:
        written = conn.execute(text("SELECT count(*), count(DISTINCT snapshot_id) FROM troop_log")).one()
        good = conn.execute(text(GOOD)).scalar()
        two_phase = conn.execute(text("SELECT count(DISTINCT gid) FROM pg_dist_transaction")).scalar()
    assert tuple(written) == (good, good), f"{mode}: troop_log holds {tuple(written)}, expected {good} once each"
    return seconds, int(two_phase)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=2_000,
                        help="at most 4,000: a shard's list is --where's in (<= 1000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    ensure_built()
    cluster = Cluster()
    try:
        cluster.start()
        # keep pg_dist_transaction's records (one per node of each 2PC commit) for the count: no recovery pass
        cluster.coordinator.query("ALTER SYSTEM SET citus.recover_2pc_interval = -1")
        cluster.coordinator.query("SELECT pg_reload_conf()")
        with cluster.engine.begin() as conn:
            conn.execute(text(SNAPSHOTS))
        seed_demo(cluster.engine, args.rows, users=args.users)
        users: dict[int, list[int]] = defaultdict(list)
        with cluster.engine.connect() as conn:
            for shard, user in conn.execute(text(
                    "SELECT get_shard_id_for_distribution_column('hero_snapshots', user_id), user_id"
                    " FROM (SELECT DISTINCT user_id FROM hero_snapshots) u ORDER BY 1, 2")):
                users[shard].append(user)
        print(f"{args.rows} snapshots, {args.users} users, shards: {[len(v) for v in users.values()]} users each;"
              f" batch {args.batch}, pool --concurrency 4", flush=True)
        rates: dict[str, list[float]] = {"key": [], "shard": []}
        for r in range(args.rounds):
            order = ["key", "shard"] if r % 2 == 0 else ["shard", "key"]
            for mode in order:
                seconds, two_phase = _run(cluster, mode, users, args.batch)
                rates[mode].append(args.rows / seconds)
                print(f"round {r + 1} {mode:5s} {seconds:6.1f} s {args.rows / seconds:7.0f} rows/s"
                      f"  2PC records {two_phase}", flush=True)
            time.sleep(1)
        ratios = [s / k for s, k in zip(rates["shard"], rates["key"], strict=True)]
        for mode, values in rates.items():
            print(f"{mode:5s} median {statistics.median(values):7.0f} rows/s"
                  f"  (min {min(values):.0f}, max {max(values):.0f})")
        rounds = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"shard/key ratio: median {statistics.median(ratios):.2f} (per round {rounds})")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
