"""Fan-out runs seen and rolled out as a whole (issue 15.3): the run gauges on /metrics, the console's
runs pages and run actions over targets (one of them down), and `tidegate rollout --run` over three
databases served by one pool: exact per target on success; a failing canary holds the others untouched."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from tests import pg
from tests.conftest import CHILD_ENV, TIDEGATE, job_row, pool_starter, run_cli, scalar, wait_for
from tests.fixtures import clean_run_checksum, seed_demo, troops_checksum
from tests.ports import free_port
from tests.test_console import form, request, signed_in
from tests.test_multi_targets import NAMES, env_of, shards  # noqa: F401  (shards: the fixture)
from tests.test_web import TOKEN
from tidegate.worker.enqueue import enqueue
from tidegate.worker.runs import new_run_id

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multi_targets")]
RANGE = {"from": "2024-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"}


@pytest.fixture(autouse=True)
def _handlers(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TIDEGATE_HANDLERS", CHILD_ENV["TIDEGATE_HANDLERS"])  # enqueue validates in-process


def enqueue_run(shards: dict, handler: str = "hero_troops", limit: int | None = 300) -> tuple[str, dict[str, str]]:  # noqa: F811
    """One job per target under one run id, as `enqueue --targets` makes them: (run id, {target: job})."""
    rid = new_run_id()
    payload = {**RANGE, "handler": handler, "batch_size": 100, "concurrency": 1, "owner": "tests",
               **({"row_limit": limit} if limit else {})}
    jobs = {n: enqueue(engine, "backfill_range", dict(payload), actor="tests", run_id=rid)[0]
            for n, (_, engine) in shards.items()}
    return rid, jobs


def scrape(port: int) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return ""


def queue_status(engine: Engine, job: str) -> str:
    return str(scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=job))


def processed(engine: Engine, job: str) -> int:
    return int(scalar(engine, "SELECT coalesce(sum(processed_count), 0) FROM backfill_jobs WHERE job_id = :j", j=job))


def rollout(shards: dict, rid: str, *args: str) -> subprocess.Popen:  # noqa: F811
    env = {**os.environ, **CHILD_ENV, **env_of(shards)}
    env.pop("DATABASE_URL", None)
    return subprocess.Popen([TIDEGATE, "rollout", "--run", rid, "--poll", "0.05", "--by", "sre-bob", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_run_rollout_canary_then_batches_exact_per_target_with_run_metrics(shards, tmp_path):  # noqa: F811
    sizes = {"t_a": 1200, "t_b": 1500, "t_c": 900}
    clean = {}
    for n, (_, engine) in shards.items():
        seed_demo(engine, sizes[n])
        clean[n] = clean_run_checksum(engine)
    rid, jobs = enqueue_run(shards)
    proc = rollout(shards, rid, "--canary-target", "t_b", "--steps", "1,2", "--step-rows", "300", "--batch", "2")
    # the others are held before any worker exists: nothing but the canary can start
    wait_for(lambda: all(queue_status(shards[n][1], jobs[n]) == "paused" for n in ("t_a", "t_c")),
             what="the other targets held")
    assert queue_status(shards["t_b"][1], jobs["t_b"]) == "pending"
    port = free_port()
    with pool_starter(shards["t_a"][0], tmp_path, env_of(shards)) as start:
        pool = start("--targets", ",".join(NAMES), "-c", "2", "--poll", "0.1", "--metrics-port", str(port))
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (out, err)
        body = wait_for(lambda: (b := scrape(port)) and all(
            f'tidegate_run_rows_processed{{run_id="{rid}",target="{n}"}} {float(sizes[n])}' in b for n in NAMES)
            and b, timeout=60, what="run gauges")
        for n in NAMES:
            assert f'tidegate_run_jobs{{run_id="{rid}",status="done",target="{n}"}} 1.0' in body
            assert f'tidegate_run_rows_remaining{{run_id="{rid}",target="{n}"}} 0.0' in body
        assert pool.terminate() == 0
    assert "[t_b] canary: verified" in out and "[t_b] rollout complete" in out, out
    assert "released t_a, t_c at concurrency 2" in out and "run rollout complete" in out and "FAIL" not in out, out
    canary = job_row(shards["t_b"][1], jobs["t_b"])
    for n, (_, engine) in shards.items():
        row = job_row(engine, jobs[n])
        assert (row.status, row.processed_count, row.row_limit) == ("done", sizes[n], None), n
        assert troops_checksum(engine) == clean[n], n  # exactly a clean run's result, per target
        if n != "t_b":  # released only once the canary was done and verified
            assert row.started_at >= canary.finished_at, n
            assert f"[{n}] verified" in out
        assert json.loads(run_cli(shards[n][0], "verify", jobs[n][:8], "--json").stdout)["ok"], n


def _held_rollout_fails(shards, jobs, proc, tmp_path) -> tuple[str, str]:  # type: ignore[no-untyped-def]  # noqa: F811
    """Once the rollout ``proc`` holds t_b and t_c, a pool over the three targets runs it; it must exit 1
    (a verification failed). Its (stdout, stderr)."""
    wait_for(lambda: all(queue_status(shards[n][1], jobs[n]) == "paused" for n in ("t_b", "t_c")),
             what="the other targets held")
    with pool_starter(shards["t_a"][0], tmp_path, env_of(shards)) as start:
        pool = start("--targets", ",".join(NAMES), "-c", "2", "--poll", "0.1")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, (out, err)
        assert pool.terminate() == 0
    return out, err


def test_a_failing_canary_holds_every_other_target_untouched(shards, tmp_path):  # noqa: F811
    for _, engine in shards.values():
        seed_demo(engine, 1500)
    rid, jobs = enqueue_run(shards, "tests.handlers:off_by_one_troops")
    proc = rollout(shards, rid, "--steps", "1,4", "--step-rows", "300")  # canary: the first target, t_a
    out, err = _held_rollout_fails(shards, jobs, proc, tmp_path)
    assert "FAIL sample recomputed" in out and "holding at the canary (target t_a)" in err, (out, err)
    row = job_row(shards["t_a"][1], jobs["t_a"])
    assert (row.status, row.processed_count) == ("paused", 300)
    for n in ("t_b", "t_c"):
        engine = shards[n][1]
        assert queue_status(engine, jobs[n]) == "paused" and processed(engine, jobs[n]) == 0, n
        assert scalar(engine, "SELECT count(*) FROM user_troops") == 0, n
        assert scalar(engine, "SELECT count(*) FROM tidegate_audit WHERE job_id = :j AND action = 'set'",
                      j=jobs[n]) == 0, n  # never released


def test_a_released_target_failing_verification_holds_the_rest(shards, tmp_path):  # noqa: F811
    """The canary (t_a) verifies; t_b, released first (--batch 1), does not: the rollout pauses what is left
    of the run (t_c, never released: 0 rows) and exits 1."""
    for _, engine in shards.values():
        seed_demo(engine, 600)
    rid = new_run_id()
    jobs = {}
    for n, (_, engine) in shards.items():  # one run; t_b's job writes wrong rows
        handler = "tests.handlers:off_by_one_troops" if n == "t_b" else "hero_troops"
        jobs[n] = enqueue(engine, "backfill_range", {**RANGE, "handler": handler, "batch_size": 100, "concurrency": 1,
                                                     "row_limit": 200, "owner": "tests"}, actor="tests", run_id=rid)[0]
    proc = rollout(shards, rid, "--steps", "1,2", "--step-rows", "200", "--batch", "1")
    out, err = _held_rollout_fails(shards, jobs, proc, tmp_path)
    assert "[t_a] rollout complete" in out and "released t_b at concurrency 2" in out, out
    assert "holding: target t_b: verification failed" in err and "released t_c" not in out, (out, err)
    assert job_row(shards["t_a"][1], jobs["t_a"]).status == "done"
    assert job_row(shards["t_b"][1], jobs["t_b"]).status == "done"  # finished before it could be verified
    engine = shards["t_c"][1]
    assert queue_status(engine, jobs["t_c"]) == "paused" and processed(engine, jobs["t_c"]) == 0


def test_rollout_of_a_run_refuses_bad_input_and_changes_nothing(shards, tmp_path):  # noqa: F811
    for _, engine in shards.values():
        seed_demo(engine, 100)
    rid, jobs = enqueue_run(shards)
    env = env_of(shards)
    url = shards["t_a"][0]
    for args, code in ((("--run", "not-a-uuid"), 2), (("--run", new_run_id()), 3),
                       (("--run", rid, "--canary-target", "nope"), 2), (("--run", rid, "--canary-target", "../x"), 2),
                       (("--run", rid, "--targets", "zz_*"), 2), (("--run", rid, "--steps", "0"), 2),
                       (("--run", rid, "--batch", "0"), 2), ((jobs["t_a"][:8], "--run", rid), 2), ((), 2),
                       ((jobs["t_a"][:8], "--batch", "2"), 2)):
        out = run_cli(url, "rollout", *args, env=env, check=False)
        assert out.returncode == code, (args, out.stdout, out.stderr)
    for n, (_, engine) in shards.items():
        assert queue_status(engine, jobs[n]) == "pending", n
    # a run without a canary limit: refused once the canary's plan shows it; the held jobs are let go again
    rid, jobs = enqueue_run(shards, limit=None)
    proc = rollout(shards, rid, "--step-rows", "10")
    wait_for(lambda: all(queue_status(shards[n][1], jobs[n]) == "paused" for n in ("t_b", "t_c")),
             what="the other targets held")
    with pool_starter(url, tmp_path, env) as start:
        pool = start("--targets", ",".join(NAMES), "-c", "1", "--poll", "0.1")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "--limit" in err, (out, err)
        for n in ("t_b", "t_c"):
            assert queue_status(shards[n][1], jobs[n]) != "paused", n
        assert pool.terminate() == 0


def test_runs_pages_show_unreadable_targets_and_act_on_a_whole_run(shards, pg_server, monkeypatch):  # noqa: F811
    for _, engine in shards.values():
        seed_demo(engine, 100)
    rid, jobs = enqueue_run(shards)
    other, other_jobs = enqueue_run({"t_a": shards["t_a"]})
    # a single-database pool's collector: the run gauges, without a target label
    from tidegate.worker.metrics import DatabaseCollector

    registry = CollectorRegistry()
    registry.register(DatabaseCollector(shards["t_c"][1]))
    exposed = generate_latest(registry).decode()
    assert f'tidegate_run_jobs{{run_id="{rid}",status="pending"}} 1.0' in exposed
    assert f'tidegate_run_rows_processed{{run_id="{rid}"}} 0.0' in exposed

    port = free_port()
    env = {**os.environ, **CHILD_ENV, **env_of(shards), "TIDEGATE_ADMIN_TOKEN": TOKEN}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([TIDEGATE, "web", "--port", str(port), "--targets", "t_*"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    b_db = make_url(shards["t_b"][0]).database
    try:
        wait_for(lambda: request(base, "GET", "/api/v1/runs")[0] == 200 if _up(port) else False, timeout=30,
                 what="web server")
        code, headers, _ = request(base, "GET", "/")
        assert code == 303 and headers["Location"] == "/runs"  # runs only: no database named
        assert request(base, "GET", "/api/v1/jobs")[0] == 404
        code, _, page = request(base, "GET", "/runs")
        assert code == 200 and page.count('class="run"') == 2, page
        assert f'data-run="{rid}" data-status="pending" data-processed="0"' in page
        for n in NAMES:
            assert f'data-run="{rid}" data-target="{n}" data-job="{jobs[n]}"' in page
        runs = json.loads(request(base, "GET", "/api/v1/runs")[2])
        assert [r["run_id"] for r in runs] == [other, rid]  # newest first
        assert runs[1]["jobs"] == 3 and runs[1]["status"] == "pending" and runs[1]["unreadable"] == []

        with pg.admin(pg_server) as conn:  # t_b down
            conn.execute(f'ALTER DATABASE "{b_db}" ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (b_db,))
        code, _, page = request(base, "GET", "/runs")
        assert code == 200 and 'data-target="t_b"><td>↳ t_b</td><td class="status unreadable">' in page, page
        assert 'id="unreadable"' in page
        code, _, page = request(base, "GET", f"/runs/{rid}")
        assert code == 200 and "unreadable" in page and 'id="run-status">pending<' in page
        one = json.loads(request(base, "GET", f"/api/v1/runs/{rid}")[2])
        assert one["unreadable"] == ["t_b"] and one["jobs"] == 2

        # bad input and unauthenticated posts: answered, nothing moved
        assert request(base, "GET", "/runs/not-a-run")[0] == 400
        assert request(base, "GET", f"/runs/{new_run_id()}")[0] == 200  # t_b unreadable: it may hold it
        assert request(base, "POST", f"/runs/{rid}/pause", *form({"csrf": "x"}))[0] == 401
        assert request(base, "POST", f"/api/v1/admin/runs/{rid}/pause", "{}",
                       {"Authorization": "Bearer wrong"})[0] == 401
        assert request(base, "POST", f"/api/v1/admin/runs/{rid}/retry", "{}",
                       {"Authorization": f"Bearer {TOKEN}"})[0] == 404
        cookie, csrf = signed_in(base, "alice", f"/runs/{rid}")
        assert request(base, "POST", f"/runs/{rid}/pause", *_with(form({"csrf": "forged"}), cookie))[0] == 403
        assert all(queue_status(shards[n][1], jobs[n]) == "pending" for n in ("t_a", "t_c"))

        code, headers, _ = request(base, "POST", f"/runs/{rid}/pause",
                                   *_with(form({"csrf": csrf, "reason": "db maintenance"}), cookie))
        assert code == 303 and headers["Location"] == f"/runs/{rid}?did=pause&unreached=1"
        page = request(base, "GET", headers["Location"], headers={"Cookie": cookie})[2]
        assert "1 target(s) could not be reached" in page and 'data-action="resume"' in page
        for n in ("t_a", "t_c"):
            assert queue_status(shards[n][1], jobs[n]) == "paused", n
            assert scalar(shards[n][1], "SELECT actor FROM tidegate_audit WHERE job_id = :j AND action = 'pause'",
                          j=jobs[n]) == "alice"
        assert queue_status(shards["t_a"][1], other_jobs["t_a"]) == "pending"  # another run is not touched

        with pg.admin(pg_server) as conn:
            conn.execute(f'ALTER DATABASE "{b_db}" ALLOW_CONNECTIONS true')
        shards["t_b"][1].dispose()  # its pooled connections were terminated
        bearer = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        for bad in ({"reason": "x" * 501}, {"reason": 5}, {"concurrency": 2}):
            assert request(base, "POST", f"/api/v1/admin/runs/{rid}/pause", json.dumps(bad), bearer)[0] == 400, bad
        assert request(base, "GET", "/api/v1/runs/%3Cscript%3E")[0] == 400
        assert queue_status(shards["t_b"][1], jobs["t_b"]) == "pending"
        code, _, answer = request(base, "POST", f"/api/v1/admin/runs/{rid}/pause",
                                  json.dumps({"reason": "again"}), bearer)
        assert code == 200, answer
        outcomes = {j["target"]: j["outcome"] for j in json.loads(answer)["jobs"]}
        assert outcomes["t_b"] == "paused" and outcomes["t_a"].startswith("skipped: it is paused"), outcomes
        assert queue_status(shards["t_b"][1], jobs["t_b"]) == "paused"
        page = request(base, "GET", f"/runs/{rid}")[2]
        assert 'id="run-status">paused<' in page
    finally:
        with pg.admin(pg_server) as conn:
            conn.execute(f'ALTER DATABASE "{b_db}" ALLOW_CONNECTIONS true')
        proc.terminate()
        proc.wait(10)


def _up(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _with(posted: tuple[str, dict[str, str]], cookie: str) -> tuple[str, dict[str, str]]:
    body, headers = posted
    return body, {**headers, "Cookie": cookie}


def test_web_without_targets_has_no_runs(shards):  # noqa: F811
    """A console over one database (no --targets): /runs is a 404 that says how to get it."""
    port = free_port()
    env = {**os.environ, **CHILD_ENV, "DATABASE_URL": shards["t_a"][0]}
    proc = subprocess.Popen([TIDEGATE, "web", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(port), timeout=30, what="web server")
        code, _, page = request(base, "GET", "/runs")
        assert code == 404 and "--targets" in page
        assert request(base, "GET", "/")[0] == 200
        assert 'id="nav"' not in request(base, "GET", "/")[2]
    finally:
        proc.terminate()
        proc.wait(10)
