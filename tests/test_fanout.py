"""Fan-out runs (issue 15 point 3): `enqueue ... --targets SPEC` queues one job per target database under
one run id after validating in every target; `status --run`, `pause|resume|cancel|set --run` act on the
run's job in every target, a target that is down or refuses reported on its own line while the others act;
a SIGKILLed multi-target pool restarted leaves every target's data exact."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from tests import pg
from tests.conftest import pool_starter, run_cli, scalar, target_databases, targets_env, wait_for
from tests.fixtures import SLOW_LOG_HANDLER, log_report, make_items

NAMES = ("fo_a", "fo_b", "fo_c")
ROWS = 1200
pytestmark = pytest.mark.xdist_group("fanout")


@pytest.fixture
def shards(pg_server: str, template: str) -> Iterator[dict[str, tuple[str, Engine]]]:
    """Three migrated databases (from the template), named as targets fo_a, fo_b, fo_c."""
    with target_databases(pg_server, template, NAMES) as found:
        yield found


env_of = targets_env


def cli(shards: dict, *args: str, check: bool = False, **kw):  # type: ignore[no-untyped-def]
    # DATABASE_URL points at fo_a: a fan-out command must ignore it (and use every target named)
    return run_cli(shards["fo_a"][0], *args, check=check, env=env_of(shards), **kw)


def enqueue_args(tmp_path, delay: float = 0.0) -> list[str]:
    handler = tmp_path / f"h-{delay}.sql"
    handler.write_text(SLOW_LOG_HANDLER.replace(":delay", str(delay)))
    return ["enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to", str(ROWS + 1),
            "--handler", f"sql:{handler}", "--batch-size", "20", "--concurrency", "2", "--owner", "tests",
            "--by", "fanout-test"]


def jobs_of(engine: Engine) -> list:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id, run_id FROM queue_jobs ORDER BY created_at")))


def counts(shards: dict) -> dict[str, int]:
    return {n: scalar(e, "SELECT count(*) FROM queue_jobs") for n, (_, e) in shards.items()}


def logged(shards: dict) -> dict[str, int]:
    return {n: scalar(e, "SELECT count(*) FROM processed_log") for n, (_, e) in shards.items()}


def statuses(shards: dict) -> dict[str, str | None]:
    return {n: scalar(e, "SELECT coalesce(b.status::text, q.status::text) FROM queue_jobs q"
                         " LEFT JOIN backfill_jobs b ON b.job_id = q.id AND b.planned") for n, (_, e) in shards.items()}


def exact(engine: Engine) -> bool:
    """processed_log holds every key of items once: what a clean run writes."""
    r = log_report(engine)
    return r["logged"] == r["items"] == r["distinct_keys"] == ROWS and r["missing"] == 0


def set_down(pg_server: str, shards: dict, target: str, down: bool) -> None:
    """Make a target unreachable (ALLOW_CONNECTIONS false, its backends terminated), or reachable again."""
    url, engine = shards[target]
    engine.dispose()
    name = make_url(url).database
    with pg.admin(pg_server) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if down else "true"}')
        if down:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def test_one_invalid_target_gets_no_job_and_is_reported(shards, tmp_path):
    """fo_c has no items table: fo_a and fo_b get a job each under one run id, fo_c is reported, exit 2."""
    for n in ("fo_a", "fo_b"):
        make_items(shards[n][1], ROWS)
    out = cli(shards, *enqueue_args(tmp_path), "--targets", "fo_*")
    assert out.returncode == 2, out.stderr
    run_id = out.stdout.strip()
    assert str(uuid.UUID(run_id)) == run_id
    assert "target fo_c: refused:" in out.stderr and "items" in out.stderr
    assert "1 of 3 target(s) refused (fo_c)" in out.stderr
    assert counts(shards) == {"fo_a": 1, "fo_b": 1, "fo_c": 0}
    for n in ("fo_a", "fo_b"):
        ((job_id, rid),) = jobs_of(shards[n][1])
        assert str(rid) == run_id and str(job_id) in out.stderr
        audit = scalar(shards[n][1], "SELECT details->>'run_id' FROM tidegate_audit WHERE action = 'enqueue'")
        assert audit == run_id
    # --json: the run id and each target's job or error, the same exit code
    out = cli(shards, *enqueue_args(tmp_path), "--targets", "fo_b,fo_c", "--json")
    assert out.returncode == 2
    doc = json.loads(out.stdout)
    by = {t["target"]: t for t in doc["targets"]}
    assert doc["jobs"] == 1 and by["fo_b"]["job_id"] and by["fo_c"]["job_id"] is None
    assert by["fo_c"]["exit_code"] == 2 and "items" in by["fo_c"]["error"]
    assert scalar(shards["fo_b"][1], "SELECT count(DISTINCT run_id) FROM queue_jobs") == 2
    # every target valid: exit 0, one job each
    make_items(shards["fo_c"][1], ROWS)
    out = cli(shards, *enqueue_args(tmp_path), "--targets", "fo_a,fo_c,fo_b")
    assert out.returncode == 0, out.stderr
    assert counts(shards) == {"fo_a": 2, "fo_b": 3, "fo_c": 1}


def test_all_or_nothing_queues_nothing_when_one_target_refuses(shards, tmp_path, pg_server):
    for n in ("fo_a", "fo_c"):
        make_items(shards[n][1], ROWS)
    out = cli(shards, *enqueue_args(tmp_path), "--targets", "fo_*", "--all-or-nothing")
    assert out.returncode == 2, out.stderr
    assert out.stdout.strip() == ""
    assert "target fo_b: refused:" in out.stderr and "no job was queued anywhere" in out.stderr
    assert counts(shards) == {"fo_a": 0, "fo_b": 0, "fo_c": 0}
    # a target down: nothing anywhere either (exit 5, the down target's code)
    make_items(shards["fo_b"][1], ROWS)
    set_down(pg_server, shards, "fo_b", True)
    try:
        out = cli(shards, *enqueue_args(tmp_path), "--targets", "fo_*", "--all-or-nothing", "--json")
        assert out.returncode == 5, out.stderr
        doc = json.loads(out.stdout)
        assert doc["run_id"] is None and doc["jobs"] == 0
        assert {t["target"] for t in doc["targets"] if t.get("error")} == {"fo_b"}
        # without --all-or-nothing the reachable ones get theirs
        out = cli(shards, *enqueue_args(tmp_path), "--targets", "fo_*")
        assert out.returncode == 5 and "target fo_b: refused:" in out.stderr
    finally:
        set_down(pg_server, shards, "fo_b", False)
    assert counts(shards) == {"fo_a": 1, "fo_b": 0, "fo_c": 1}
    out = cli(shards, *enqueue_args(tmp_path), "--targets", "fo_*", "--all-or-nothing")
    assert out.returncode == 0, out.stderr
    assert counts(shards) == {"fo_a": 2, "fo_b": 1, "fo_c": 2}


def test_two_target_names_for_one_database_get_one_job(shards, tmp_path):
    """fo_alias is fo_a's database under another URL: the fan-out asks each database which it is (server
    system identifier and database name), refuses the second name (exit 2) and leaves one job there; with
    --all-or-nothing, none anywhere."""
    for n in ("fo_a", "fo_b"):
        make_items(shards[n][1], ROWS)
    alias = make_url(shards["fo_a"][0]).update_query_dict({"application_name": "alias"})
    env = {"TIDEGATE_TARGETS": env_of(shards)["TIDEGATE_TARGETS"]
           + f",fo_alias={alias.render_as_string(hide_password=False)}"}
    out = run_cli(shards["fo_a"][0], *enqueue_args(tmp_path), "--targets", "fo_a,fo_alias,fo_b", check=False,
                  env={**env_of(shards), **env})
    assert out.returncode == 2, out.stderr
    assert "target fo_alias: refused: target fo_alias is the same database as target fo_a" in out.stderr
    assert counts(shards) == {"fo_a": 1, "fo_b": 1, "fo_c": 0}
    out = run_cli(shards["fo_a"][0], *enqueue_args(tmp_path), "--targets", "fo_a,fo_b,fo_alias", "--all-or-nothing",
                  check=False, env={**env_of(shards), **env})
    assert out.returncode == 2 and "no job was queued anywhere" in out.stderr, out.stderr
    assert counts(shards) == {"fo_a": 1, "fo_b": 1, "fo_c": 0}


def test_hostile_target_specs_and_run_ids_change_nothing(shards, tmp_path):
    for n in NAMES:
        make_items(shards[n][1], ROWS)
    base = enqueue_args(tmp_path)
    bad_enqueues = [
        ["--targets", "../x"], ["--targets", "zz_*"], ["--targets", ""], ["--targets", ","],
        ["--targets", "fo_a;DROP TABLE items"], ["--targets", "fo_a,nope"], ["--targets", "*" * 5000],
        ["--targets", "fo_*", "--target", "fo_a"], ["--targets", "fo_*", "--database-url", shards["fo_a"][0]],
        ["--all-or-nothing"], ["--targets", "fo_*", "--dry-run"], ["--targets", "fo_*", "--priority", "99999999999"],
    ]
    for extra in bad_enqueues:
        out = cli(shards, *base, *extra)
        assert out.returncode == 2, (extra, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr
    bad_runs = ["not-a-uuid", "'; DROP TABLE queue_jobs; --", "1" * 100_000, "", "00000000-0000-0000-0000-00000000000g"]
    for run in bad_runs:
        for args in (["status", "--run", run], ["pause", "--run", run], ["cancel", "--run", run],
                     ["set", "--run", run, "--concurrency", "1"]):
            out = cli(shards, *args)
            assert out.returncode == 2, (args[:1], run[:40], out.stderr)
            assert "Traceback" not in out.stderr
    real = str(uuid.uuid4())
    for args in (["pause", "--run", real, "--target", "fo_a"], ["pause", "--run", real, "JOBID"],
                 ["status", "--run", real, "--targets", "nope_*"], ["pause", "--targets", "fo_a"],
                 ["set", "--run", real, "--concurrency", "0"], ["set", "--run", real, "--concurrency", "9" * 30]):
        out = cli(shards, *args)
        assert out.returncode == 2, (args, out.stderr)
    for args in (["status", "--run", real], ["pause", "--run", real], ["resume", "--run", real],
                 ["status", "--run", real, "--targets", "fo_b"]):
        out = cli(shards, *args)
        assert out.returncode == 3 and "no job of run" in out.stderr, (args, out.stderr)
    assert counts(shards) == {"fo_a": 0, "fo_b": 0, "fo_c": 0}
    for n, (_, e) in shards.items():
        assert scalar(e, "SELECT count(*) FROM items") == ROWS, n


def test_status_pause_resume_and_a_sigkilled_pool_over_a_run(shards, tmp_path):
    """A run over three targets served by one pool: status --run shows it; pause --run holds every target's
    job (no row moves while paused); set --run reaches each; resume --run, a SIGKILL of the pool mid-run
    and a restart end with every target's data exact."""
    for n in NAMES:
        make_items(shards[n][1], ROWS)
    # 60 batches a target, 0.4 s each: minutes of work for a pool of 2 on a slow machine, so the pause lands mid-run
    out = cli(shards, *enqueue_args(tmp_path, 0.4), "--targets", "fo_*", check=True)
    run_id = out.stdout.strip()
    pool_args = ("--targets", ",".join(NAMES), "-c", "2", "--lease", "2", "--poll", "0.2", "--slice-quantum", "0.5")
    with pool_starter(shards["fo_a"][0], tmp_path, env_of(shards)) as start:
        pool = start(*pool_args)  # no --drain: it would exit once the whole run is paused
        wait_for(lambda: all(v >= 20 for v in logged(shards).values()), timeout=120, what="every target under way")
        out = cli(shards, "status", "--run", run_id, check=True)
        lines = out.stdout.splitlines()
        assert lines[0].startswith(f"run {run_id}: running") and f"/{3 * ROWS} rows" in lines[0], out.stdout
        assert [ln.split()[0] for ln in lines[1:]] == list(NAMES)
        doc = json.loads(cli(shards, "status", "--run", run_id, "--json", check=True).stdout)
        assert doc["jobs"] == 3 and doc["total_estimate"] == 3 * ROWS and doc["processed_count"] > 0
        assert [t["target"] for t in doc["targets"]] == list(NAMES)

        out = cli(shards, "pause", "--run", run_id, "--reason", "fan-out test", "--by", "fanout-test", check=True)
        assert [ln.split()[1].rstrip(":") for ln in out.stdout.splitlines()] == list(NAMES)
        assert all(ln.endswith("paused") for ln in out.stdout.splitlines())
        wait_for(lambda: statuses(shards) == dict.fromkeys(NAMES, "paused"), what="every target paused")
        time.sleep(1.5)  # a batch in flight at the pause commits; none starts after it
        held = logged(shards)
        time.sleep(3)
        assert logged(shards) == held, "rows moved while the run was paused"
        assert all(v < ROWS for v in held.values())
        for n, (_, e) in shards.items():
            assert scalar(e, "SELECT count(*) FROM tidegate_audit WHERE action = 'pause' AND actor = 'fanout-test'"
                             " AND details->>'reason' = 'fan-out test'") == 1, n
        out = cli(shards, "pause", "--run", run_id)  # already paused everywhere: wrong state, exit 4
        assert out.returncode == 4 and out.stderr.count("error: cannot pause") == 3

        out = cli(shards, "set", "--run", run_id, "--concurrency", "1", "--by", "fanout-test", check=True)
        assert len(out.stdout.splitlines()) == 3
        for n, (_, e) in shards.items():
            assert scalar(e, "SELECT concurrency FROM backfill_jobs WHERE planned") == 1, n
            assert scalar(e, "SELECT count(*) FROM tidegate_audit WHERE action = 'set'"
                             " AND actor = 'fanout-test'") == 1, n

        cli(shards, "resume", "--run", run_id, check=True)
        wait_for(lambda: sum(logged(shards).values()) >= sum(held.values()) + 100, timeout=120, what="rows after resume")
        pool.kill()  # SIGKILL the pool and its workers mid-run
        assert sum(logged(shards).values()) < 3 * ROWS
        out = cli(shards, "status", "--run", run_id, check=True)
        assert "running" in out.stdout.splitlines()[0] or "pending" in out.stdout.splitlines()[0]
        again = start(*pool_args, "--drain")
        assert again.wait(300) == 0, again.output()
    assert statuses(shards) == dict.fromkeys(NAMES, "done")
    for n, (_, e) in shards.items():
        assert exact(e), (n, log_report(e))
    out = cli(shards, "status", "--run", run_id, check=True)
    assert out.stdout.startswith(f"run {run_id}: done  {3 * ROWS}/{3 * ROWS} rows")
    out = cli(shards, "cancel", "--run", run_id)  # every job done: each refused, exit 4
    assert out.returncode == 4 and out.stderr.count("error: cannot cancel") == 3 and "none acted" in out.stderr


def test_a_target_down_is_reported_and_the_others_still_act(shards, tmp_path, pg_server):
    for n in NAMES:
        make_items(shards[n][1], ROWS)
    run_id = cli(shards, *enqueue_args(tmp_path), "--targets", "fo_*", check=True).stdout.strip()
    set_down(pg_server, shards, "fo_b", True)
    try:
        out = cli(shards, "status", "--run", run_id)
        assert out.returncode == 5, out.stderr
        lines = out.stdout.splitlines()
        assert "unreadable: fo_b" in lines[0]
        assert any(ln.split()[:2] == ["fo_b", "UNREADABLE"] for ln in lines)
        assert {ln.split()[0] for ln in lines[1:]} == set(NAMES)
        out = cli(shards, "pause", "--run", run_id, "--by", "fanout-test")
        assert out.returncode == 5, out.stderr
        assert "target fo_b: error:" in out.stderr
        assert out.stdout.count(" paused") == 2
        assert statuses({n: shards[n] for n in ("fo_a", "fo_c")}) == {"fo_a": "paused", "fo_c": "paused"}
        out = cli(shards, "set", "--run", run_id, "--concurrency", "3", "--targets", "fo_a,fo_b")
        assert out.returncode == 5 and "target fo_a:" in out.stdout and "target fo_b: error:" in out.stderr
    finally:
        set_down(pg_server, shards, "fo_b", False)
    assert statuses(shards)["fo_b"] == "pending"
    # one target's job stays reachable on its own
    ((job_b, _),) = jobs_of(shards["fo_b"][1])
    cli(shards, "pause", "--target", "fo_b", str(job_b), check=True)
    out = cli(shards, "resume", "--run", run_id, check=True)
    assert out.stdout.count(" resumed") == 3
    out = cli(shards, "cancel", "--run", run_id, "--targets", "fo_c", check=True)
    assert statuses(shards) == {"fo_a": "pending", "fo_b": "pending", "fo_c": "cancelled"}
    # a target not migrated (it looks so without its revision table): named with the command that fixes it
    with pg.admin(shards["fo_c"][0]) as conn:
        conn.execute("DROP TABLE tidegate_alembic_version")
    out = cli(shards, "status", "--run", run_id)
    assert out.returncode == 5 and "fo_c" in out.stdout and "db upgrade --target fo_c" in out.stdout, out.stdout
    out = cli(shards, "pause", "--run", run_id)
    assert out.returncode == 5 and out.stdout.count(" paused") == 2 and "db upgrade --target fo_c" in out.stderr
    out = cli(shards, *enqueue_args(tmp_path), "--targets", "fo_*", "--json")
    assert out.returncode == 5 and json.loads(out.stdout)["jobs"] == 2


def test_archive_range_fans_out_with_its_layout_file_registered_in_each_target(shards, tmp_path):
    """archive-range --apply --targets: the user's layout file is registered in each target that accepts the
    job (in the rolled-back validation, then with the insert), none in the target that refuses (no event
    store there); one pool archives exactly the selection in each."""
    from tests.conftest import ROOT
    from tests.event_stores import build

    for n in ("fo_a", "fo_b"):
        build(shards[n][1], shards[n][0], "tidegate", 90)
    want = {n: (scalar(e, "SELECT count(*) FROM es_streams WHERE type = 'venue'"),
                scalar(e, "SELECT count(*) FROM es_events e JOIN es_streams s ON s.id = e.stream_id"
                          " WHERE s.type = 'venue'")) for n, (_, e) in shards.items() if n != "fo_c"}
    with shards["fo_c"][1].begin() as conn:  # fo_c: no event store at all
        conn.execute(text("DROP TABLE IF EXISTS es_events, es_streams, es_stream_summaries CASCADE"))
    layout = tmp_path / "ours.toml"
    layout.write_text((ROOT / "jobs/archive/layouts/tidegate.toml").read_text()
                      .replace('name = "tidegate"', 'name = "ours"'))
    args = ["enqueue", "archive-range", "--layout", str(layout), "--type", "venue", "--reason", "r", "--owner", "o",
            "--targets", "fo_*"]
    out = cli(shards, *args)  # no --apply: a dry run is one database's
    assert out.returncode == 2 and "--apply" in out.stderr
    out = cli(shards, *args, "--apply", "--all", "--yes")
    assert out.returncode == 2, out.stderr
    run_id = out.stdout.strip()
    assert "target fo_c: refused:" in out.stderr
    assert counts(shards) == {"fo_a": 1, "fo_b": 1, "fo_c": 0}
    for n in ("fo_a", "fo_b"):
        assert scalar(shards[n][1], "SELECT count(*) FROM archive_layouts WHERE name = 'ours'") == 1, n
    assert scalar(shards["fo_c"][1], "SELECT count(*) FROM archive_layouts") == 0
    pool = run_cli(shards["fo_a"][0], "worker", "--targets", "fo_a,fo_b", "-c", "2", "--drain", "--poll", "0.2",
                   env=env_of(shards), timeout=300)
    assert pool.returncode == 0
    for n in ("fo_a", "fo_b"):
        e = shards[n][1]
        assert scalar(e, "SELECT count(*) FROM archive_audit WHERE action = 'archive'") == want[n][0] > 0, n
        assert scalar(e, "SELECT count(*) FROM es_events_archive") == want[n][1] > 0, n
        assert scalar(e, "SELECT count(*) FROM es_events e JOIN es_streams s ON s.id = e.stream_id"
                         " WHERE s.type = 'venue'") == 0, n
    out = cli(shards, "status", "--run", run_id, "--targets", "fo_a,fo_b", check=True)
    assert out.stdout.startswith(f"run {run_id}: done")
