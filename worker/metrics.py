"""Prometheus metrics, declared once.

Worker processes count what they do (counters and the batch histogram). With
``tidegate worker --metrics-port`` the pool points ``PROMETHEUS_MULTIPROC_DIR``
at a fresh directory before it starts its workers, and its HTTP endpoint sums
every process's samples (prometheus-client's multiprocess mode), so N worker
processes report one view. What the database knows (queue depth, jobs by
status, rows remaining, slices in flight) is read by :class:`DatabaseCollector`
at scrape time, once per scrape, not by every worker.

Labels are bounded: job kind, job status, gate, and job_id (one value per job,
never per item); per-job gauges cover active jobs and those finished in the
last day only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

ROWS_PROCESSED = Counter(
    "tidegate_rows_processed_total", "Source rows processed by committed batches", ["kind", "job_id"]
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
GATE_HOLDS = Counter("tidegate_gate_holds_total", "Batches held back by a throttle or health gate", ["gate"])
ARCHIVE_STREAMS = Counter(
    "tidegate_archive_streams_total", "Event streams archived or reactivated", ["action"]
)
ARCHIVE_EVENTS = Counter("tidegate_archive_events_moved_total", "Events moved between hot and archive", ["direction"])
ONE_SHOT_JOBS = Counter("tidegate_one_shot_jobs_total", "Small (one-shot) jobs run", ["kind", "outcome"])


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from tidegate.worker import store  # late: keeps this module importable without the SQL package

        queue = GaugeMetricFamily("tidegate_queue_jobs", "Rows of queue_jobs by status", labels=["status"])
        oldest = GaugeMetricFamily("tidegate_queue_oldest_pending_seconds", "Age of the oldest claimable pending job")
        jobs = GaugeMetricFamily("tidegate_jobs", "Range jobs by kind and status", labels=["kind", "status"])
        remaining = GaugeMetricFamily("tidegate_job_rows_remaining", "Estimated source rows left per active job",
                                      labels=["kind", "job_id", "status"])
        in_flight = GaugeMetricFamily("tidegate_job_slices_in_flight", "Slices owned by a live worker",
                                      labels=["kind", "job_id"])
        workers = GaugeMetricFamily("tidegate_workers_alive", "Worker processes whose lease is alive")
        up = GaugeMetricFamily("tidegate_database_up", "1 if the last scrape could read the database")
        try:
            with self.engine.connect() as conn:
                oldest_age = 0.0
                for r in store.metrics_queue(conn):
                    queue.add_metric([r.status], r.n)
                    oldest_age = max(oldest_age, float(r.oldest_pending_seconds or 0))
                oldest.add_metric([], oldest_age)
                counts: dict[tuple[str, str], int] = {}
                for r in store.metrics_jobs(conn):
                    counts[(r.kind, r.status)] = counts.get((r.kind, r.status), 0) + 1
                    if r.status in ("pending", "running", "paused"):
                        remaining.add_metric([r.kind, str(r.job_id), r.status], r.remaining)
                        in_flight.add_metric([r.kind, str(r.job_id)], r.in_flight)
                for (kind, status), n in counts.items():
                    jobs.add_metric([kind, status], n)
                workers.add_metric([], store.live_workers(conn))
            up.add_metric([], 1)
        except Exception as err:  # a scrape must answer even when the database does not
            log.warning("metrics: cannot read the database: %s", err)
            up.add_metric([], 0)
            yield up
            return
        yield from (queue, oldest, jobs, remaining, in_flight, workers, up)


class MetricsServer:
    """The pool's /metrics endpoint over every worker process's samples."""

    def __init__(self, port: int, engine) -> None:  # type: ignore[no-untyped-def]
        self.dir = tempfile.mkdtemp(prefix="tidegate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.dir  # inherited by the workers spawned after this
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.dir)
        registry.register(DatabaseCollector(engine))
        self.server, self.thread = start_http_server(port, registry=registry)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)

    def process_died(self, pid: int) -> None:
        mark_process_dead(pid, self.dir)

    def close(self) -> None:
        self.server.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)
