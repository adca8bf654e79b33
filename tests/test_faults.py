"""Connection faults, concurrent operators, and random crash points: same guarantees."""

from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.conftest import enqueue_items, job_row, run_cli, wait_for
from tests.faults import ChaosProxy
from tests.fixtures import log_report, make_items, slow_handler

pytestmark = pytest.mark.slow


def _through(proxy: ChaosProxy, db_url: str) -> str:
    url = make_url(db_url)
    return url.set(host="127.0.0.1", port=proxy.port, query={}).render_as_string(hide_password=False)


def _upstream(db_url: str) -> tuple[str, int] | str:
    url = make_url(db_url)
    host = url.host or url.query.get("host")
    if isinstance(host, tuple):
        host = host[0]
    if host and host.startswith("/"):
        return f"{host}/.s.PGSQL.{url.port or 5432}"
    return (host or "127.0.0.1", url.port or 5432)


# short in make test; make test-chaos runs the long ones
PROXY_SIZES = [pytest.param((2000, 14), id="short"), pytest.param((20000, 120), id="long", marks=pytest.mark.chaos)]
OPERATOR_SIZES = [pytest.param((3000, 5), id="short"), pytest.param((20000, 30), id="long", marks=pytest.mark.chaos)]


@pytest.mark.parametrize("size", PROXY_SIZES)
def test_dropped_and_stalled_connections_lose_and_double_nothing(engine, db_url, tmp_path, pools, size):
    items, faults = size
    make_items(engine, items)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.03), batch_size=25, concurrency=3)
    proxy = ChaosProxy(_upstream(db_url), seed=3)
    try:
        pool = pools("--concurrency", "2", "--lease", "3", url=_through(proxy, db_url))
        wait_for(lambda: job_row(engine, job).processed_count > 0, what="first batches through the proxy")
        proxy.chaos(events=faults)
        wait_for(lambda: job_row(engine, job).status == "done", timeout=900, what="done despite the faults")
        assert pool.terminate() == 0
    finally:
        proxy.close()
    assert proxy.dropped + proxy.stalled == faults and proxy.dropped > 0
    assert log_report(engine) == {"logged": items, "distinct_keys": items, "items": items, "missing": 0}
    assert job_row(engine, job).processed_count == items


@pytest.mark.parametrize("size", OPERATOR_SIZES)
def test_concurrent_operators_leave_the_job_in_the_last_commanded_state(engine, db_url, tmp_path, pools, size):
    items, commands = size
    make_items(engine, items)
    # paced so the job outlasts the operators' commands even on a loaded machine
    job = enqueue_items(db_url, tmp_path, slow_handler(0.03), "--sleep-between-batches", "0.1", batch_size=20,
                        concurrency=2)
    pools("--concurrency", "2", "--lease", "3")
    wait_for(lambda: job_row(engine, job).processed_count > 0, what="progress")
    expected = {"pause": "paused", "resume": "running", "cancel": "cancelled", "retry": "running"}
    applied = []
    unexpected: list[str] = []  # an assert in a thread would not fail the test: the threads report here

    def operator(seed: int, n: int) -> None:  # three operators at once, no coordination: commands really race
        rng = random.Random(seed)
        for _ in range(n):
            action = rng.choice(list(expected))
            proc = run_cli(db_url, action, job, "--by", f"op-{seed}", check=False)
            if proc.returncode not in (0, 4):  # 4: refused, not allowed in the state it found
                unexpected.append(f"{action}: exit {proc.returncode}: {proc.stderr}")
            if proc.returncode == 0:
                applied.append(action)
            if rng.random() < 0.5:  # set on a job another operator just cancelled is refused (exit 4)
                proc = run_cli(db_url, "set", job, "--concurrency", str(rng.choice([1, 2, 3])), check=False)
                if proc.returncode not in (0, 4) or (proc.returncode == 4 and "it is cancelled" not in proc.stderr):
                    unexpected.append(f"set: exit {proc.returncode}: {proc.stderr}")
            else:
                with engine.begin() as conn:
                    conn.execute(text("UPDATE backfill_jobs SET concurrency = :c WHERE job_id = :j"),
                                 {"c": rng.choice([1, 2, 3]), "j": job})

    threads = [threading.Thread(target=operator, args=(seed, commands)) for seed in (9, 10, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert unexpected == []
    assert applied
    # the last command is the last one committed: transitions of one job serialize on its row, and each
    # writes its audit row after taking that row's lock, so audit order is commit order
    with engine.connect() as conn:
        audited = list(conn.execute(text("SELECT action FROM tidegate_audit WHERE job_id = :j AND action = ANY(:a)"
                                         " ORDER BY id"), {"j": job, "a": list(expected)}).scalars())
    assert sorted(audited) == sorted(applied)
    status = job_row(engine, job).status
    assert status == expected[audited[-1]] or (expected[audited[-1]] == "running" and status == "done")

    # bring it home and check nothing was processed twice
    if status in ("paused",):
        run_cli(db_url, "resume", job)
    elif status in ("cancelled",):
        run_cli(db_url, "retry", job)
    if status != "done":  # set on a finished job is exit 4 (a cancelled one is retried first)
        run_cli(db_url, "set", job, "--sleep-between-batches", "0")
    wait_for(lambda: job_row(engine, job).status == "done", timeout=900, what="done")
    assert log_report(engine) == {"logged": items, "distinct_keys": items, "items": items, "missing": 0}
