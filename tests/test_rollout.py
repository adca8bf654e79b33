"""`tidegate rollout` against a running pool: canary, verify, then concurrency raised step by step."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import text

from tests.conftest import job_row, run_cli
from tests.fixtures import seed_demo

pytestmark = pytest.mark.slow

RANGE = ("--from", "2024-01-01T00:00:00Z", "--to", "2025-01-01T00:00:00Z")


def _canary_job(url: str, handler: str) -> str:
    return run_cli(url, "enqueue", "backfill-range", *RANGE, "--handler", handler, "--batch-size", "100",
                   "--concurrency", "1", "--limit", "300", "--owner", "tests").stdout.strip()


def _concurrency_steps(engine, job: str) -> list[int]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT details FROM tidegate_audit WHERE job_id = :j AND action = 'set' ORDER BY id"),
                            {"j": job}).scalars().all()
    return [d["concurrency"] for d in rows if "concurrency" in d]


def assert_in_order(out: str) -> None:
    """Each stage says where it is before its checks, and its outcome after them; steps count up."""
    lines = out.splitlines()
    stage = None
    steps = []
    for line in lines:
        if line.startswith("  "):  # a check: under the stage being verified
            assert stage is not None, out
            continue
        name, _, what = line.partition(": ")
        if what.endswith("verifying"):
            stage = name
        elif what in ("verified",) or what.startswith("FAIL"):
            assert name == stage, (line, out)
            stage = None
        if name.startswith("step "):
            steps.append(int(name.split()[1]))
    assert steps == sorted(steps) and lines[0].startswith("canary: at most"), out


def test_rollout_goes_from_canary_to_full_concurrency_verifying_each_step(engine, db_url, pools):
    seed_demo(engine, 4000)
    job = _canary_job(db_url, "hero_troops")
    pools("--concurrency", "4", "--poll", "0.1")
    out = run_cli(db_url, "rollout", job[:8], "--steps", "1,2,4", "--step-rows", "600", "--poll", "0.05",
                  "--by", "sre-bob", timeout=180).stdout
    assert "canary: verified" in out and "rollout complete" in out and "FAIL" not in out
    assert_in_order(out)
    row = job_row(engine, job)
    assert (row.status, row.processed_count, row.row_limit) == ("done", 4000, None)
    steps = _concurrency_steps(engine, job)
    assert steps[0] == 1 and steps == sorted(steps) and set(steps) <= {1, 2, 4}
    assert json.loads(run_cli(db_url, "verify", job[:8], "--json").stdout)["ok"]


def test_rollout_holds_at_the_canary_when_its_verification_fails(engine, db_url, pools):
    seed_demo(engine, 4000)
    job = _canary_job(db_url, "tests.handlers:off_by_one_troops")
    pools("--concurrency", "4", "--poll", "0.1")
    out = run_cli(db_url, "rollout", job[:8], "--steps", "1,4", "--step-rows", "600", "--poll", "0.05",
                  check=False, timeout=180)
    assert out.returncode == 1
    assert "FAIL sample recomputed" in out.stdout and "holding at canary" in out.stderr
    assert_in_order(out.stdout)
    row = job_row(engine, job)
    assert (row.status, row.processed_count, row.concurrency) == ("paused", 300, 1)
    assert row.status_reason == "canary limit reached"  # it stays paused where the canary stopped it
    assert _concurrency_steps(engine, job) == []  # no step was taken


def test_rollout_ends_cleanly_when_the_job_finishes_between_a_verification_and_its_step(engine, db_url, pools):
    """The race the CI run met: the job reached done while a step was being verified, and raising its
    concurrency then failed with exit 4. The echo hook waits for the job to finish right after the
    step's verification, so the race happens every time."""
    from tidegate.jobs.rollout import Rollout

    seed_demo(engine, 1500)
    job = _canary_job(db_url, "hero_troops")
    pools("--concurrency", "2", "--poll", "0.1")
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line == "step 2: verified":
            while job_row(engine, job).status != "done":
                time.sleep(0.05)

    Rollout(engine, job, [1, 4], step_rows=300, actor="sre-bob", echo=echo, poll=0.05, timeout=120).run()
    out = "\n".join(lines)
    assert "step 2: the job finished before concurrency 4 was needed" in out and "rollout complete" in out, out
    assert_in_order(out)
    row = job_row(engine, job)
    assert (row.status, row.processed_count) == ("done", 1500)
    assert _concurrency_steps(engine, job) == [1]  # the step that came too late set nothing
