"""The status page in headless Chromium, the JSON API, and the token-guarded admin actions."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request

import pytest

from tests.conftest import CHILD_ENV, TIDEGATE, enqueue_items, job_row, scalar, wait_for
from tests.fixtures import make_items, seed_demo, slow_handler
from tests.ports import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "test-admin-token-7f3a"
pytestmark = pytest.mark.slow


@pytest.fixture
def web(db_url):  # type: ignore[no-untyped-def]
    servers = []

    def start(token: str | None = TOKEN, refresh: float = 1) -> str:
        port = free_port()
        env = {**os.environ, **CHILD_ENV, "DATABASE_URL": db_url}
        env.pop("TIDEGATE_ADMIN_TOKEN", None)
        if token:
            env["TIDEGATE_ADMIN_TOKEN"] = token
        proc = subprocess.Popen([TIDEGATE, "web", "--port", str(port), "--refresh", str(refresh)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(base + "/api/v1/jobs") is not None, timeout=30, what="web server")
        return base

    yield start
    for proc in servers:
        proc.terminate()
        proc.wait(10)


def _get(url: str):  # type: ignore[no-untyped-def]
    try:
        return json.loads(urllib.request.urlopen(url, timeout=5).read())
    except (urllib.error.URLError, ConnectionError):
        return None


def _post(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _dom(url: str) -> str:
    profile = tempfile.mkdtemp(prefix="tidegate-chromium-")
    try:
        out = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=60)
        return out.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make system-deps installs Debian's package)")
def test_the_page_shows_a_running_job_moving(engine, db_url, tmp_path, pools, web):
    make_items(engine, 3000)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.1), batch_size=20, concurrency=2)
    pools("--concurrency", "2")
    base = web()
    wait_for(lambda: job_row(engine, job).processed_count >= 40, what="progress")

    def shown() -> int:
        dom = _dom(base + "/")
        m = re.search(rf'data-job="{job}" data-processed="(\d+)"', dom)
        assert m, dom[:2000]
        assert "running" in dom and "<progress" in dom
        return int(m[1])

    first = shown()
    wait_for(lambda: job_row(engine, job).processed_count > first + 40, what="more progress")
    second = shown()
    assert 0 < first < second <= job_row(engine, job).processed_count


def test_admin_actions_need_the_token(engine, db_url, tmp_path, web):
    make_items(engine, 100)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.01))
    base = web()
    assert _post(f"{base}/api/v1/admin/jobs/{job}/pause")[0] == 401
    assert _post(f"{base}/api/v1/admin/jobs/{job}/pause", token="wrong")[0] == 401
    assert scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=job) == "pending"
    code, body = _post(f"{base}/api/v1/admin/jobs/{job}/pause", {"reason": "maintenance"}, token=TOKEN)
    assert code == 200 and body["action"] == "pause"
    assert scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=job) == "paused"
    assert _post(f"{base}/api/v1/admin/jobs/{job}/pause", token=TOKEN)[0] == 409  # already paused

    seed_demo(engine, 100)
    runbook_body = {"from": "2024-01-01T00:00:00Z", "to": "2024-06-01T00:00:00Z", "batch_size": 250,
                    "concurrency": 8, "owner": "data-team"}
    assert _post(f"{base}/api/v1/admin/backfill", runbook_body)[0] == 401
    code, body = _post(f"{base}/api/v1/admin/backfill", runbook_body, token=TOKEN)
    assert code == 201, body
    assert scalar(engine, "SELECT payload->>'owner' FROM queue_jobs WHERE id = :j", j=body["job_id"]) == "data-team"
    assert _get(f"{base}/api/v1/jobs/{job}")["status"] == "paused"


def test_admin_is_disabled_without_a_configured_token(engine, db_url, tmp_path, web):
    make_items(engine, 10)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.01))
    base = web(token=None)
    code, body = _post(f"{base}/api/v1/admin/jobs/{job}/pause", token="anything")
    assert code == 403 and "disabled" in body["error"]
