"""The operator console: signed-in buttons in a real headless Chromium, forged posts, bad input,
samples by privilege, and the per-minute rate history the chart reads."""

from __future__ import annotations

import html
import http.client
import json
import re
import urllib.parse
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.cdp import CHROMIUM, Browser, sign_in
from tests.conftest import enqueue_items, job_row, run_cli, scalar, wait_for
from tests.fixtures import make_items, seed_demo, slow_handler
from tests.test_web import TOKEN, web  # noqa: F401  (the fixture)
from tidegate.worker.maintenance import RetentionConfig, run_once

pytestmark = pytest.mark.slow
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make system-deps installs it)")


def request(base: str, method: str, path: str, body: bytes | str = b"", headers: dict | None = None,
            ) -> tuple[int, dict[str, str], str]:
    """One raw request (any header, even a malformed one); (status, headers, body)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest(method, path)
        data = body.encode() if isinstance(body, str) else body
        given = {"Content-Length": str(len(data)), **(headers or {})}
        for name, value in given.items():
            conn.putheader(name, value)
        conn.endheaders(data)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def form(values: dict[str, str]) -> tuple[str, dict[str, str]]:
    return urllib.parse.urlencode(values), {"Content-Type": "application/x-www-form-urlencoded"}


def signed_in(base: str, name: str = "bob", page: str = "/") -> tuple[str, str]:
    """Sign in as a browser would, without one: (the Cookie header, a CSRF token from the page)."""
    body, headers = form({"token": TOKEN, "name": name, "next": page})
    code, answer, _ = request(base, "POST", "/login", body, headers)
    assert code == 303, answer
    cookie = answer["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    cookie = cookie.split(";")[0]
    page_html = request(base, "GET", page, headers={"Cookie": cookie})[2]
    return cookie, re.search(r'name="csrf" value="([^"]+)"', page_html)[1]


def status_of(engine, job: str) -> str:  # type: ignore[no-untyped-def]
    return scalar(engine, "SELECT coalesce(j.status, q.status) FROM queue_jobs q LEFT JOIN backfill_jobs j"
                          " ON j.job_id = q.id WHERE q.id = :j", j=job)


@needs_chromium
def test_an_operator_signs_in_and_pauses_and_resumes_a_running_job_with_the_buttons(
        engine, db_url, tmp_path, pools, web):  # noqa: F811
    make_items(engine, 3000)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.1), batch_size=20, concurrency=2)
    pools("--concurrency", "2")
    base = web(refresh=600)  # no reload under the test's feet
    wait_for(lambda: job_row(engine, job).processed_count > 0, what="the job running")
    with Browser() as browser:
        browser.open(f"{base}/jobs/{job}")
        assert browser.js("document.querySelectorAll('button[data-action]').length") == 0  # read-only until signed in
        sign_in(browser, base, TOKEN, "alice", f"/jobs/{job}")
        assert browser.js("location.pathname") == f"/jobs/{job}"
        assert "tidegate_session" not in browser.js("document.cookie")  # HttpOnly: no script reads it

        browser.fill("form.actions input[name=reason]", "db cpu")
        browser.click("button[data-action=pause]")
        browser.wait("location.search === '?did=pause'")
        assert browser.js("document.querySelector('#job-status').textContent") == "paused"
        assert job_row(engine, job).status == "paused"
        audit = engine.connect().execute(text(
            "SELECT actor, details->>'reason' FROM tidegate_audit WHERE job_id = :j AND action = 'pause'"),
            {"j": job}).one()
        assert tuple(audit) == ("alice", "db cpu")
        assert "db cpu" in browser.js("document.querySelector('#audit').textContent")

        # a form posted from the page with the browser's cookie but a forged CSRF token, and a post with the
        # right token but no cookie: refused, nothing moves
        browser.js(f"""(() => {{
            const form = document.createElement('form'), field = document.createElement('input');
            form.method = 'post'; form.action = '/jobs/{job}/resume'; field.name = 'csrf'; field.value = 'forged';
            form.appendChild(field); document.body.appendChild(form); form.submit(); }})()""")
        browser.wait("location.pathname.endsWith('/resume') && document.querySelector('.banner.error') !== null")
        assert "CSRF token is missing or wrong" in browser.js("document.querySelector('.banner.error').textContent")
        browser.open(f"{base}/jobs/{job}")
        csrf = browser.js("document.querySelector('input[name=csrf]').value")
        body, headers = form({"csrf": csrf})
        assert request(base, "POST", f"/jobs/{job}/resume", body, headers)[0] == 401
        assert job_row(engine, job).status == "paused"

        # cancel asks first: declined, nothing happens
        browser.confirm_answer = False
        browser.click("button[data-action=cancel]")
        assert browser.dialogs and browser.dialogs[-1].startswith(f"Cancel job {job[:8]}?")
        assert browser.js("location.href") == f"{base}/jobs/{job}" and job_row(engine, job).status == "paused"
        browser.confirm_answer = True

        browser.fill("#knobs input[name=concurrency]", "1")
        browser.click("#knobs button")
        browser.wait("location.search === '?did=set'")
        row = job_row(engine, job)
        assert (row.concurrency, row.status) == (1, "paused")  # and the declined cancel was never sent

        paused_at = job_row(engine, job).processed_count
        browser.click("button[data-action=resume]")
        browser.wait("location.search === '?did=resume'")
        assert browser.js("document.querySelector('#job-status').textContent") == "running"
        assert job_row(engine, job).status == "running"
        wait_for(lambda: job_row(engine, job).processed_count > paused_at, what="progress after resume")
        browser.screenshot(str(tmp_path / "console-job.png"))  # renders at 1400x900 (docs/ has the committed ones)


def test_forged_and_bad_requests_are_answered_and_change_nothing(engine, db_url, tmp_path, web):  # noqa: F811
    make_items(engine, 100)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.01))
    base = web()
    bearer = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    cookie, csrf = signed_in(base)

    def answers(method: str, path: str, body: bytes | str = b"", headers: dict | None = None) -> int:
        code, _, text_ = request(base, method, path, body, headers)
        assert text_, "an answer with a body, never a dropped connection"
        return code

    # forms: no cookie, a wrong CSRF token, a cookie signed with another token
    body, headers = form({"csrf": csrf})
    assert answers("POST", f"/jobs/{job}/pause", body, headers) == 401
    body, headers = form({"csrf": "x" * 43})
    assert answers("POST", f"/jobs/{job}/pause", body, {**headers, "Cookie": cookie}) == 403
    forged_cookie = cookie[:-5] + "AAAAA"
    body, headers = form({"csrf": csrf})
    assert answers("POST", f"/jobs/{job}/pause", body, {**headers, "Cookie": forged_cookie}) == 401
    assert status_of(engine, job) == "pending"

    # the JSON API: a non-ASCII token, Content-Length not a number or negative, wrong JSON types
    assert answers("POST", f"/api/v1/admin/jobs/{job}/pause", b"{}",
                   {"Authorization": b"Bearer t\xc3\xb6k\xe2\x82\xac"}) == 401
    assert answers("POST", f"/api/v1/admin/jobs/{job}/pause", b"",
                   {**bearer, "Content-Length": "abc"}) == 400
    assert answers("POST", f"/api/v1/admin/jobs/{job}/pause", b"",
                   {**bearer, "Content-Length": "-1"}) == 400
    assert answers("POST", f"/api/v1/admin/jobs/{job}/pause", b"[1]", bearer) == 400
    assert answers("POST", f"/api/v1/admin/jobs/{job}/pause", b'{"reason": ["x"]}', bearer) == 400
    assert answers("POST", f"/api/v1/admin/jobs/{job}/pause", b"\xff\xfe", bearer) == 400
    assert answers("POST", f"/api/v1/admin/jobs/{job}/set", b'{"concurrency": [2]}', bearer) == 400
    assert answers("POST", f"/api/v1/admin/jobs/{job}/set", b'{"concurrency": true}', bearer) == 400
    assert answers("POST", f"/api/v1/admin/jobs/{job}/set", b'{"colour": 2}', bearer) == 400
    assert answers("POST", "/api/v1/admin/jobs/0000000/pause", b"{}", bearer) == 404
    assert answers("POST", "/api/v1/admin/jobs/zz/pause", b"{}", bearer) == 400  # not a job id: as the CLI's exit 2
    assert answers("GET", f"/jobs/{job}?minutes=abc") == 400
    assert status_of(engine, job) == "pending"

    # the right way, then the wrong state: 409, shown on the page
    body, headers = form({"csrf": csrf, "reason": "maintenance"})
    code, answer, _ = request(base, "POST", f"/jobs/{job}/pause", body, {**headers, "Cookie": cookie})
    assert code == 303 and answer["Location"] == f"/jobs/{job}?did=pause"
    assert status_of(engine, job) == "paused"
    code, _, page = request(base, "POST", f"/jobs/{job}/pause", body, {**headers, "Cookie": cookie})
    assert code == 409 and 'role="alert">cannot pause job' in page
    body, headers = form({"csrf": csrf, "concurrency": "many"})
    code, _, page = request(base, "POST", f"/jobs/{job}/set", body, {**headers, "Cookie": cookie})
    assert code == 400 and "concurrency must be an integer between 1 and 64" in page
    assert answers("POST", f"/api/v1/admin/jobs/{job}/resume", b'{"by": "script"}', bearer) == 200
    assert status_of(engine, job) == "pending"


def test_without_a_token_the_console_is_read_only_and_says_why(engine, db_url, tmp_path, web):  # noqa: F811
    make_items(engine, 10)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.01))
    base = web(token=None)
    code, _, page = request(base, "GET", "/")
    assert code == 200 and 'id="read-only"' in page and "TIDEGATE_ADMIN_TOKEN" in page and 'id="sign-in"' not in page
    assert "data-action" not in page
    body, headers = form({"token": "anything"})
    code, _, page = request(base, "POST", "/login", body, headers)
    assert code == 403 and "no admin token is configured" in page
    assert request(base, "POST", f"/jobs/{job}/pause", *form({"csrf": "x"}))[0] == 403
    assert status_of(engine, job) == "pending"


def test_the_session_cookie_is_marked_secure_behind_an_https_proxy(engine, db_url, web):  # noqa: F811
    """Behind a TLS-terminating proxy (X-Forwarded-Proto: https) the cookie travels over HTTPS only; over
    plain HTTP (a port-forward, localhost) it cannot be, or the browser would never send it back."""
    base = web()
    body, headers = form({"token": TOKEN, "name": "bob"})
    plain = request(base, "POST", "/login", body, headers)[1]["Set-Cookie"]
    proxied = request(base, "POST", "/login", body, {**headers, "X-Forwarded-Proto": "https"})[1]["Set-Cookie"]
    assert "Secure" not in plain and "HttpOnly" in plain
    assert proxied.endswith("; Path=/; HttpOnly; SameSite=Strict; Secure")
    cookie = proxied.split(";")[0]
    page = request(base, "GET", "/", headers={"Cookie": cookie, "X-Forwarded-Proto": "https"})[2]
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)[1]
    body, headers = form({"csrf": csrf})
    code, answer, _ = request(base, "POST", "/logout", body, {**headers, "Cookie": cookie, "X-Forwarded-Proto": "https"})
    assert code == 303 and answer["Set-Cookie"].endswith("; Secure; Max-Age=0")


def test_samples_are_shown_only_to_a_signed_in_viewer(engine, db_url, web):  # noqa: F811
    seed_demo(engine, 600)  # malformed snapshots: PARSE_ERROR items, each with a sample
    job = run_cli(db_url, "enqueue", "backfill-range", "--from", "2024-01-01", "--to", "2025-01-01",
                  "--owner", "qa").stdout.strip()
    run_cli(db_url, "worker", "--drain", "--no-maintenance")
    base = web()
    anonymous = request(base, "GET", f"/jobs/{job}")[2]
    assert 'id="sample-hidden">samples hidden: sign in' in anonymous and 'class="sample"' not in anonymous
    assert all(r["sample"] is None for r in json.loads(request(base, "GET", f"/api/v1/jobs/{job}/errors")[2]))
    cookie, _ = signed_in(base, page=f"/jobs/{job}")
    page = request(base, "GET", f"/jobs/{job}", headers={"Cookie": cookie})[2]
    assert 'id="sample-hidden"' not in page and "PARSE_ERROR" in page
    sample = scalar(engine, "SELECT sample FROM etl_errors WHERE job_id = :j ORDER BY id DESC LIMIT 1", j=job)
    assert sample and html.escape(sample[:20]) in page
    with_bearer = json.loads(request(base, "GET", f"/api/v1/jobs/{job}/errors",
                                     headers={"Authorization": f"Bearer {TOKEN}"})[2])
    assert with_bearer and all(r["sample"] for r in with_bearer)


def test_the_rate_history_adds_up_to_the_job_and_is_pruned(engine, db_url, tmp_path, web):  # noqa: F811
    make_items(engine, 500, gaps=True)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.0), batch_size=25, concurrency=3)
    run_cli(db_url, "worker", "--drain", "--no-maintenance", "--concurrency", "2")
    row = job_row(engine, job)
    assert row.status == "done"
    with engine.connect() as conn:
        rates = conn.execute(text("SELECT sum(rows), sum(errors), sum(batches), min(batch_seconds) FROM"
                                  " tidegate_job_rates WHERE job_id = :j"), {"j": job}).one()
        batches = conn.execute(text("SELECT sum(batches) FROM backfill_slices WHERE job_id = :j"), {"j": job}).scalar()
    assert (rates[0], rates[1], rates[2]) == (row.processed_count, row.error_count, batches) and rates[3] >= 0
    base = web()
    series = json.loads(request(base, "GET", f"/api/v1/jobs/{job}/rates?minutes=10")[2])
    assert len(series) == 10 and sum(p["batches"] for p in series) == batches
    assert 'id="rate-chart"' in request(base, "GET", f"/jobs/{job}")[2]

    with engine.begin() as conn:  # a minute older than the retention goes; the job's recent ones stay
        conn.execute(text("INSERT INTO tidegate_job_rates (job_id, minute, rows, batches) VALUES (:j, :m, 1, 1)"),
                     {"j": job, "m": datetime.now(UTC) - timedelta(days=8)})
    assert run_once(engine, RetentionConfig(jobs_seconds=7 * 86400.0)).job_rates == 1
    assert scalar(engine, "SELECT sum(batches) FROM tidegate_job_rates WHERE job_id = :j", j=job) == batches
