"""/metrics of a multi-process pool agrees with the checkpoint tables."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import job_row, run_cli, wait_for
from tests.fixtures import seed_demo
from tests.ports import free_port

pytestmark = pytest.mark.slow


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def test_metrics_of_a_two_process_pool_match_backfill_jobs(engine, db_url, pools):
    seed_demo(engine, 4000)
    job = run_cli(db_url, "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2025-01-01",
                  "--batch-size", "100", "--concurrency", "4", "--owner", "sre").stdout.strip()
    port = free_port()
    pool = pools("--concurrency", "2", "--metrics-port", str(port))
    wait_for(lambda: job_row(engine, job).status == "done", timeout=120, what="done")
    wait_for(lambda: scrape(port), what="metrics endpoint")
    row = job_row(engine, job)
    samples = scrape(port)
    labels = (("job_id", job), ("kind", "backfill_range"))
    assert samples[("tidegate_rows_processed_total", labels)] == row.processed_count == 4000
    assert samples[("tidegate_rows_failed_total", labels)] == row.error_count > 0
    batches = samples[("tidegate_batches_total", (("kind", "backfill_range"),))]
    hist = samples[("tidegate_batch_duration_seconds_count", (("kind", "backfill_range"),))]
    assert batches == hist >= 4000 / 100
    # every committed batch, each phase (observed just after the batch's pacing: wait for the last one's)
    phases = [("tidegate_batch_phase_seconds_count", (("kind", "backfill_range"), ("phase", p)))
              for p in ("gate", "claim", "handler", "record", "commit", "report", "pacing")]
    wait_for(lambda: all(scrape(port).get(k) == batches for k in phases), what="a count per phase of every batch")
    assert samples[("tidegate_queue_jobs", (("status", "done"),))] == 1
    assert samples[("tidegate_jobs", (("kind", "backfill_range"), ("status", "done")))] == 1
    assert samples[("tidegate_workers_alive", ())] == 2
    assert samples[("tidegate_database_up", ())] == 1
    assert pool.terminate() == 0
