"""ops/ is part of the product: alert rules and the dashboard name only metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import REGISTRY

from tests.conftest import ROOT

# tidegate's own metrics: what worker/metrics.py declares plus the gauges its DatabaseCollector yields
DB_GAUGES = {"tidegate_queue_jobs", "tidegate_queue_oldest_pending_seconds", "tidegate_jobs",
             "tidegate_job_rows_remaining", "tidegate_job_slices_in_flight", "tidegate_workers_alive",
             "tidegate_database_up"}
POSTGRES_EXPORTER = {"pg_stat_activity_count", "pg_settings_max_connections"}
FUNCTIONS = {"sum", "rate", "increase", "delta", "max", "min", "by", "on", "and", "or", "unless", "clamp_min",
             "histogram_quantile", "vector", "le", "job_id", "kind", "status", "gate", "action", "direction"}


def exported() -> set[str]:
    from tidegate.worker import metrics

    metrics.declare()  # created at first use otherwise (off the pool's start)

    return set(DB_GAUGES) | {n for n in REGISTRY._names_to_collectors if n.startswith("tidegate_")}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
            if (w.startswith("tidegate_") or w.startswith("pg_")) and w not in FUNCTIONS}


def test_alert_rules_name_only_real_metrics():
    rules = yaml.safe_load((ROOT / "ops/prometheus/tidegate-rules.yml").read_text())
    known = exported() | POSTGRES_EXPORTER
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {"TidegateFailureRateHigh", "TidegateJobStalled", "TidegateQueueDepthGrowing",
            "TidegateDatabaseConnectionsHigh", "TidegateGateHolding"} <= {a["alert"] for a in alerts}
    for alert in alerts:
        names = metric_names(alert["expr"])
        assert names and names <= known, (alert["alert"], names - known)
        assert alert["labels"]["severity"] in {"page", "ticket"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make system-deps installs"
                    " Debian's prometheus); the parser test covers the metric names")
def test_promtool_accepts_the_rules_and_each_alert_fires_on_its_incident():
    rules = ROOT / "ops/prometheus"
    proc = subprocess.run(["promtool", "check", "rules", "tidegate-rules.yml"], capture_output=True, text=True,
                          cwd=rules)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # unit tests: synthetic series for each incident (and a healthy set) against the real rules
    proc = subprocess.run(["promtool", "test", "rules", "tidegate-rules.test.yml"], capture_output=True, text=True,
                          cwd=rules)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = set(re.findall(r"alertname: (\w+)", (rules / "tidegate-rules.test.yml").read_text()))
    declared = {r["alert"] for g in yaml.safe_load((rules / "tidegate-rules.yml").read_text())["groups"]
                for r in g["rules"]}
    assert tested == declared


def test_dashboard_panels_query_real_metrics():
    dash = json.loads((ROOT / "ops/grafana/tidegate.json").read_text())
    known = exported() | POSTGRES_EXPORTER
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names <= known, (panel["title"], names - known)
            used |= names
    # every metric family the worker exports has a panel, but for these three
    def family(name: str) -> str:
        return re.sub(r"_(total|bucket|count|sum|created)$", "", name)

    not_charted = {"tidegate_batches", "tidegate_database_up", "tidegate_one_shot_jobs"}
    assert {family(n) for n in known if n.startswith("tidegate_")} - {family(n) for n in used} == not_charted


def test_kubernetes_grace_period_covers_the_drain():
    docs = list(yaml.safe_load_all((ROOT / "ops/k8s/worker-deployment.yaml").read_text()))
    spec = docs[0]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= 60
    assert "--metrics-port" in spec["containers"][0]["args"]
    unit = (ROOT / "ops/systemd/tidegate-worker.service").read_text()
    assert "KillSignal=SIGTERM" in unit and "TimeoutStopSec=120" in unit
