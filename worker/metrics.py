"""Prometheus metrics, declared once.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the pool sets it when
``--metrics-port`` is given) every worker process writes its samples there
and the pool's HTTP endpoint aggregates them, so N processes report one view.
Labels are bounded: job kind, job id (one per job, not per item), gate.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ROWS_PROCESSED = Counter(
    "tidegate_rows_processed_total", "Source rows processed by batches", ["kind", "job_id"]
)
ROWS_FAILED = Counter(
    "tidegate_rows_failed_total", "Items that failed in a handler (written to etl_errors)", ["kind", "job_id"]
)
BATCHES = Counter("tidegate_batches_total", "Batches committed", ["kind"])
BATCH_FAILURES = Counter("tidegate_batch_failures_total", "Batches rolled back and retried", ["kind"])
BATCH_SECONDS = Histogram(
    "tidegate_batch_duration_seconds",
    "Wall time of one batch transaction",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LEASE_TAKEOVERS = Counter(
    "tidegate_lease_takeovers_total", "Slices taken over from a worker whose lease expired", ["kind"]
)
