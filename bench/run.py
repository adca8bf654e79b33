"""`make bench`: every benchmark in one run; prints figures and writes bench/RESULTS.md.

    python -m bench.run [--only NAME ...] [--rows N]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import sys
from pathlib import Path

import psutil

BENCHES = ["backfill"]  # modules of bench/ exposing run() and report()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", choices=BENCHES)
    parser.add_argument("--rows", type=int, help="source rows for the backfill comparison (default 500,000)")
    args = parser.parse_args()
    sections = []
    for name in args.only or BENCHES:
        module = importlib.import_module(f"bench.{name}")
        kwargs = {"rows": args.rows} if args.rows and name == "backfill" else {}
        print(f"== {name}", flush=True)
        sections.append(module.report(module.run(**kwargs)))
    header = (f"# Benchmark results\n\nMeasured {datetime.date.today()} on {platform.machine()},"
              f" {psutil.cpu_count()} cores, {psutil.virtual_memory().total // 2**30} GiB, Python"
              f" {platform.python_version()}. Command: `{' '.join(['python -m bench.run', *sys.argv[1:]])}`"
              " (what `make bench` runs).\n")
    text = header + "\n" + "\n\n".join(sections) + "\n"
    print(text)
    if not args.only:
        (Path(__file__).parent / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
