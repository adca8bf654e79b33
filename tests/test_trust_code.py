"""The worker runs only what its owner deployed (issue 13, points 1 and 3), tested as attackers.

A payload names a handler and a layout; it never names code to import or a file to open. Each attack
logs in as a role of ops/roles.sql (the `roles` fixture: LOGIN roles made for the test) and goes
through each door an enqueuer has: an INSERT into queue_jobs that a worker then plans, the CLI, and
the admin API. Each is refused with one line and nothing queued, run, imported or opened:

* imported: tests/sentinel_import.py writes a file when anything imports it, and the processes'
  working directory stays empty (``venv.__main__`` would create a virtualenv there);
* opened: a FIFO would hang a worker that opened it (every run has a timeout), a secret TOML key never
  shows in an error, and an existing file gets the very error a missing one gets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from tests.conftest import CHILD_ENV, ROOT, TIDEGATE, scalar, wait_for
from tests.event_stores import build
from tests.fixtures import make_items, seed_demo
from tests.ports import free_port
from tests.test_runbook_sql import RUNBOOK_INSERT
from tidegate.worker.db import make_engine

pytestmark = pytest.mark.slow

RANGE = {"from": "2024-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z", "owner": "attacker"}
HANDLER_ATTACKS = {
    "os-system": "os:system",
    "builtins-len": "builtins:len",
    "venv-main": "venv.__main__:main",
    "subprocess-run": "subprocess:run",
    "module-not-loaded": "tests.sentinel_import:handler",
    "module-only": "tests.sentinel_import",
    "dunder-of-a-loaded-module": "tests.handlers:__import__",
    "builtins-of-a-loaded-module": "tests.handlers:__builtins__",
    "import-of-a-loaded-module": "tests.handlers:text",  # sqlalchemy's text(), imported by tests.handlers
    # a method of a handler the deployment offers: only the handler itself may be named
    "dotted-path-in-a-loaded-module": "tidegate.jobs.demo.handlers:HERO_TROOPS.write",
    "private-of-a-loaded-module": "tests.handlers:_FailEvery",
    "class-of-a-loaded-module": "tests.handlers:HeroTroops",
    "no-function": "tests.handlers:",
    "padded": "  os:system  ",
}
TIDEGATE_TOML = (ROOT / "jobs/archive/layouts/tidegate.toml").read_text()
OURS_TOML = TIDEGATE_TOML.replace('name = "tidegate"', 'name = "ours"')
REFUSED_LAYOUT = "a payload names a shipped layout"


def layout_attacks(tmp_path: Path) -> dict[str, Any]:
    fifo = tmp_path / "layout.fifo"
    os.mkfifo(fifo)
    secret = tmp_path / "secret.toml"
    secret.write_text('[topsecret_key]\nvalue = "hunter2"\n')
    return {
        "etc-shadow": "/etc/shadow",
        "dev-zero": "/dev/zero",
        "fifo": str(fifo),
        "proc-self-environ": "/proc/self/environ",
        "dot-dot-path": "../../etc/hostname",
        "existing-toml": str(secret),
        "missing-toml": str(tmp_path / "missing.toml"),
        "shipped-file-by-path": "jobs/archive/layouts/tidegate.toml",
        "unregistered-name": "no_such_layout",
    }


def tidegate(url: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = (),
             timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, in an empty working directory, with the import sentinel armed."""
    full = {**os.environ, **CHILD_ENV, "DATABASE_URL": url, "TIDEGATE_TEST_SENTINEL": str(tmp_path / "sentinel"),
            **(env or {})}
    for name in drop:
        full.pop(name, None)
    return subprocess.run([TIDEGATE, *args], cwd=_cwd(tmp_path), env=full, capture_output=True, text=True,
                          timeout=timeout, input=input)


def _cwd(tmp_path: Path) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return cwd


def nothing_imported_or_created(tmp_path: Path) -> None:
    assert not (tmp_path / "sentinel").exists(), (tmp_path / "sentinel").read_text()
    assert list(_cwd(tmp_path).iterdir()) == []


def insert_jobs(url: str, job_type: str, payloads: dict[str, Any]) -> dict[str, str]:
    """INSERT INTO queue_jobs as the given login, one job per payload; their ids by case."""
    eng = make_engine(url)
    try:
        with eng.begin() as conn:
            return {case: str(conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES (:t, CAST(:p AS jsonb))"
                                                " RETURNING id"), {"t": job_type, "p": json.dumps(p)}).scalar_one())
                    for case, p in payloads.items()}
    finally:
        eng.dispose()


def job_outcome(engine, job_id: str) -> tuple[str, str | None]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, last_error FROM queue_jobs WHERE id = :j"), {"j": job_id}).one()
    return row.status, row.last_error


def one_line_refusal(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


def grant_event_store(engine, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """The event store's own grants, as ops/roles.sql's comments say."""
    with engine.begin() as conn:
        conn.execute(text(f"GRANT SELECT ON es_streams, es_events TO {prefix}enqueue"))
        conn.execute(text(f"GRANT SELECT, UPDATE ON es_streams TO {prefix}worker"))
        conn.execute(text(f"GRANT SELECT, DELETE ON es_events, es_stream_summaries TO {prefix}worker"))
        conn.execute(text(f"GRANT INSERT ON es_events_archive, es_stream_summaries_archive TO {prefix}worker"))


# -- handlers (point 1) ---------------------------------------------------------------------------------


def test_handlers_an_enqueuer_inserts_are_refused_by_the_worker_and_nothing_is_imported(engine, roles, tmp_path):
    seed_demo(engine, 200)
    ids = insert_jobs(roles["enqueue"], "backfill_range",
                      {case: {**RANGE, "handler": ref} for case, ref in HANDLER_ATTACKS.items()})
    enqueuer = make_engine(roles["enqueue"])
    with enqueuer.begin() as conn:  # the runbook's INSERT, verbatim: the deployment's default handler
        conn.execute(text(RUNBOOK_INSERT))
    enqueuer.dispose()
    tidegate(roles["worker"], tmp_path, "worker", "--drain", "--no-maintenance", "--poll", "0.2",
             "--concurrency", "1").check_returncode()
    for case, job_id in ids.items():
        status, error = job_outcome(engine, job_id)
        assert status == "failed" and error.startswith("invalid job: "), (case, status, error)
        assert ("is not available" in error or "unknown handler" in error) and "available: hero_troops" in error, error
    attack_ids = list(ids.values())
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE planned AND job_id = ANY(CAST(:i AS uuid[]))", i=attack_ids) == 0
    assert scalar(engine, "SELECT count(*) FROM etl_errors WHERE job_id = ANY(CAST(:i AS uuid[]))", i=attack_ids) == 0
    # the worker did run: the runbook's job, with the registered default handler, is done
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE status = 'done'") == 1
    assert scalar(engine, "SELECT count(*) FROM user_troops") > 0
    nothing_imported_or_created(tmp_path)


def test_the_enqueue_cli_refuses_the_same_handlers_with_the_list_of_available_ones(engine, roles, tmp_path):
    seed_demo(engine, 50)
    for case, ref in HANDLER_ATTACKS.items():
        proc = tidegate(roles["enqueue"], tmp_path, "enqueue", "backfill-range", "--from", RANGE["from"], "--to",
                        RANGE["to"], "--owner", "attacker", "--handler", ref)
        error = one_line_refusal(proc)
        assert "available: hero_troops" in error and "tests.handlers:record" in error, (case, error)
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 0
    assert scalar(engine, "SELECT count(*) FROM tidegate_audit") == 0
    nothing_imported_or_created(tmp_path)


def test_worker_handlers_option_loads_a_deployments_module_and_nothing_else(engine, db_url, tmp_path):
    make_items(engine, 40)
    job = {"source": "items", "key": "k", "from": 1, "to": 1000, "handler": "tests.handlers:log_all", "owner": "t"}
    without = ("TIDEGATE_HANDLERS",)
    refused = tidegate(db_url, tmp_path, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from",
                       "1", "--to", "1000", "--owner", "t", "--handler", "tests.handlers:log_all", drop=without)
    assert "is not available" in one_line_refusal(refused)
    first = insert_jobs(db_url, "backfill_range", {"first": job})["first"]
    tidegate(db_url, tmp_path, "worker", "--drain", "--poll", "0.2", drop=without).check_returncode()
    status, error = job_outcome(engine, first)
    assert status == "failed" and "is not available" in error
    second = insert_jobs(db_url, "backfill_range", {"second": job})["second"]
    tidegate(db_url, tmp_path, "worker", "--drain", "--poll", "0.2", "--handlers", "tests.handlers",
             drop=without).check_returncode()
    assert job_outcome(engine, second)[0] == "done"
    assert scalar(engine, "SELECT count(*) FROM processed_log") == 40
    for bad in ("no_such_module", "os; rm -rf /", "tests.no_such"):
        proc = tidegate(db_url, tmp_path, "worker", "--drain", "--handlers", bad, drop=without)
        assert proc.returncode == 2 and "no module" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    nothing_imported_or_created(tmp_path)


# -- layouts (point 3) -----------------------------------------------------------------------------------


def test_layouts_an_enqueuer_inserts_are_names_and_the_worker_opens_no_file(engine, db_url, roles, tmp_path):
    build(engine, db_url, "tidegate", 40)
    grant_event_store(engine, roles["prefix"])
    attacks: dict[str, Any] = {case: {"layout": ref, "owner": "attacker"}
                               for case, ref in layout_attacks(tmp_path).items()}
    hostile_doc = {"name": "x", "strategy": "move", "streams": {"table": "tidegate_workers", "key": "id",
                                                                "archived_at": "started_at"},
                   "events": {"table": "etl_errors", "stream": "id", "sequence": "id", "archive_table": "etl_errors"}}
    attacks["inline-document"] = {"layout": hostile_doc, "owner": "attacker"}
    attacks["layout-spec-smuggled"] = {"layout": "tidegate", "layout_spec": hostile_doc, "owner": "attacker"}
    attacks["null"] = {"layout": None, "owner": "attacker"}
    attacks["huge-name"] = {"layout": "a" * 100_000, "owner": "attacker"}
    ids = insert_jobs(roles["enqueue"], "archive_range", attacks)
    events = scalar(engine, "SELECT count(*) FROM es_events")
    # a FIFO opened by a worker would hang it for good: the timeout fails the test instead
    tidegate(roles["worker"], tmp_path, "worker", "--drain", "--no-maintenance", "--poll", "0.2",
             timeout=120).check_returncode()
    errors = {}
    for case, job_id in ids.items():
        status, errors[case] = job_outcome(engine, job_id)
        assert status == "failed" and errors[case].startswith("invalid job: "), (case, status, errors[case])
        assert len(errors[case]) < 600 and "\n" not in errors[case], errors[case]
    for case, error in errors.items():
        if case == "unregistered-name":
            assert "is not a shipped layout" in error and "none registered" in error, error
        elif case == "layout-spec-smuggled":
            assert "layout_spec is written by planning" in error, error
        else:
            assert REFUSED_LAYOUT in error and "opens no file" in error, (case, error)
    # existing or missing, the same words: a payload learns nothing of the worker's files
    def without_path(error: str) -> str:  # the path is shown (cut at 80 characters), the rest must be equal
        return re.sub(r"layout is .*?, not a layout name", "layout is P, not a layout name", error)

    assert without_path(errors["existing-toml"]) == without_path(errors["missing-toml"])
    assert "secret.toml" in errors["existing-toml"] or "..." in errors["existing-toml"]
    assert not any("topsecret_key" in e or "hunter2" in e for e in errors.values())
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE planned") == 0
    assert scalar(engine, "SELECT count(*) FROM archive_candidates") == 0
    assert scalar(engine, "SELECT count(*) FROM es_events") == events
    nothing_imported_or_created(tmp_path)


def test_the_archive_cli_refuses_paths_that_are_no_layout_and_queues_nothing(engine, db_url, roles, tmp_path):
    build(engine, db_url, "tidegate", 20)
    grant_event_store(engine, roles["prefix"])
    # the CLI reads a file with its user's own rights (a dry run of their own layout), but a device or a FIFO
    # is refused rather than read for ever, and a path is never put into a job
    for case, ref in layout_attacks(tmp_path).items():
        proc = tidegate(roles["enqueue"], tmp_path, "enqueue", "archive-range", "--layout", ref, "--reason", "r",
                        "--owner", "attacker", "--apply", "--all", "--yes", timeout=60)
        error = one_line_refusal(proc)
        if case in ("dev-zero", "fifo"):
            assert "not a regular file" in error, error
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 0
    assert scalar(engine, "SELECT count(*) FROM archive_layouts") == 0


def test_the_admin_api_refuses_the_same_handlers_and_layouts(engine, db_url, roles, tmp_path):
    seed_demo(engine, 50)
    build(engine, db_url, "tidegate", 20)
    grant_event_store(engine, roles["prefix"])
    token = "t0k3n-for-the-test"
    port = free_port()
    env = {**os.environ, **CHILD_ENV, "DATABASE_URL": roles["enqueue"], "TIDEGATE_ADMIN_TOKEN": token,
           "TIDEGATE_TEST_SENTINEL": str(tmp_path / "sentinel")}
    web = subprocess.Popen([TIDEGATE, "web", "--port", str(port)], env=env, cwd=_cwd(tmp_path),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _get(port, "/api/v1/jobs") == 200, timeout=30, what="the web server")
        for case, ref in HANDLER_ATTACKS.items():
            code, body = _post(port, "/api/v1/admin/backfill", {**RANGE, "handler": ref}, token)
            assert code == 400 and "available: hero_troops" in body["error"], (case, code, body)
        for case, ref in layout_attacks(tmp_path).items():
            code, body = _post(port, "/api/v1/admin/archive", {"layout": ref, "owner": "attacker"}, token)
            assert code == 400, (case, code, body)
            assert "topsecret_key" not in body["error"], body
            assert (REFUSED_LAYOUT if case != "unregistered-name" else "is not a shipped layout") in body["error"]
        code, body = _post(port, "/api/v1/admin/backfill", {**RANGE, "handler": "hero_troops"}, token)
        assert code == 201, body  # the door is open for what the deployment loaded
    finally:
        web.terminate()
        web.wait(30)
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 1
    nothing_imported_or_created(tmp_path)


def test_only_operators_register_layouts_and_enqueuers_then_name_them(engine, db_url, roles, tmp_path):
    build(engine, db_url, "tidegate", 30)
    p = roles["prefix"]
    grant_event_store(engine, p)
    ours = tmp_path / "ours.toml"
    ours.write_text(OURS_TOML)
    selection = ["--type", "venue", "--reason", "r", "--owner", "o"]

    # an enqueuer may dry-run their own file, but not register it, by the CLI or by SQL
    assert "would archive" in tidegate(roles["enqueue"], tmp_path, "enqueue", "archive-range", "--layout", str(ours),
                                       *selection).stdout
    denied = tidegate(roles["enqueue"], tmp_path, "enqueue", "archive-range", "--layout", str(ours), *selection,
                      "--apply", "--all", "--yes")
    assert denied.returncode == 6 and "Traceback" not in denied.stderr, denied.stderr
    assert denied.stderr.splitlines()[-1].endswith("an operator runs tidegate archive layout add FILE")
    assert "may not register layouts" in one_line_refusal(
        tidegate(roles["enqueue"], tmp_path, "archive", "layout", "add", str(ours)), 6)
    for role in ("enqueue", "worker", "maintenance"):
        eng = make_engine(roles[role])
        with pytest.raises(ProgrammingError, match="permission denied"), eng.begin() as conn:
            conn.execute(text("INSERT INTO archive_layouts (name, format, body, sha256, spec) VALUES ('evil', 'toml',"
                              " '', encode(sha256(''), 'hex'), '{}')"))
        eng.dispose()
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 0

    # the operator registers it (checked against the catalog), once; other text needs --replace
    out = tidegate(roles["operator"], tmp_path, "archive", "layout", "add", str(ours), "--by", "sre")
    assert out.returncode == 0 and "ours: added" in out.stdout, out.stderr
    assert "ours: unchanged" in tidegate(roles["operator"], tmp_path, "archive", "layout", "add", str(ours)).stdout
    changed = tmp_path / "changed" / "ours.toml"
    changed.parent.mkdir()
    changed.write_text(OURS_TOML + "\n# a comment changes the text\n")
    assert "--replace" in one_line_refusal(tidegate(roles["operator"], tmp_path, "archive", "layout", "add",
                                                    str(changed)))
    for n, (name, words) in enumerate([("tidegate", "shipped layout"), ("../evil", "must be letters"),
                                       ("a b", "must be letters")]):
        bad = tmp_path / f"bad-{n}.toml"
        bad.write_text(TIDEGATE_TOML.replace('name = "tidegate"', f"name = {json.dumps(name)}"))
        assert words in one_line_refusal(tidegate(roles["operator"], tmp_path, "archive", "layout", "add", str(bad)))
    missing_table = tmp_path / "broken.toml"
    missing_table.write_text(OURS_TOML.replace('name = "ours"', 'name = "broken"').replace(
        'table = "es_streams"', 'table = "no_such_streams"'))
    assert "does not exist" in one_line_refusal(tidegate(roles["operator"], tmp_path, "archive", "layout", "add",
                                                         str(missing_table)))
    listed = json.loads(tidegate(roles["enqueue"], tmp_path, "archive", "layout", "list", "--json").stdout)
    assert [r["name"] for r in listed] == ["tidegate", "marten", "rillflow", "rillflow_partitioned", "ours"]
    assert listed[-1]["added_by"] == f"{p}operator" and len(listed[-1]["sha256"]) == 64

    # an enqueuer names it (or gives the same file), a worker runs it: no file is read by the worker
    job = tidegate(roles["enqueue"], tmp_path, "enqueue", "archive-range", "--layout", str(ours), *selection,
                   "--apply", "--all", "--yes")
    assert job.returncode == 0 and "already registered" in job.stderr, job.stderr
    ours.unlink()  # the worker needs no file
    tidegate(roles["worker"], tmp_path, "worker", "--drain", "--no-maintenance").check_returncode()
    job_id = job.stdout.strip()
    assert job_outcome(engine, job_id)[0] == "done"
    venues = scalar(engine, "SELECT count(*) FROM es_streams WHERE type = 'venue'")
    assert scalar(engine, "SELECT count(*) FROM archive_audit WHERE job_id = :j AND action = 'archive'"
                          " AND layout = 'ours'", j=job_id) == venues > 0
    assert "ours: replaced" in tidegate(roles["operator"], tmp_path, "archive", "layout", "add", "--replace",
                                        str(changed)).stdout
    with engine.connect() as conn:
        audit = conn.execute(text("SELECT actor, action, details->>'layout' FROM tidegate_audit"
                                  " WHERE action LIKE 'layout_%' ORDER BY id")).all()
    assert [tuple(a) for a in audit] == [("sre", "layout_add", "ours"), (os.environ.get("TIDEGATE_ACTOR") or
                                                                         _user(), "layout_replace", "ours")]


def _user() -> str:
    import getpass

    return getpass.getuser()


def _get(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except (urllib.error.URLError, OSError):
        time.sleep(0.1)
        return None


def _post(port: int, path: str, body: dict[str, Any], token: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
