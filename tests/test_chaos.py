"""The long kill storm (make test-chaos): a 1,000,000-row backfill, a pool of 4 workers, one of them
SIGKILLed at random every few seconds and restarted by the pool. Final data must equal a clean run.

Size: TIDEGATE_CHAOS_ROWS (default 1,000,000).
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from sqlalchemy import text

from tests.conftest import job_row, run_cli, wait_for
from tests.fixtures import clean_run_checksum, seed_demo, troops_checksum

pytestmark = pytest.mark.chaos
ROWS = int(os.environ.get("TIDEGATE_CHAOS_ROWS", "1000000"))


def test_kill_storm_on_a_million_row_backfill(engine, db_url, pools):
    seed_demo(engine, ROWS, users=ROWS)
    clean = clean_run_checksum(engine)

    job = run_cli(db_url, "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2100-01-01",
                  "--handler", "hero_troops", "--batch-size", "1000", "--concurrency", "8",
                  "--owner", "chaos").stdout.strip()
    lease = 3.0
    pool = pools("--concurrency", "4", "--lease", str(lease))
    rng = random.Random(2026)
    kills = 0
    while job_row(engine, job).status != "done":
        time.sleep(rng.uniform(1.0, 4.0))
        workers = pool.workers()
        if workers and job_row(engine, job).status != "done":
            rng.choice(workers).send_signal(signal.SIGKILL)
            kills += 1
        assert kills < 1000
    wait_for(lambda: job_row(engine, job).status == "done", timeout=60, what="done")
    assert pool.terminate() == 0

    row = job_row(engine, job)
    assert kills >= 1
    assert troops_checksum(engine) == clean
    assert row.processed_count == ROWS
    with engine.connect() as conn:
        errors = conn.execute(text("SELECT count(*), count(DISTINCT item_key) FROM etl_errors")).one()
    assert errors[0] == errors[1] == row.error_count
    log = pool.output()
    # every takeover happened only after the dead worker's lease ran out (the claim query's rule),
    # and the pool logged each death and restart
    assert log.count("died (signal SIGKILL)") == kills
    print(f"\nkill storm: {ROWS} rows, {kills} SIGKILLs, {log.count('taking over from')} takeovers")
