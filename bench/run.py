"""`make bench`: every benchmark in one run; prints figures and writes bench/RESULTS.md.

    python -m bench.run [--only NAME ...] [--rows N] [--memory-rows N,N,N] [--jobs N]
                        [--queue-processes 1,2] [--scaling-processes 1,2,4,8] [--pgbench-seconds S]
                        [--fanout-rows N] [--citus-rows N]

Uses $DATABASE_URL (or $TIDEGATE_BENCH_DATABASE_URL) if set, else the embedded database; every
benchmark works in scratch databases of its own and drops them. Only a full run (no --only)
rewrites bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import time
from pathlib import Path

import psutil
from sqlalchemy.engine import make_url

# modules exposing run() and report()
BENCHES = ["backfill", "splits", "queue", "scaling", "foreground", "adaptive", "archive", "selection", "start",
           "fanout", "citus"]


def ints(value: str) -> tuple[int, ...]:
    return tuple(int(v.replace("_", "")) for v in value.split(",") if v.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=BENCHES)
    parser.add_argument("--rows", type=int, help="source rows for the backfill comparison (default 500,000)")
    parser.add_argument("--backfill-compare", metavar="TIDEGATE",
                        help="another tidegate executable whose Python handler runs in the same backfill run")
    parser.add_argument("--backfill-rounds", type=int,
                        help="interleaved rounds of the backfill runs, SQL and Python handlers (default 3)")
    parser.add_argument("--large", action="store_true",
                        help="instead: one backfill job at scale (5,000,000 snapshots, or --rows) against one"
                             " statement and the 30-minute target, worker RSS at 10/50/100%%; writes"
                             " bench/RESULTS-large.md")
    parser.add_argument("--memory-rows", type=ints, help="source rows of the memory runs (default 100k,1M,5M)")
    parser.add_argument("--jobs", type=int, help="no-op jobs of the queue benchmark (default 20,000)")
    parser.add_argument("--queue-processes", type=ints, help="worker processes per queue run (default 1,2)")
    parser.add_argument("--queue-repeats", type=int, help="drains per system in the queue runs, median kept (3)")
    parser.add_argument("--queue-systems", type=lambda v: tuple(v.split(",")),
                        help="systems of the queue runs (default tidegate,pgqueuer,procrastinate)")
    parser.add_argument("--scaling-processes", type=ints, help="worker processes of the scaling runs (1,2,4,8)")
    parser.add_argument("--archive-rounds", type=int, help="interleaved rounds of the archive comparison (default 3)")
    parser.add_argument("--archive-streams", type=int, help="streams of 10 events in the archive comparison (100,000)")
    parser.add_argument("--start-runs", type=int, help="pool starts measured (default 7)")
    parser.add_argument("--start-compare", metavar="TIDEGATE",
                        help="another tidegate executable to start in the same rounds, interleaved (before/after)")
    parser.add_argument("--fanout-rows", type=int, help="snapshots in all of the fan-out runs (default 48,000)")
    parser.add_argument("--fanout-rounds", type=int, help="interleaved rounds of the fan-out runs, median kept (1)")
    parser.add_argument("--citus-rows", type=int, help="snapshots of the Citus vs single node runs (default 50,000)")
    parser.add_argument("--citus-rounds", type=int, help="interleaved rounds of the Citus runs, median kept (2)")
    parser.add_argument("--pgbench-seconds", type=int, help="seconds per pgbench window (default 20)")
    args = parser.parse_args()
    options = {
        "backfill": {"rows": args.rows, "memory_rows": args.memory_rows, "compare": args.backfill_compare,
                     "rounds": args.backfill_rounds, "large": args.large},
        "queue": {"jobs": args.jobs, "processes": args.queue_processes, "systems": args.queue_systems,
                  "repeats": args.queue_repeats},
        "splits": {},
        "scaling": {"processes": args.scaling_processes},
        "foreground": {"seconds": args.pgbench_seconds},
        "adaptive": {},
        "archive": {"rounds": args.archive_rounds, "streams": args.archive_streams},
        "selection": {},
        "start": {"runs": args.start_runs, "compare": args.start_compare},
        "fanout": {"rows": args.fanout_rows, "rounds": args.fanout_rounds},
        "citus": {"rows": args.citus_rows, "rounds": args.citus_rounds},
    }
    sections = []
    started = time.perf_counter()
    for name in ["backfill"] if args.large else args.only or BENCHES:
        module = importlib.import_module(f"bench.{name}")
        kwargs = {k: v for k, v in options[name].items() if v}
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        sections.append(module.report(module.run(**kwargs)))
        print(f"== {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    url = os.environ.get("TIDEGATE_BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    where = f"DATABASE_URL={make_url(url).render_as_string(hide_password=True)} " if url else ""
    command = " ".join([f"{where}make bench", *([f"BENCH_ARGS=\"{' '.join(sys.argv[1:])}\""] if sys.argv[1:] else [])])
    header = (f"# Benchmark results\n\nMeasured {datetime.date.today()} on {platform.machine()},"
              f" {psutil.cpu_count()} cores, {psutil.virtual_memory().total // 2**30} GiB, Python"
              f" {platform.python_version()}, in {(time.perf_counter() - started) / 60:.1f} min. Command:\n\n"
              f"```\n{command}\n```\n\n(`make bench` runs `python -m bench.run $(BENCH_ARGS)`.) Every ratio compares"
              " runs of the same run on the same data. Whatever else runs on the machine moves the seconds: read"
              " the ratios, not the seconds.\n")
    text = header + "\n" + "\n\n".join(sections) + "\n"
    print(text)
    if args.large:
        (Path(__file__).parent / "RESULTS-large.md").write_text(text)
    elif not args.only:
        (Path(__file__).parent / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
