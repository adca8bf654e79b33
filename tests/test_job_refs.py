"""Job ids, the same everywhere (issue 17, point 4): every command, option and console route takes a full
id or an unambiguous prefix, and answers a malformed id (exit 2 / 400), an unknown one (exit 3 / 404)
and an ambiguous prefix (exit 2 / 400, naming two matches) alike; hostile ids change nothing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
import urllib.parse
from unittest import mock

import pytest
from sqlalchemy import text

from tests.conftest import run_cli, scalar
from tests.test_console import form, request, signed_in
from tests.test_web import TOKEN, web  # noqa: F401  (the fixture)
from tidegate.worker.cli import main

pytestmark = pytest.mark.slow

# three queued jobs: two share the prefix abcdef01, the third is alone under 12345678
TWINS = ("abcdef01-0000-4000-8000-000000000001", "abcdef01-0000-4000-8000-000000000002")
SINGLE = "12345678-0000-4000-8000-000000000003"
MALFORMED = {"dot-dot": "..", "slash-dot-dot": "../etc", "nul-escape": "%00", "unicode": "ü-job", "sql": "'; DROP",
             "ten-kb": "a" * 10_000, "too-long-hex": "a" * 37, "space": "abc def"}
UNKNOWN = "0000000"  # a well-formed prefix of no job
AMBIGUOUS = "abcdef01"


def queue(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        for job_id in (*TWINS, SINGLE):
            conn.execute(text("INSERT INTO queue_jobs (id, type, payload) VALUES (:id, 'backfill_range',"
                              " CAST(:p AS jsonb))"), {"id": job_id, "p": json.dumps({"owner": "tests"})})


def snapshot(engine) -> list:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT id, status, payload FROM queue_jobs ORDER BY id")).all()
        audit = conn.execute(text("SELECT count(*) FROM tidegate_audit")).scalar()
    return [*map(tuple, jobs), audit]


# every command and option that takes a job id, JOB standing for it
COMMANDS = {
    "status": ["status", "JOB"],
    "status-json": ["status", "JOB", "--json"],
    "errors": ["errors", "JOB"],
    "pause": ["pause", "JOB"],
    "resume": ["resume", "JOB"],
    "cancel": ["cancel", "JOB"],
    "retry": ["retry", "JOB"],
    "set": ["set", "JOB", "--concurrency", "2"],
    "verify": ["verify", "JOB"],
    "rollout": ["rollout", "JOB", "--timeout", "1"],
    "archive-report": ["archive", "report", "JOB"],
    "from-audit": ["enqueue", "unarchive-range", "--layout", "tidegate", "--owner", "o", "--from-audit", "JOB"],
}


def cli(url: str, *args: str) -> tuple[int, str, str]:
    """`tidegate ARGS` run in this process (the matrix below is large): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "argv", ["tidegate", *args]), mock.patch.dict(os.environ, {"DATABASE_URL": url}), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def test_every_command_answers_a_job_id_alike(engine, db_url):
    queue(engine)
    before = snapshot(engine)
    refs = [("unknown", UNKNOWN), ("ambiguous", AMBIGUOUS), ("upper-ambiguous", "ABCDEF01"), *MALFORMED.items()]
    for name, command in COMMANDS.items():
        for ref_name, ref in refs:
            code, _, err = cli(db_url, *[ref if a == "JOB" else a for a in command])
            what = (name, ref_name, code, err[-300:])
            assert err.startswith("error: ") and err.count("\n") == 1, what  # one line, no traceback
            if ref_name == "unknown":
                assert code == 3 and f"no job '{ref}'" in err, what
            elif "ambiguous" in ref_name:
                assert code == 2 and "is ambiguous: it matches" in err and all(t in err for t in TWINS), what
            else:
                assert code == 2 and "is not a job id" in err, what
                assert len(err) < 400, what  # a 10 KB id is quoted, not echoed whole
    assert snapshot(engine) == before


def test_a_unique_prefix_works_in_every_command(engine, db_url):
    queue(engine)
    prefix = SINGLE[:8]
    assert json.loads(run_cli(db_url, "status", prefix, "--json").stdout)["job_id"] == SINGLE
    assert run_cli(db_url, "errors", prefix).stdout.strip() == "no failed items"
    assert run_cli(db_url, "pause", prefix.upper(), "--reason", "a look").stdout.strip() == f"{SINGLE} paused"
    assert run_cli(db_url, "resume", prefix).stdout.strip() == f"{SINGLE} resumed"
    # archive report: the prefix is resolved; the job is then not an archive job (a clear line, not "no job")
    out = run_cli(db_url, "archive", "report", prefix, check=False)
    assert out.returncode == 3 and f"no archive job {SINGLE}" in out.stderr, out.stderr
    # a wrong state is exit 4, whatever the form of the id
    run_cli(db_url, "cancel", prefix)
    out = run_cli(db_url, "pause", prefix, check=False)
    assert out.returncode == 4 and "cannot pause" in out.stderr, out.stderr


def routes(job: str) -> list[tuple[str, str]]:
    """Every console route that names a job, as (method, path)."""
    gets = [f"/jobs/{job}", f"/api/v1/jobs/{job}", *(f"/api/v1/jobs/{job}/{p}" for p in
                                                      ("errors", "slices", "audit", "rates"))]
    posts = [f"{base}/{job}/{action}" for base in ("/jobs", "/api/v1/admin/jobs")
             for action in ("pause", "resume", "cancel", "retry", "set")]
    return [("GET", p) for p in gets] + [("POST", p) for p in posts]


def test_every_console_route_answers_a_job_id_alike(engine, db_url, web):  # noqa: F811
    queue(engine)
    before = snapshot(engine)
    base = web()
    cookie, csrf = signed_in(base)
    body, form_headers = form({"csrf": csrf, "concurrency": "2", "reason": "r"})
    bearer = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def ask(method: str, path: str) -> tuple[int, str, str]:
        if method == "GET":
            code, headers, answer = request(base, "GET", path, headers={"Cookie": cookie})
        elif path.startswith("/jobs/"):
            code, headers, answer = request(base, "POST", path, body, {**form_headers, "Cookie": cookie})
        else:
            payload = '{"concurrency": 2}' if path.endswith("/set") else '{"reason": "r"}'
            code, headers, answer = request(base, "POST", path, payload, bearer)
        assert answer, f"{method} {path}: an answer with a body, never a dropped connection"
        if headers["Content-Type"].startswith("application/json"):
            return code, json.loads(answer)["error"], "json"
        assert 'role="alert"' in answer, answer[:300]  # the page says it
        return code, answer, "html"

    refs = {"unknown": UNKNOWN, "ambiguous": AMBIGUOUS, **{k: urllib.parse.quote(v, safe="%") for k, v in
                                                          MALFORMED.items() if k != "slash-dot-dot"}}
    for ref_name, ref in refs.items():
        for method, path in routes(ref):
            code, message, kind = ask(method, path)
            what = (ref_name, method, path[:80], code, message[:200])
            if ref_name == "unknown":
                assert code == 404 and "no job" in message, what
            elif ref_name == "ambiguous":
                assert code == 400 and "is ambiguous" in message and TWINS[0] in message, what
            else:
                assert code == 400 and "is not a job id" in message, what
    assert snapshot(engine) == before
    # a unique prefix works on every route: reads, then each move in turn
    prefix = SINGLE[:8]
    for method, path in routes(prefix)[:6]:
        assert request(base, method, path)[0] == 200, path
    for action in ("pause", "resume", "cancel", "retry"):
        code, answer = ask_api(base, f"/api/v1/admin/jobs/{prefix}/{action}", bearer)
        assert code == 200 and answer == {"job_id": SINGLE, "action": action}, (action, code, answer)
    code, answer = ask_api(base, f"/api/v1/admin/jobs/{prefix}/set", bearer, '{"concurrency": 2}')
    assert code == 200 or code == 404 and "not been planned yet" in answer["error"], answer  # this job: unplanned
    code, headers, _ = request(base, "POST", f"/jobs/{prefix}/pause", body, {**form_headers, "Cookie": cookie})
    assert code == 303 and headers["Location"] == f"/jobs/{SINGLE}?did=pause"
    assert scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=SINGLE) == "paused"


def ask_api(base: str, path: str, headers: dict, payload: str = "{}") -> tuple[int, dict]:
    code, _, answer = request(base, "POST", path, payload, headers)
    return code, json.loads(answer)


def test_raw_requests_with_hostile_ids_and_headers_are_answered(engine, db_url, web):  # noqa: F811
    queue(engine)
    base = web()
    host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port

    def raw(data: bytes) -> bytes:
        with socket.create_connection((host, port), timeout=30) as s:
            s.sendall(data)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def status_of(answer: bytes) -> int:
        assert answer, "an answer, never a dropped connection"
        return int(answer.split(b" ", 2)[1])

    # raw bytes in the path: UTF-8, latin-1, a NUL escape, a 10 KB id
    for path in (b"/api/v1/jobs/\xc3\xbc", b"/api/v1/jobs/\xff", b"/jobs/%00", b"/api/v1/jobs/" + b"b" * 10_000):
        answer = raw(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(answer) == 400 and b"is not a job id" in answer, answer[:300]
    # malformed Content-Length headers on an admin post: the bearer is right, the length is not
    for length in (b"abc", b"-1", b"1e3", b"\xef\xbc\x91", b"+5", b"5 5", b""):
        answer = raw(b"POST /api/v1/admin/jobs/" + SINGLE.encode() + b"/pause HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: " + length +
                     b"\r\nConnection: close\r\n\r\n{}")
        code = status_of(answer)
        assert code == 400 and b"Content-Length" in answer, (length, answer[:300])
    # a body larger than the server takes: 413
    answer = raw(b"POST /api/v1/admin/jobs/" + SINGLE.encode() + b"/pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + TOKEN.encode() + b"\r\nContent-Length: 99999999999999999999\r\nConnection: close\r\n\r\n{}")
    assert status_of(answer) == 413
    # a non-ASCII token, in the header (raw bytes) and in the sign-in form
    answer = raw(b"POST /api/v1/admin/jobs/" + SINGLE.encode() + b"/pause HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer \xff\xfe\xc3\xbc\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert status_of(answer) == 401
    body, headers = form({"token": "tök€n", "name": "eve"})
    code, _, page = request(base, "POST", "/login", body, headers)
    assert code == 401 and "wrong admin token" in page
    code, _, page = request(base, "POST", "/login", b"token=%FF%FE&name=eve",
                            {"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 401 and "wrong admin token" in page
    # knobs of the wrong type or form, from a script and from the page's form: 400, said, nothing changed
    bearer = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for knob in ('{"concurrency": "1_0"}', '{"concurrency": "\\uff12"}', '{"max_rows_per_second": {"a": 1}}',
                 '{"sleep_between_batches": "nan"}', '{"concurrency": 1e400}', '{"concurrency": ' + "[" * 5000 + "]"
                 * 5000 + "}", '{"concurrency": null}'):
        code, _, answer = request(base, "POST", f"/api/v1/admin/jobs/{SINGLE}/set", knob, bearer)
        assert code == 400 and json.loads(answer)["error"], (knob[:60], code, answer[:200])
    cookie, csrf = signed_in(base)
    for value in ("１２", "1_0", "2.5", "many"):
        body, headers = form({"csrf": csrf, "concurrency": value})
        code, _, page = request(base, "POST", f"/jobs/{SINGLE}/set", body, {**headers, "Cookie": cookie})
        assert code == 400 and 'role="alert">concurrency must be an integer' in page, (value, code, page[-300:])
    assert scalar(engine, "SELECT status FROM queue_jobs WHERE id = :j", j=SINGLE) == "pending"
