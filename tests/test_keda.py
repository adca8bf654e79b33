"""ops/k8s/keda-scaledobject.yaml (issue 15 point 5): the exact query of its PostgreSQL trigger, run
against a database with claimable work, counts what workers could be working on now."""

from __future__ import annotations

import yaml
from sqlalchemy import text

from tests.conftest import ROOT, enqueue_items, job_row, run_cli, scalar
from tests.fixtures import LOG_HANDLER, make_items
from tidegate.worker.db import make_engine
from tidegate.worker.runner import Worker, WorkerConfig

DOCS = list(yaml.safe_load_all((ROOT / "ops/k8s/keda-scaledobject.yaml").read_text()))


def scaled_object() -> dict:
    return next(d for d in DOCS if d["kind"] == "ScaledObject")


def query() -> str:
    return scaled_object()["spec"]["triggers"][0]["metadata"]["query"]


def expected(engine) -> int:
    """The same count, the long way: per active job in queue default, pending due slices up to its
    concurrency; plus the due pending queue rows of queue default."""
    with engine.connect() as conn:
        jobs = conn.execute(text(
            "SELECT j.job_id, j.concurrency FROM backfill_jobs j JOIN queue_jobs q ON q.id = j.job_id"
            " WHERE j.status IN ('pending', 'running') AND q.queue = 'default'")).all()
        total = 0
        for job_id, concurrency in jobs:
            pending = conn.execute(text("SELECT count(*) FROM backfill_slices WHERE job_id = :j AND status = 'pending'"
                                        " AND run_after <= now()"), {"j": job_id}).scalar_one()
            total += min(concurrency, pending)
        total += conn.execute(text("SELECT count(*) FROM queue_jobs WHERE status = 'pending' AND run_after <= now()"
                                   " AND queue = 'default'")).scalar_one()
    return total


def test_manifest_points_at_the_worker_deployment():
    so = scaled_object()
    deployment = yaml.safe_load((ROOT / "ops/k8s/worker-deployment.yaml").read_text())
    assert so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "postgresql"
    assert trigger["metadata"]["targetQueryValue"] == args[args.index("--concurrency") + 1]
    auth = next(d for d in DOCS if d["kind"] == "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    secret = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"]
    assert auth["spec"]["secretTargetRef"][0]["name"] == secret


def test_the_trigger_query_counts_claimable_work(engine, db_url, tmp_path, roles):
    make_items(engine, 4000)
    assert scalar(engine, query()) == 0
    a = enqueue_items(db_url, tmp_path, LOG_HANDLER, concurrency=2, batch_size=100, to="4001")
    b = enqueue_items(db_url, tmp_path, LOG_HANDLER, concurrency=8, batch_size=100, to="4001")
    enqueue_items(db_url, tmp_path, LOG_HANDLER, "--queue", "elsewhere", to="4001")  # another pool's work
    assert scalar(engine, query()) == 2  # two queue jobs waiting to be planned
    worker = Worker(WorkerConfig(url=db_url))
    try:
        while worker.plan_one():
            pass
    finally:
        worker.engine.dispose()
    slices_b = scalar(engine, "SELECT count(*) FROM backfill_slices WHERE job_id = :j", j=b)
    assert slices_b > 2
    got = scalar(engine, query())
    assert got == expected(engine) == 2 + min(8, slices_b)
    # the worker role of ops/roles.sql (the scaler's secret) may run it too
    worker_engine = make_engine(roles["worker"])
    try:
        assert scalar(worker_engine, query()) == got
    finally:
        worker_engine.dispose()
    run_cli(db_url, "pause", a)
    assert scalar(engine, query()) == expected(engine) == min(8, slices_b)
    run_cli(db_url, "resume", a)
    run_cli(db_url, "worker", "--drain", "-c", "2", timeout=300)
    assert job_row(engine, a).status == job_row(engine, b).status == "done"
    assert scalar(engine, query()) == 0
