"""Archive safety with real processes: SIGKILL mid-run tears no stream and the rest finishes; appends
racing the archive lose no event; the guard refuses or redirects appends to archived streams; hostile
names in a layout and hostile values in --where are refused or bound, never executed."""

from __future__ import annotations

import itertools
import json
import random
import signal
import threading
import time
from importlib import resources

import psycopg
import pytest
from sqlalchemy import text

from tests.conftest import job_row, run_cli, scalar, wait_for
from tests.event_stores import build
from tidegate.jobs.archive import layouts
from tidegate.worker.errors import InvalidInput

pytestmark = pytest.mark.slow

TORN = ("SELECT count(*) FROM es_streams s WHERE EXISTS (SELECT 1 FROM es_events e WHERE e.stream_id = s.id)"
        " AND EXISTS (SELECT 1 FROM es_events_archive a WHERE a.stream_id = s.id)")
LEFT_BEHIND = ("SELECT count(*) FROM es_events e JOIN es_streams s ON s.id = e.stream_id"
               " WHERE s.archived_at IS NOT NULL")
SELECTED = "SELECT count(*) FROM es_streams WHERE type <> 'user'"


def archive(url: str, *extra: str, batch_size: int = 25, concurrency: int = 3) -> str:
    return run_cli(url, "enqueue", "archive-range", "--layout", "tidegate", "--where", "type != user",
                   "--batch-size", str(batch_size), "--concurrency", str(concurrency), "--reason", "test",
                   "--owner", "tests", "--apply", "--all", "--yes", *extra).stdout.strip()


def kill_storm(engine, db_url, pools, streams: int, kills: int, seed: int,  # type: ignore[no-untyped-def]
               pool_url: str | None = None) -> None:
    """Archive on a pool of 3 (through ``pool_url`` if given, e.g. a PgBouncer) while random workers are
    SIGKILLed; no stream is ever torn, the run finishes, nothing is repeated or lost."""
    build(engine, db_url, "tidegate", streams)
    selected = scalar(engine, SELECTED)
    events = scalar(engine, "SELECT count(*) FROM es_events")
    job = archive(db_url)
    pool = pools("--concurrency", "3", "--lease", "2", "--poll", "0.2", url=pool_url)
    rng = random.Random(seed)
    killed = 0
    while killed < kills and job_row(engine, job).status != "done":
        time.sleep(rng.uniform(0.1, 0.6))
        workers = pool.workers()
        if workers:
            rng.choice(workers).send_signal(signal.SIGKILL)
            killed += 1
        assert scalar(engine, TORN) == 0  # never, at any moment
    assert killed >= 1  # a storm that found the job done already proves nothing
    wait_for(lambda: job_row(engine, job).status == "done", timeout=300, what="archive job done")
    assert pool.terminate() == 0
    assert scalar(engine, TORN) == 0
    assert scalar(engine, LEFT_BEHIND) == 0
    assert scalar(engine, "SELECT count(*) FROM es_streams WHERE type <> 'user' AND archived_at IS NULL") == 0
    assert scalar(engine, "SELECT count(*) FROM es_streams WHERE type = 'user' AND archived_at IS NOT NULL") == 0
    # nothing repeated: one audit row per stream, events counted once, none lost
    assert scalar(engine, "SELECT count(*) FROM archive_audit WHERE job_id = :j", j=job) == selected
    assert scalar(engine, "SELECT count(DISTINCT stream_id) FROM archive_audit WHERE job_id = :j", j=job) == selected
    archived = scalar(engine, "SELECT count(*) FROM es_events_archive")
    assert scalar(engine, "SELECT sum(events) FROM archive_audit WHERE job_id = :j", j=job) == archived
    assert archived + scalar(engine, "SELECT count(*) FROM es_events") == events
    assert job_row(engine, job).processed_count == selected


def test_sigkill_mid_archive_tears_no_stream_and_the_rerun_finishes(engine, db_url, pools):
    kill_storm(engine, db_url, pools, streams=3000, kills=3, seed=11)


VERSIONS = itertools.count(10_000)  # naive appenders: globally unique versions, so no unique-key clash


def _appender(url: str, ids: list[str], stop: threading.Event, acked: list, refused: list, locking: bool) -> None:
    rng = random.Random(threading.get_ident())
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            sid = rng.choice(ids)
            try:
                with conn.transaction():
                    if locking:  # the stream-row protocol (Marten's version bump): lock, check, append
                        row = conn.execute("SELECT version, archived_at FROM es_streams WHERE id = %s FOR UPDATE",
                                           (sid,)).fetchone()
                        if row[1] is not None:
                            refused.append(sid)
                            continue
                        version = row[0] + 1
                        conn.execute("UPDATE es_streams SET version = %s WHERE id = %s", (version, sid))
                    else:  # a naive appender: next version from the events, no stream lock
                        version = next(VERSIONS)
                    conn.execute("INSERT INTO es_events (stream_id, version, type, data) VALUES (%s, %s, 'appended',"
                                 " '{}')", (sid, version))
                acked.append((sid, version))
            except psycopg.errors.RaiseException as err:
                assert "is archived" in str(err)
                refused.append(sid)


@pytest.mark.parametrize("guard", ["none", "reject", "redirect"])
def test_appends_racing_the_archive_lose_no_event(engine, db_url, pools, guard):
    build(engine, db_url, "tidegate", 1200)
    if guard != "none":
        run_cli(db_url, "archive", "guard", "--layout", "tidegate", "--mode", guard)
    with engine.connect() as conn:
        ids = [str(r) for r in conn.execute(text("SELECT id FROM es_streams WHERE type <> 'user'")).scalars()]
    stop, acked, refused = threading.Event(), [], []
    threads = [threading.Thread(target=_appender, args=(db_url, ids, stop, acked, refused, guard == "none"))
               for _ in range(3)]
    for t in threads:
        t.start()
    job = archive(db_url, batch_size=10)
    pool = pools("--concurrency", "2", "--poll", "0.2")
    wait_for(lambda: job_row(engine, job).status == "done", timeout=120, what="archive job done")
    time.sleep(0.3)  # appends after the archive too
    stop.set()
    for t in threads:
        t.join(10)
    assert pool.terminate() == 0
    assert len(acked) > 0
    with engine.connect() as conn:
        found = {(str(r[0]), int(r[1])) for r in conn.execute(text(
            "SELECT stream_id, version FROM es_events WHERE type = 'appended' UNION ALL"
            " SELECT stream_id, version FROM es_events_archive WHERE type = 'appended'"))}
    assert set(acked) == found  # every acknowledged append is stored, once (versions are unique per stream)
    assert scalar(engine, LEFT_BEHIND) == 0  # none sits in the hot table of an archived stream
    assert scalar(engine, TORN) == 0
    if guard == "redirect":
        assert not refused


WAITING_FOR_LOCK = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'")


def test_an_append_in_flight_holding_only_its_foreign_key_lock_is_moved_with_its_stream(engine, db_url, pools):
    """README, "Concurrent appends": an appender whose one lock on the stream row is its foreign key's KEY SHARE
    (no guard installed, no stream-row lock), in flight when the batch comes. The batch's FOR UPDATE waits for
    it, and the event then moves with its stream. A batch that took only NO KEY UPDATE (a plain UPDATE of the
    marks, which KEY SHARE does not block) would finish without waiting and leave the event in the hot table."""
    build(engine, db_url, "tidegate", 60)  # es_events.stream_id REFERENCES es_streams (id)
    sid = scalar(engine, "SELECT id::text FROM es_streams WHERE type <> 'user' ORDER BY id LIMIT 1")
    with psycopg.connect(db_url) as app:
        app.execute("INSERT INTO es_events (stream_id, version, type, data) VALUES (%s, 999999, 'appended', '{}')",
                    (sid,))  # uncommitted: the foreign key check holds KEY SHARE on the stream row
        job = archive(db_url, "--force", "--stream", sid, batch_size=1000, concurrency=1)
        pool = pools("--concurrency", "1", "--poll", "0.2")
        wait_for(lambda: scalar(engine, WAITING_FOR_LOCK) > 0 or job_row(engine, job).status == "done",
                 timeout=120, what="the batch waiting for the appender (or the job done without waiting)")
        done_without_waiting = job_row(engine, job).status == "done"
        app.commit()
    wait_for(lambda: job_row(engine, job).status == "done", timeout=120, what="archive job done")
    assert pool.terminate() == 0
    assert not done_without_waiting
    assert scalar(engine, "SELECT archived_at IS NOT NULL FROM es_streams WHERE id = CAST(:s AS uuid)", s=sid)
    assert scalar(engine, "SELECT count(*) FROM es_events_archive WHERE type = 'appended'") == 1
    assert scalar(engine, LEFT_BEHIND) == 0


@pytest.mark.parametrize("layout", ["tidegate", "marten"])
def test_guard_reject_redirect_off(engine, db_url, layout):
    build(engine, db_url, layout, 30)
    streams = "es_streams" if layout == "tidegate" else "mt_streams"
    sid = scalar(engine, f"SELECT id FROM {streams} ORDER BY id LIMIT 1")
    run_cli(db_url, "enqueue", "archive-range", "--layout", layout, "--stream", str(sid), "--reason", "r",
            "--owner", "o", "--apply", "--all", "--yes")
    run_cli(db_url, "worker", "--drain", "--poll", "0.2")
    append = {"tidegate": "INSERT INTO es_events (stream_id, version, type) VALUES (:s, 99, 'late')",
              "marten": "INSERT INTO mt_events (id, stream_id, version, data, type) VALUES (gen_random_uuid(), :s, 99,"
                        " '{}', 'late')"}[layout]
    hot = {"tidegate": "es_events", "marten": "mt_events_default"}[layout]
    cold = {"tidegate": "es_events_archive", "marten": "mt_events_archived"}[layout]

    run_cli(db_url, "archive", "guard", "--layout", layout, "--mode", "reject")
    with pytest.raises(Exception, match="is archived: append refused"), engine.begin() as conn:
        conn.execute(text(append), {"s": sid})
    run_cli(db_url, "archive", "guard", "--layout", layout, "--mode", "redirect")
    before = scalar(engine, f"SELECT count(*) FROM {cold} WHERE stream_id = :s", s=sid)
    with engine.begin() as conn:
        conn.execute(text(append), {"s": sid})
    assert scalar(engine, f"SELECT count(*) FROM {cold} WHERE stream_id = :s", s=sid) == before + 1
    assert scalar(engine, f"SELECT count(*) FROM {hot} WHERE stream_id = :s", s=sid) == 0
    run_cli(db_url, "archive", "guard", "--layout", layout, "--mode", "off")
    with engine.begin() as conn:
        conn.execute(text(append.replace("99", "98")), {"s": sid})
    assert scalar(engine, f"SELECT count(*) FROM {hot} WHERE stream_id = :s", s=sid) == 1
    assert scalar(engine, "SELECT count(*) FROM pg_trigger WHERE tgname = 'tidegate_archive_guard'") == 0


HOSTILE_NAMES = ['es_streams"; DROP TABLE es_events; --', "es_streams; DROP TABLE es_events",
                 "es_events_archive' OR '1'='1", "pg_catalog.pg_class\x00"]


def test_hostile_layout_names_are_refused_and_hostile_values_bound(engine, db_url, tmp_path):
    build(engine, db_url, "tidegate", 60)
    events = scalar(engine, "SELECT count(*) FROM es_events")
    shipped = resources.files("tidegate.jobs.archive").joinpath("layouts/tidegate.toml").read_text()
    for n, name in enumerate(HOSTILE_NAMES):
        for field in ('table = "es_streams"', 'key = "id"', 'archive_table = "es_events_archive"'):
            path = tmp_path / f"hostile-{n}-{field[:3]}.toml"
            path.write_text(shipped.replace(field, field.split(" = ")[0] + " = " + json.dumps(name), 1))
            with pytest.raises(InvalidInput), engine.connect() as conn:  # in process: every name, every place
                layouts.resolve(conn, layouts.read_file(str(path)).spec)
    path = tmp_path / "hostile-0-tab.toml"
    for args in (["discover", "--layout", str(path)], ["archive", "guard", "--layout", str(path), "--mode", "reject"],
                 ["enqueue", "archive-range", "--layout", str(path), "--reason", "r", "--owner", "o", "--apply", "--all",
                  "--yes"]):
        proc = run_cli(db_url, *args, check=False)  # and through the real commands
        assert proc.returncode == 2 and "does not exist" in proc.stderr, proc.stdout + proc.stderr
    # hostile values: bound, so they select nothing and execute nothing
    for value in ["x'; DROP TABLE es_events; --", "LuckBox' OR '1'='1", "\\'; SELECT pg_sleep(5); --",
                  "'a') OR (1=1"]:
        out = run_cli(db_url, "discover", "--layout", "tidegate", "--where", f"DataSource={value}", "--json")
        assert json.loads(out.stdout)["totals"]["streams"] == 0
        out = run_cli(db_url, "discover", "--layout", "tidegate", "--where", f"DataSource!={value}", "--json")
        assert json.loads(out.stdout)["totals"]["streams"] == 60
    for where in ["Data;Source=1", "x; DROP TABLE es_events --= 1", "version ~ 1"]:
        proc = run_cli(db_url, "discover", "--layout", "tidegate", "--where", where, check=False)
        assert proc.returncode == 2, where
    # a value that does not fit the column type is an input error, not a crash
    proc = run_cli(db_url, "discover", "--layout", "tidegate", "--where", "version >= 1; DROP TABLE es_events",
                   check=False)
    assert proc.returncode == 2 and "selection" in proc.stderr
    with engine.begin() as conn:  # and by SQL: a hostile field in the payload fails the job, runs nothing
        conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('archive_range', CAST(:p AS jsonb))"),
                     {"p": json.dumps({"layout": "tidegate", "owner": "o",
                                       "where": [{"field": "a'); DROP TABLE es_events; --", "op": "=",
                                                  "value": "1"}]})})
    run_cli(db_url, "worker", "--drain", "--poll", "0.2")
    assert scalar(engine, "SELECT status FROM queue_jobs") == "failed"
    assert scalar(engine, "SELECT count(*) FROM es_events") == events
    assert scalar(engine, "SELECT count(*) FROM es_streams WHERE archived_at IS NOT NULL") == 0
