"""What the state-guard triggers cost the batch protocol's bookkeeping (migration 0010).

    python -m bench.guard URL [--batches N] [--slices N]

URL names an empty scratch database that `tidegate db upgrade` has migrated. Plans one job with
N slices by hand and runs the per-batch bookkeeping (``begin_batch`` + ``record_batch``: the
slice and job UPDATEs a batch commits) round-robin over its slices, one transaction per batch,
with no source rows: this isolates the hot-path writes the triggers sit on. Prints batches/s.
Run it once at revision 0004 and once at head to compare.
"""

from __future__ import annotations

import argparse
import time

from sqlalchemy import text

from tidegate.worker import store
from tidegate.worker.db import make_engine

WORKER = "bench-guard"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--batches", type=int, default=20_000)
    parser.add_argument("--slices", type=int, default=4)
    args = parser.parse_args()
    engine = make_engine(args.url, pool_size=1)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE queue_jobs CASCADE; DELETE FROM tidegate_workers"))
        job = str(conn.execute(text("INSERT INTO queue_jobs (type, status) VALUES ('backfill_range', 'running')"
                                    " RETURNING id")).scalar_one())
        conn.execute(text("INSERT INTO backfill_jobs (job_id, kind, batch_size, status) VALUES (:j, 'backfill_range',"
                          " 100, 'running')"), {"j": job})
        for n in range(args.slices):
            conn.execute(text("INSERT INTO backfill_slices (job_id, slice_no, start_key, end_key, checkpoint,"
                              " locked_by) VALUES (:j, :n, '0', '1000000000000', '0', :w)"),
                         {"j": job, "n": n, "w": WORKER})
        store.register_worker(conn, WORKER, "bench", "localhost", 0, 3600)
    started = time.perf_counter()
    for i in range(args.batches):
        n = i % args.slices
        with engine.begin() as conn:
            assert store.begin_batch(conn, job, n, WORKER) is not None
            store.record_batch(conn, store.BatchRecord(job_id=job, slice_no=n, worker_id=WORKER, key_type="bigint",
                                                       checkpoint=i // args.slices * 100 + 100, processed=100))
    seconds = time.perf_counter() - started
    print(f"{args.batches} batches in {seconds:.2f}s: {args.batches / seconds:,.0f} batches/s")
    engine.dispose()


if __name__ == "__main__":
    main()
