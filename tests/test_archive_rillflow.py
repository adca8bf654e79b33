"""Seed 004 (Rillflow's hot/cold archive) end to end on its partitioned backend: events LIST-partitioned
on retention_class, monthly RANGE partitions under each value (tests/event_stores.py).

The seed's workflow: partitions created ahead, the redirect guard on, streams marked archived
(--mark-only: appends go cold, events stay), their events moved later (--move-marked), reactivated
(hot writes resume), exhausted partitions dropped only when empty. Each phase is an ordinary job: a
SIGKILL storm mid-move and a pause/resume end exactly where a clean run ends (compared row for row
in every partition against a clean run on a second database)."""

from __future__ import annotations

import json
import random
import signal
import time

import pytest
from sqlalchemy import text

from tests import pg
from tests.conftest import ROOT, job_row, run_cli, scalar, wait_for
from tests.event_stores import build, fingerprint

pytestmark = pytest.mark.slow

LAYOUT = ["--layout", "rillflow_partitioned"]
# the seed's smoke test, on a whole entity: closed orders whose last activity is before mid-February
SELECT = ["--type", "order", "--before", "2024-02-15T00:00:00Z"]
SELECTED = "SELECT count(*) FROM rf_streams WHERE aggregate_type = 'order' AND updated_at < '2024-02-15Z'"
# a stream torn between the tiers: events in both partition trees (never, outside a redirected append)
TORN = "SELECT count(*) FROM (SELECT stream_id FROM events GROUP BY 1 HAVING count(DISTINCT retention_class) > 1) t"
HOT_OF_MARKED = ("SELECT count(*) FROM events_hot e JOIN rf_streams s USING (stream_id)"
                 " WHERE s.archived_at IS NOT NULL")
PARTITIONS = "SELECT string_agg(relid::text, ',' ORDER BY relid::text) FROM pg_partition_tree('events')"


def drain(url: str) -> None:
    run_cli(url, "worker", "--concurrency", "2", "--drain", "--poll", "0.2", timeout=300)


def enqueue(url: str, *args: str) -> str:
    return run_cli(url, "enqueue", *args, "--owner", "ops", "--apply", "--all", "--yes").stdout.strip()


def partition(url: str, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
    return run_cli(url, "archive", "partition", *args, check=check)


def test_seed_004_workflow_on_the_partitioned_backend(engine, db_url):
    build(engine, db_url, "rillflow_partitioned", 600)
    selected = scalar(engine, SELECTED)
    events = scalar(engine, "SELECT count(*) FROM events")
    assert 0 < selected < 600
    before = fingerprint(engine, "rillflow_partitioned")

    # status of a partitioned table: the leaves summed (it said "0.0 MiB, ~0 rows"), each partition, the guard
    status = json.loads(run_cli(db_url, "archive", "status", *LAYOUT, "--json").stdout)
    assert status["tables"]["events"]["rows_estimate"] == events and status["tables"]["events"]["bytes"] > 0
    shown = {p["partition"]: p for p in status["partitions"]}
    assert shown["events_hot"]["rows_estimate"] == events and shown["events_cold"]["rows_estimate"] == 0
    assert shown["events_hot_2024_01"]["level"] == 2 and shown["events_hot_default"]["bound"] == "DEFAULT"
    assert sum(p["rows_estimate"] for p in status["partitions"] if p["leaf"]) == events
    assert status["guard"] == "off"

    # partition maintenance: create ahead, idempotent
    out = partition(db_url, "--retention", "cold", "--month", "2025-01-01").stdout
    assert "events_cold_2025_01" in out and "created" in out
    assert "exists" in partition(db_url, "--retention", "cold", "--month", "2025-01-01").stdout
    assert "created" in partition(db_url, "--retention", "hot", "--month", "2025-01-01").stdout
    assert scalar(engine, "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'events_cold_2025_01'"
                  ) == "FOR VALUES FROM ('2025-01-01 00:00:00+00') TO ('2025-02-01 00:00:00+00')"
    assert scalar(engine, "SELECT count(*) FROM tidegate_audit WHERE action = 'archive_partition_create'") == 2

    run_cli(db_url, "archive", "guard", *LAYOUT, "--mode", "redirect")
    status = json.loads(run_cli(db_url, "archive", "status", *LAYOUT, "--json").stdout)
    assert status["guard"] == "redirect"
    assert "archive guard on rillflow_partitioned's events table: redirect" in run_cli(
        db_url, "archive", "status", *LAYOUT).stdout

    # phase 1: mark only. The streams are archived (cold), their events have not moved
    mark = enqueue(db_url, "archive-range", *LAYOUT, *SELECT, "--mark-only", "--reason", "customer closed account",
                   "--batch-size", "25")
    drain(db_url)
    assert job_row(engine, mark).status == "done"
    assert scalar(engine, "SELECT count(*) FROM rf_streams WHERE archived_at IS NOT NULL AND retention_class = 'cold'"
                          " AND archive_reason = 'customer closed account' AND archived_by = 'ops'") == selected
    assert scalar(engine, "SELECT count(*) FROM events_cold") == 0
    assert scalar(engine, "SELECT count(*) FROM archive_audit WHERE job_id = :j AND action = 'archive'"
                          " AND events = 0", j=mark) == selected
    marked_at = scalar(engine, "SELECT max(archived_at) FROM rf_streams")

    # hot writes of a marked stream are redirected to the cold partitions; other streams stay hot
    cold_sid = scalar(engine, "SELECT stream_id FROM rf_streams WHERE archived_at IS NOT NULL ORDER BY stream_id LIMIT 1")
    hot_sid = scalar(engine, "SELECT stream_id FROM rf_streams WHERE archived_at IS NULL ORDER BY stream_id LIMIT 1")
    with engine.begin() as conn:
        for sid in (cold_sid, hot_sid):
            conn.execute(text("INSERT INTO events (stream_id, stream_seq, event_type, body, created_at)"
                              " VALUES (:s, 99, 'late', '{}', '2024-01-20Z')"), {"s": sid})
    assert scalar(engine, "SELECT tableoid::regclass::text FROM events WHERE stream_id = :s AND stream_seq = 99",
                  s=cold_sid) == "events_cold_2024_01"
    assert scalar(engine, "SELECT tableoid::regclass::text FROM events WHERE stream_id = :s AND stream_seq = 99",
                  s=hot_sid) == "events_hot_2024_01"

    # phase 2: move the marked streams' events (rows change partition); marks are left as they were
    dry = run_cli(db_url, "enqueue", "archive-range", *LAYOUT, "--move-marked", "--owner", "ops")
    assert f"would archive {selected:,} stream(s)" in dry.stdout
    move = enqueue(db_url, "archive-range", *LAYOUT, "--move-marked", "--batch-size", "20", "--concurrency", "2")
    drain(db_url)
    assert job_row(engine, move).status == "done"
    assert scalar(engine, HOT_OF_MARKED) == 0
    assert scalar(engine, "SELECT count(*) FROM events_hot e JOIN rf_streams s USING (stream_id)"
                          " WHERE s.archived_at IS NULL") == events + 2 - scalar(engine, "SELECT count(*) FROM events_cold")
    moved = scalar(engine, "SELECT sum(events) FROM archive_audit WHERE job_id = :j", j=move)
    assert moved == scalar(engine, "SELECT count(*) FROM events_cold") - 1  # all but the redirected append
    assert scalar(engine, "SELECT max(archived_at) FROM rf_streams") == marked_at
    assert scalar(engine, "SELECT count(*) FROM events_cold_2024_01") > 0
    assert scalar(engine, TORN) == 0
    report = json.loads(run_cli(db_url, "archive", "report", move, "--json").stdout)
    assert (report["archived"], report["events_moved"], report["remaining_candidates"]) == (selected, moved, 0)
    status = json.loads(run_cli(db_url, "archive", "status", *LAYOUT, "--json").stdout)
    assert sum(r["archived_streams"] for r in status["by_type"]) == selected

    # an exhausted partition goes only when empty: a month with rows is refused, nothing changed
    partitions = scalar(engine, PARTITIONS)
    full = fingerprint(engine, "rillflow_partitioned")
    for args in (["--retention", "hot", "--month", "2024-01-01", "--drop"],
                 ["--retention", "cold", "--month", "2024-01-01", "--detach"]):
        refused = partition(db_url, *args, check=False)
        assert refused.returncode == 4 and "is not empty" in refused.stderr and "nothing changed" in refused.stderr
    # the default partition holds March's rows: creating March is refused by the server, exit 4
    refused = partition(db_url, "--retention", "hot", "--month", "2024-03-01", check=False)
    assert refused.returncode == 4 and "default partition" in refused.stderr
    assert scalar(engine, PARTITIONS) == partitions and fingerprint(engine, "rillflow_partitioned") == full
    assert "detached" in partition(db_url, "--retention", "hot", "--month", "2025-01-01", "--detach").stdout
    assert "dropped" in partition(db_url, "--retention", "cold", "--month", "2025-01-01", "--drop").stdout
    assert scalar(engine, "SELECT to_regclass('events_cold_2025_01') IS NULL")
    assert scalar(engine, "SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass('events_hot_2025_01')") == 0

    # reactivate (unarchive) undoes both phases: the appended events come back hot too
    back = enqueue(db_url, "reactivate", *LAYOUT, "--from-audit", mark, "--batch-size", "30")
    drain(db_url)
    assert scalar(engine, "SELECT type FROM queue_jobs WHERE id = :j", j=back) == "unarchive_range"
    assert scalar(engine, "SELECT tableoid::regclass::text FROM events WHERE stream_id = :s AND stream_seq = 99",
                  s=cold_sid) == "events_hot_2024_01"
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM events WHERE event_type = 'late'"))
    assert fingerprint(engine, "rillflow_partitioned") == before


def test_reactivating_a_mark_only_job_clears_the_marks_and_moves_nothing(engine, db_url):
    build(engine, db_url, "rillflow_partitioned", 120)
    before = fingerprint(engine, "rillflow_partitioned")
    mark = enqueue(db_url, "archive-range", *LAYOUT, "--type", "cart", "--mark-only", "--reason", "r")
    drain(db_url)
    assert scalar(engine, "SELECT count(*) FROM rf_streams WHERE retention_class = 'cold'") == 60
    enqueue(db_url, "unarchive-range", *LAYOUT, "--from-audit", mark)
    drain(db_url)
    assert fingerprint(engine, "rillflow_partitioned") == before


def test_bad_partition_input_is_refused_and_changes_nothing(engine, db_url, tmp_path):
    build(engine, db_url, "rillflow_partitioned", 30)
    partitions = scalar(engine, PARTITIONS)
    for args, why in (
        (["--retention", "hot", "--month", "2025-01-15"], "not the first of a month"),
        (["--retention", "hot", "--month", "2025-02-30"], "expected a date"),
        (["--retention", "hot", "--month", "2025-01"], "expected a date"),
        (["--retention", "hot", "--month", "9999-12-01"], "no month after it"),
        (["--retention", "hot", "--month", "x" * 5000], "expected a date"),
        (["--retention", "warm", "--month", "2025-01-01"], "knows 'hot' and 'cold'"),
        (["--retention", "hot'); DROP TABLE events; --", "--month", "2025-01-01"], "lower-case word"),
        (["--retention", 'cold"; DROP TABLE events; --', "--month", "2025-01-01"], "lower-case word"),
        (["--retention", "HOT", "--month", "2025-01-01"], "lower-case word"),
        (["--retention", "hot\x01", "--month", "2025-01-01"], "lower-case word"),
        (["--retention", "hot", "--month", "2025-01-01", "--layout", "marten"], "does not exist"),
    ):
        proc = partition(db_url, *args, check=False)
        assert proc.returncode == 2 and why in proc.stderr, (args, proc.stderr)
    missing = partition(db_url, "--retention", "hot", "--month", "2031-07-01", "--drop", check=False)
    assert missing.returncode == 4 and "no partition" in missing.stderr
    assert scalar(engine, PARTITIONS) == partitions
    assert scalar(engine, "SELECT count(*) FROM tidegate_audit WHERE action LIKE 'archive_partition%'") == 0

    # a layout whose flag values are hostile is refused before any database work; one whose flag is a
    # boolean has no partition per value
    shipped = (ROOT / "jobs/archive/layouts/rillflow_partitioned.toml").read_text()
    path = tmp_path / "mine.toml"
    for value in ["cold'; DROP TABLE events; --", "Cold", "c" * 17, "", "hot"]:
        path.write_text(shipped.replace('archived_value = "cold"', "archived_value = " + json.dumps(value)))
        proc = partition(db_url, "--layout", str(path), "--retention", "hot", "--month", "2025-01-01", check=False)
        assert proc.returncode == 2 and "archived_value" in proc.stderr, (value, proc.stderr)
    path.write_text("\n".join(line for line in shipped.splitlines() if not line.endswith(('_value = "cold"',
                                                                                           '_value = "hot"'))))
    proc = partition(db_url, "--layout", str(path), "--retention", "hot", "--month", "2025-01-01", check=False)
    assert proc.returncode == 2 and "not a value" in proc.stderr, proc.stderr
    assert scalar(engine, PARTITIONS) == partitions
    # a move-only payload by SQL: a phase that does not exist fails the job and moves nothing
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('archive_range', CAST(:p AS jsonb))"),
                     {"p": json.dumps({"layout": "rillflow_partitioned", "owner": "o", "phase": "drop partition"})})
    drain(db_url)
    assert scalar(engine, "SELECT status FROM queue_jobs") == "failed"
    assert scalar(engine, "SELECT count(*) FROM rf_streams WHERE archived_at IS NOT NULL") == 0
    both = run_cli(db_url, "enqueue", "archive-range", *LAYOUT, "--mark-only", "--move-marked", "--reason", "r",
                   "--owner", "o", check=False)
    assert both.returncode == 2 and "one at a time" in both.stderr


# -- the move phase under SIGKILL and pause, compared to a clean run ------------------------------------

STREAMS = 3000


def _marked(engine, url: str) -> None:  # type: ignore[no-untyped-def]
    build(engine, url, "rillflow_partitioned", STREAMS)
    enqueue(url, "archive-range", *LAYOUT, "--type", "order", "--mark-only", "--reason", "closed",
            "--batch-size", "500")
    drain(url)


def _move(url: str) -> str:
    return enqueue(url, "archive-range", *LAYOUT, "--move-marked", "--batch-size", "10", "--concurrency", "2",
                   "--max-rows-per-second", "150")


def test_sigkill_and_pause_mid_move_end_exactly_as_a_clean_run(engine, db_url, pools, pg_server, template):
    with pg.cloned(pg_server, template) as (clean_url, clean):
        _marked(clean, clean_url)
        clean_job = _move(clean_url)
        drain(clean_url)
        assert job_row(clean, clean_job).status == "done"
        want = fingerprint(clean, "rillflow_partitioned", without=("archived_at",))
        want_audit = scalar(clean, "SELECT sum(events) FROM archive_audit WHERE job_id = :j", j=clean_job)

    _marked(engine, db_url)
    marked = scalar(engine, "SELECT count(*) FROM rf_streams WHERE archived_at IS NOT NULL")
    assert marked == STREAMS // 2 and scalar(engine, "SELECT count(*) FROM events_cold") == 0
    job = _move(db_url)
    pool = pools("--concurrency", "2", "--lease", "2", "--poll", "0.2")
    wait_for(lambda: job_row(engine, job).processed_count >= 100, timeout=120, what="progress")

    # pause: no batch starts, nothing moves; resume goes on from the checkpoint
    run_cli(db_url, "pause", job)
    wait_for(lambda: scalar(engine, "SELECT count(*) FROM backfill_slices WHERE job_id = :j AND locked_by IS NOT NULL",
                            j=job) == 0, what="workers to let go of the paused job")
    held = (job_row(engine, job).processed_count, scalar(engine, "SELECT count(*) FROM events_cold"))
    time.sleep(1.5)  # several poll intervals
    assert (job_row(engine, job).processed_count, scalar(engine, "SELECT count(*) FROM events_cold")) == held
    assert 0 < held[0] < marked and scalar(engine, TORN) == 0
    run_cli(db_url, "resume", job)

    rng = random.Random(4)
    killed = 0
    while killed < 3 and job_row(engine, job).status != "done":
        time.sleep(rng.uniform(0.3, 0.8))
        workers = pool.workers()
        if workers:
            rng.choice(workers).send_signal(signal.SIGKILL)
            killed += 1
        assert scalar(engine, TORN) == 0  # a killed batch rolled back whole: no stream half moved
    assert killed >= 1
    wait_for(lambda: job_row(engine, job).status == "done", timeout=300, what="move job done")
    assert pool.terminate() == 0

    assert fingerprint(engine, "rillflow_partitioned", without=("archived_at",)) == want
    assert scalar(engine, HOT_OF_MARKED) == 0 and scalar(engine, TORN) == 0
    # nothing repeated: one audit row per stream, each event counted once
    assert scalar(engine, "SELECT count(*) FROM archive_audit WHERE job_id = :j", j=job) == marked
    assert scalar(engine, "SELECT count(DISTINCT stream_id) FROM archive_audit WHERE job_id = :j", j=job) == marked
    assert scalar(engine, "SELECT sum(events) FROM archive_audit WHERE job_id = :j", j=job) == want_audit
    assert want_audit == scalar(engine, "SELECT count(*) FROM events_cold")


def test_partition_maintenance_in_a_tenant_schema(engine, db_url):
    """--schema on `archive partition`, as on every archive command: the month's partition goes under the
    tenant schema's own tree, the public one is untouched; a schema that does not exist is exit 2."""
    build(engine, db_url, "rillflow_partitioned", 20, schema="tenant_a")
    build(engine, db_url, "rillflow_partitioned", 20)
    public = scalar(engine, PARTITIONS)
    made = partition(db_url, "--schema", "tenant_a", "--retention", "cold", "--month", "2025-03-01")
    assert "events_cold_2025_03" in made.stdout, made.stdout
    assert scalar(engine, "SELECT to_regclass('tenant_a.events_cold_2025_03') IS NOT NULL")
    assert scalar(engine, "SELECT to_regclass('public.events_cold_2025_03') IS NULL")
    assert scalar(engine, PARTITIONS) == public
    dropped = partition(db_url, "--schema", "tenant_a", "--retention", "cold", "--month", "2025-03-01", "--drop")
    assert dropped.returncode == 0 and scalar(engine, "SELECT to_regclass('tenant_a.events_cold_2025_03') IS NULL")
    nope = partition(db_url, "--schema", "nope", "--retention", "cold", "--month", "2025-03-01", check=False)
    assert nope.returncode == 2 and "does not exist" in nope.stderr, nope.stderr
