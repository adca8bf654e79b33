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
last day only. The same holds for run_id: a fan-out run's gauges
(``tidegate_run_jobs``, ``tidegate_run_rows_processed``, ``tidegate_run_rows_remaining``)
cover runs with a job active or finished in the last day; sum them over ``target``
for the whole run.

A pool over several targets (`tidegate worker --targets`) adds a ``target`` label to every metric:
it sets ``TIDEGATE_METRICS_TARGET=1`` for its worker processes, whose counters are then declared with
the label and filled with the target each one is working for (:func:`set_target`); the database
gauges are read from each target. A pool over one database has the metrics it always had, without a
``target`` label (not an empty one: its series and dashboards stay as they were).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)
TARGET_ENV = "TIDEGATE_METRICS_TARGET"
_BY_TARGET = os.environ.get(TARGET_ENV) == "1"
_target = ""


def set_target(name: str) -> None:
    """The target this process works for from now on (its counters' ``target`` label)."""
    global _target
    _target = name


class _Targeted:
    """A metric whose ``labels(...)`` adds the current target when the process counts by target.

    Declared here, created (and prometheus-client imported: its HTTP exposition pulls in http.server,
    urllib and email, a seventh of what a worker imports) on first use: a pool's workers count after
    their first batch, so the import is off the path from launch to the first claim (bench/RESULTS.md).
    Every metric of this module is created together, at the first use of any (:func:`declare`), so the
    registry holds them all as it did when they were created at import."""

    def __init__(self, kind: str, name: str, documentation: str, labelnames: list[str], **kw: Any) -> None:
        self.spec = (kind, name, documentation, labelnames, kw)
        self._metric: Any = None
        _DECLARED.append(self)

    @property
    def metric(self):  # type: ignore[no-untyped-def]
        if self._metric is None:
            declare()
        return self._metric

    def labels(self, *values: str):  # type: ignore[no-untyped-def]
        return self.metric.labels(*values, _target) if _BY_TARGET else self.metric.labels(*values)


_DECLARED: list[_Targeted] = []
_declaring = threading.Lock()


def declare() -> None:
    """Create every metric of this module in prometheus-client's registry (once; what the first use does)."""
    with _declaring:
        if all(m._metric is not None for m in _DECLARED):
            return
        import prometheus_client

        for m in _DECLARED:
            if m._metric is None:
                kind, name, documentation, labelnames, kw = m.spec
                m._metric = getattr(prometheus_client, kind)(name, documentation, labelnames, **kw)


def _labels(*names: str) -> list[str]:
    return [*names, "target"] if _BY_TARGET else list(names)


ROWS_PROCESSED = _Targeted("Counter", "tidegate_rows_processed_total", "Source rows processed by committed batches",
                           _labels("kind", "job_id"))
ROWS_FAILED = _Targeted("Counter", "tidegate_rows_failed_total",
                        "Items that failed in a handler (written to etl_errors)", _labels("kind", "job_id"))
BATCHES = _Targeted("Counter", "tidegate_batches_total", "Batches committed", _labels("kind"))
BATCH_FAILURES = _Targeted("Counter", "tidegate_batch_failures_total", "Batches rolled back and retried",
                           _labels("kind"))
BATCH_SECONDS = _Targeted(
    "Histogram",
    "tidegate_batch_duration_seconds",
    "Wall time of one batch transaction",
    _labels("kind"),
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# where a batch's time goes (worker/runner.py PHASES): lock and re-read, the kind's work, bookkeeping, commit,
# after the commit (metrics, log lines), the wait before the slice's next batch
BATCH_PHASE_SECONDS = _Targeted(
    "Histogram",
    "tidegate_batch_phase_seconds",
    "Seconds of one batch spent in each phase (claim, handler, record, commit, report, pacing)",
    _labels("kind", "phase"),
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
LEASE_TAKEOVERS = _Targeted("Counter", "tidegate_lease_takeovers_total",
                            "Slices taken over from a worker whose lease expired", _labels("kind"))
GATE_HOLDS = _Targeted("Counter", "tidegate_gate_holds_total", "Batches held back by a throttle or health gate",
                       _labels("gate"))
ARCHIVE_STREAMS = _Targeted("Counter", "tidegate_archive_streams_total", "Event streams archived or reactivated",
                            _labels("action"))
ARCHIVE_EVENTS = _Targeted("Counter", "tidegate_archive_events_moved_total", "Events moved between hot and archive",
                           _labels("direction"))
READ_AHEAD = _Targeted("Counter", "tidegate_read_ahead_total",
                       "Batches read ahead for a Python handler, by what became of them: used; changed (the range's"
                       " rows changed since, read again); unused (the worker went on with another job or slice);"
                       " dropped (a row failed to parse or transform)",
                       _labels("kind", "outcome"))
ONE_SHOT_JOBS = _Targeted("Counter", "tidegate_one_shot_jobs_total", "Small (one-shot) jobs run",
                          _labels("kind", "outcome"))


class DatabaseCollector:  # a prometheus-client collector: what the registry calls is collect()
    """Gauges read from the database at scrape time."""

    def __init__(self, engine, target: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.target = target  # a pool over several targets: one collector per target, labelled

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.target is None:
            yield from self._collect()
            return
        try:
            for family in self._collect():  # the same gauges, each sample with target="NAME"
                family.samples = [s._replace(labels={**s.labels, "target": self.target}) for s in family.samples]
                yield family
        finally:
            self.engine.dispose()  # no connection held between scrapes, per target

    def _collect(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

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
        run_jobs = GaugeMetricFamily("tidegate_run_jobs", "Jobs of a fan-out run by status (runs active or"
                                     " finished in the last day)", labels=["run_id", "status"])
        run_rows = GaugeMetricFamily("tidegate_run_rows_processed", "Source rows processed by a fan-out run's jobs",
                                     labels=["run_id"])
        run_left = GaugeMetricFamily("tidegate_run_rows_remaining", "Estimated source rows left in a fan-out run's"
                                     " jobs", labels=["run_id"])
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
                rows: dict[str, list[int]] = {}
                for r in store.metrics_runs(conn):
                    run_jobs.add_metric([str(r.run_id), r.status], r.jobs)
                    done, left = rows.setdefault(str(r.run_id), [0, 0])
                    rows[str(r.run_id)] = [done + int(r.processed), left + int(r.remaining)]
                for run_id, (done, left) in rows.items():
                    run_rows.add_metric([run_id], done)
                    run_left.add_metric([run_id], left)
            up.add_metric([], 1)
        except Exception as err:  # a scrape must answer even when the database does not
            log.warning("metrics: cannot read the database: %s", err)
            up.add_metric([], 0)
            yield up
            return
        yield from (queue, oldest, jobs, remaining, in_flight, workers, run_jobs, run_rows, run_left, up)


class TargetsCollector:
    """The database gauges of every target of a pool, one family per metric, samples labelled by target."""

    def __init__(self, engines: dict) -> None:  # type: ignore[type-arg]
        self.collectors = [DatabaseCollector(engine, name) for name, engine in engines.items()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        merged: dict[str, GaugeMetricFamily] = {}
        for collector in self.collectors:
            for family in collector.collect():
                if family.name in merged:
                    merged[family.name].samples += family.samples
                else:
                    merged[family.name] = family
        yield from merged.values()


class MetricsServer:
    """The pool's /metrics endpoint over every worker process's samples."""

    def __init__(self, port: int, engine, targets: dict | None = None) -> None:  # type: ignore[no-untyped-def]
        """``targets``: {name: engine} of a pool over several targets (then ``engine`` is None)."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        self.dir = tempfile.mkdtemp(prefix="tidegate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.dir  # inherited by the workers spawned after this
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.dir)
        if targets:
            os.environ[TARGET_ENV] = "1"  # the workers' counters get the target label
            registry.register(TargetsCollector(targets))
        else:
            registry.register(DatabaseCollector(engine))
        self.server, self.thread = start_http_server(port, registry=registry)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)

    def process_died(self, pid: int) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, self.dir)

    def close(self) -> None:
        self.server.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)
