"""archive-range / unarchive-range on each shipped layout, built the way its system builds it:
dry run writes nothing, archive moves exactly the selection (audit = tables), unarchive restores
the event store row for row (same sequence numbers and versions)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from tests.conftest import ROOT, job_row, run_cli, scalar
from tests.event_stores import build, fingerprint
from tidegate.jobs.archive.archive_range import ARCHIVE as ARCHIVE_KIND

pytestmark = pytest.mark.slow

# per layout: the CLI selection, and the same selection written independently in SQL
CASES = {
    "tidegate": (["--type", "luck_box_purchase", "--where", "DataSource!=LuckBox"],
                 "SELECT count(*) FROM es_streams s WHERE s.type = 'luck_box_purchase' AND (SELECT e.data->>'DataSource'"
                 " FROM es_events e WHERE e.stream_id = s.id ORDER BY e.seq LIMIT 1) <> 'LuckBox'"),
    "marten": (["--where", "DataSource != LuckBox", "--tenant", "*DEFAULT*"],
               "SELECT count(*) FROM mt_streams s WHERE s.tenant_id = '*DEFAULT*' AND (SELECT e.data->>'DataSource'"
               " FROM mt_events e WHERE e.stream_id = s.id ORDER BY e.seq_id LIMIT 1) <> 'LuckBox'"),
    "rillflow": (["--before", "2024-06-01T00:00:00Z", "--where", "aggregate_type in order,cart", "--tenant", "t1"],
                 "SELECT count(*) FROM rf_streams WHERE updated_at < '2024-06-01Z' AND tenant_id = 't1'"),
}
HOT = {"tidegate": "es_events", "marten": "mt_events_default", "rillflow": "events"}
ARCHIVE = {"tidegate": "es_events_archive", "marten": "mt_events_archived", "rillflow": "events_archive"}


def drain(url: str) -> str:
    proc = run_cli(url, "worker", "--concurrency", "2", "--drain", "--poll", "0.2", timeout=300)
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("layout", sorted(CASES))
def test_archive_then_unarchive_round_trips_each_layout(engine, db_url, layout):
    build(engine, db_url, layout, 600)
    selection, expected_sql = CASES[layout]
    expected = scalar(engine, expected_sql)
    assert 0 < expected < 600
    before = fingerprint(engine, layout)

    dry = run_cli(db_url, "enqueue", "archive-range", "--layout", layout, *selection, "--batch-size", "40",
                  "--reason", "duplicates", "--owner", "data-platform")
    assert f"would archive {expected:,} stream(s)" in dry.stdout
    assert "nothing was written" in dry.stderr
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 0
    assert scalar(engine, "SELECT count(*) FROM archive_candidates") == 0
    assert fingerprint(engine, layout) == before

    job = run_cli(db_url, "enqueue", "archive-range", "--layout", layout, *selection, "--batch-size", "40",
                  "--concurrency", "2", "--reason", "duplicates", "--owner", "data-platform", "--apply", "--all",
                  "--yes").stdout.strip()
    logged = drain(db_url)
    row = job_row(engine, job)
    # the run's summary, logged when the job ends
    assert f"job {job} summary: " in logged and f"archived={expected}, skipped=0" in logged
    assert "remaining_candidates=0" in logged
    assert row.status == "done" and row.total_estimate == expected and row.processed_count == expected
    archived_events = scalar(engine, f"SELECT count(*) FROM {ARCHIVE[layout]}")
    assert scalar(engine, "SELECT count(*) FROM archive_audit WHERE job_id = :j AND action = 'archive'",
                  j=job) == expected
    assert scalar(engine, "SELECT sum(events) FROM archive_audit WHERE job_id = :j", j=job) == archived_events > 0
    assert before[HOT[layout]][0] - scalar(engine, f"SELECT count(*) FROM {HOT[layout]}") == archived_events
    listed = run_cli(db_url, "status").stdout  # listed like any other job, with its streams and events moved
    assert job[:8] in listed and f"events moved {archived_events:,}" in listed
    shown = json.loads(run_cli(db_url, "status", job, "--json").stdout)
    assert shown["details"] == {"streams_archived": expected, "streams_skipped": 0, "events_moved": archived_events}
    assert shown["rows_per_second"] > 0 and shown["details_per_second"]["events_moved"] > 0
    summary = json.loads(run_cli(db_url, "archive", "report", job[:8], "--json").stdout)  # a prefix, as status shows
    assert summary["archived"] == expected and summary["skipped"] == 0 and summary["remaining_candidates"] == 0
    status = json.loads(run_cli(db_url, "archive", "status", "--layout", layout, "--json").stdout)
    assert sum(r["archived_streams"] for r in status["by_type"]) == expected
    assert sum(r["archived_events"] for r in status["by_type"]) == archived_events

    run_cli(db_url, "enqueue", "unarchive-range", "--layout", layout, "--from-audit", job[:8], "--owner", "data-platform",
            "--batch-size", "25", "--apply", "--yes")
    drain(db_url)
    assert fingerprint(engine, layout) == before  # same rows, sequence numbers, versions; marks cleared
    assert scalar(engine, "SELECT count(*) FROM archive_audit WHERE action = 'unarchive'") == expected


def test_apply_needs_the_typed_word_or_yes(engine, db_url):
    build(engine, db_url, "tidegate", 30)
    args = ["enqueue", "archive-range", "--layout", "tidegate", "--reason", "r", "--owner", "o", "--apply", "--all"]
    closed = run_cli(db_url, *args, check=False, input="")
    assert closed.returncode == 2 and "--yes" in closed.stderr
    wrong = run_cli(db_url, *args, check=False, input="archive\n")
    assert wrong.returncode == 2 and "not ARCHIVE" in wrong.stderr
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 0
    job = run_cli(db_url, *args, input="ARCHIVE\n").stdout.strip()
    assert scalar(engine, "SELECT type FROM queue_jobs WHERE id = :j", j=job) == "archive_range"


def test_cross_referenced_candidates_are_skipped_and_reported_unless_forced(engine, db_url, tmp_path):
    build(engine, db_url, "tidegate", 90)
    with engine.begin() as conn:
        target = conn.execute(text("SELECT id FROM es_streams WHERE type = 'venue' ORDER BY id LIMIT 1")).scalar()
        live = conn.execute(text("SELECT id FROM es_streams WHERE type = 'user' ORDER BY id LIMIT 1")).scalar()
        conn.execute(text("INSERT INTO es_events (stream_id, version, type, data) VALUES (:s, 100, 'linked',"
                          " jsonb_build_object('ref_stream_id', CAST(:t AS text)))"), {"s": live, "t": target})
    venues = scalar(engine, "SELECT count(*) FROM es_streams WHERE type = 'venue'")
    out = run_cli(db_url, "discover", "--layout", "tidegate", "--type", "venue", "--csv", str(tmp_path / "ids.csv"))
    assert "1 candidate(s) are referenced by live streams" in out.stdout
    assert str(target) in (tmp_path / "ids.csv").read_text()
    assert len((tmp_path / "ids.csv").read_text().splitlines()) == venues + 1
    job = run_cli(db_url, "enqueue", "archive-range", "--layout", "tidegate", "--type", "venue", "--reason", "r",
                  "--owner", "o", "--apply", "--all", "--yes").stdout.strip()
    drain(db_url)
    assert scalar(engine, "SELECT archived_at IS NULL FROM es_streams WHERE id = :t", t=target)
    assert scalar(engine, "SELECT reason FROM archive_audit WHERE job_id = :j AND action = 'skip'",
                  j=job).startswith("cross-referenced")
    summary = json.loads(run_cli(db_url, "archive", "report", job[:8], "--json").stdout)  # a prefix, as status shows
    assert (summary["archived"], summary["skipped"], summary["remaining_candidates"]) == (venues - 1, 1, 1)
    run_cli(db_url, "enqueue", "archive-range", "--layout", "tidegate", "--type", "venue", "--force",
            "--reason", "r", "--owner", "o", "--apply", "--all", "--yes")
    drain(db_url)
    assert scalar(engine, "SELECT archived_at IS NOT NULL FROM es_streams WHERE id = :t", t=target)


def test_limit_and_stream_selectors_and_sql_enqueue(engine, db_url):
    build(engine, db_url, "marten", 60)
    ids = [str(i) for i in scalar_list(engine, "SELECT id FROM mt_streams ORDER BY id LIMIT 3")]
    run_cli(db_url, "enqueue", "archive-range", "--layout", "marten", "--stream", ids[0], "--stream", ids[2],
            "--reason", "r", "--owner", "o", "--apply", "--all", "--yes")
    drain(db_url)
    with engine.begin() as conn:  # the same by SQL, as the runbook's INSERT INTO queue_jobs
        conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('archive_range', CAST(:p AS jsonb))"),
                     {"p": json.dumps({"layout": "marten", "type": "venue", "limit": 5, "batch_size": 2,
                                       "reason": "by sql", "owner": "sql"})})
    drain(db_url)
    archived = set(map(str, scalar_list(engine, "SELECT id FROM mt_streams WHERE is_archived")))
    assert {ids[0], ids[2]} <= archived
    assert (ids[1] in archived) == (scalar(engine, "SELECT type FROM mt_streams WHERE id = CAST(:i AS uuid)",
                                           i=ids[1]) == "venue")
    assert scalar(engine, "SELECT count(*) FROM archive_audit WHERE reason = 'by sql' AND action = 'archive'") == 5
    assert scalar(engine, "SELECT count(*) FROM mt_events_default e JOIN mt_streams s ON s.id = e.stream_id"
                          " WHERE s.is_archived") == 0


def test_candidates_are_numbered_in_disk_order_and_limit_keeps_the_lowest_keys(engine, db_url):
    """Batches follow the stream rows' order on disk (locality for the move), while --limit still
    selects the first streams by key."""
    build(engine, db_url, "tidegate", 60)
    with engine.begin() as conn:
        plan = ARCHIVE_KIND.plan(conn, {"layout": "tidegate", "limit": 20, "owner": "o"})
        numbered = list(conn.execute(text("SELECT stream_id FROM archive_candidates"
                                          " WHERE snapshot = CAST(:s AS uuid) ORDER BY seq"),
                                     {"s": plan.params["snapshot"]}).scalars())
        lowest = list(conn.execute(text("SELECT id::text FROM es_streams ORDER BY id LIMIT 20")).scalars())
        on_disk = list(conn.execute(text("SELECT id::text FROM es_streams WHERE id::text = ANY(:ids) ORDER BY ctid"),
                                    {"ids": lowest}).scalars())
    assert numbered == on_disk and sorted(numbered) == lowest
    assert numbered != lowest  # random uuids: disk order is not key order


def scalar_list(engine, sql: str) -> list:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return list(conn.execute(text(sql)).scalars())


@pytest.mark.parametrize("fmt", ["toml", "yaml"])
def test_a_custom_layout_file_moves_streams_events_and_read_models_and_discover_counts_them(engine, db_url,
                                                                                           tmp_path, fmt):
    import tomllib

    import yaml

    build(engine, db_url, "tidegate", 90)
    shipped = (ROOT / "jobs/archive/layouts/tidegate.toml").read_text().replace('name = "tidegate"', 'name = "ours"')
    path = tmp_path / f"ours.{fmt}"
    path.write_text(shipped if fmt == "toml" else yaml.safe_dump(tomllib.loads(shipped)))
    layout = ["--layout", str(path), "--type", "venue"]

    found = json.loads(run_cli(db_url, "discover", "--layout", str(path), "--json").stdout)
    with engine.connect() as conn:  # the report's counts per stream type, written independently
        want = {r.type: tuple(r[1:]) for r in conn.execute(text(
            "SELECT type, count(*), count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n > 1), sum(n) FROM"
            " (SELECT s.type, (SELECT count(*) FROM es_events e WHERE e.stream_id = s.id) AS n FROM es_streams s) c"
            " GROUP BY type"))}
    got = {r["stream_type"]: (r["streams"], r["create_only"], r["with_updates"], r["events"]) for r in found["by_type"]}
    assert got == want
    assert want["user"][1] == want["user"][0] and want["venue"][2] == want["venue"][0]  # both kinds occur
    venues = want["venue"][0]

    before = fingerprint(engine, "tidegate")
    job = run_cli(db_url, "enqueue", "archive-range", *layout, "--reason", "r", "--owner", "o", "--apply", "--all",
                  "--yes").stdout.strip()
    drain(db_url)
    assert scalar(engine, "SELECT count(*) FROM archive_audit WHERE job_id = :j AND action = 'archive'",
                  j=job) == venues
    # the read model went with its streams, and only theirs
    assert scalar(engine, "SELECT count(*) FROM es_stream_summaries m JOIN es_streams s ON s.id = m.stream_id"
                          " WHERE s.type = 'venue'") == 0
    assert scalar(engine, "SELECT count(*) FROM es_stream_summaries_archive") == venues
    assert scalar(engine, "SELECT count(*) FROM es_stream_summaries") == 90 - venues
    run_cli(db_url, "enqueue", "unarchive-range", "--layout", str(path), "--from-audit", job, "--owner", "o",
            "--apply", "--all", "--yes")
    drain(db_url)
    assert fingerprint(engine, "tidegate") == before


def test_the_audit_arrays_are_compressed_with_lz4_where_the_server_has_it(engine):
    """Migration 0017: the batch's audit arrays use lz4 (faster than pglz on the 1,000-stream rows); a server
    built without lz4 keeps the default, and the audit means the same either way."""
    columns = ["actions", "stream_ids", "stream_types", "events", "reasons"]
    with engine.connect() as conn:
        has_lz4 = conn.execute(text("SELECT EXISTS (SELECT 1 FROM pg_config() WHERE name = 'CONFIGURE'"
                                    " AND setting LIKE '%with-lz4%')")).scalar()
        got = dict(conn.execute(text("SELECT attname, attcompression::text FROM pg_attribute WHERE attrelid ="
                                     " CAST('archive_audit_batches' AS regclass) AND attname = ANY(:c)"),
                                {"c": columns}).all())
    assert got == {c: ("l" if has_lz4 else "") for c in columns}


def test_a_planned_job_keeps_its_statements_for_its_first_batch(engine, db_url):
    """Planning resolves the layout and renders the batch statements once: the planning worker's first batch
    reuses them without asking the catalog again; a dry run's plan (its events counted) keeps nothing."""
    from sqlalchemy import event

    build(engine, db_url, "tidegate", 60)
    payload = {"layout": "tidegate", "type": "luck_box_purchase", "reason": "r", "owner": "o"}
    with engine.connect() as conn:
        asked: list[str] = []
        event.listen(conn, "before_cursor_execute", lambda *a: asked.append(a[2]))
        with conn.begin():
            dry = ARCHIVE_KIND.plan(conn, payload, count_events=True).params
            planned = ARCHIVE_KIND.plan(conn, payload).params
            fresh = ARCHIVE_KIND._prepare(conn, planned)
            asked.clear()
            kept = ARCHIVE_KIND.statements(conn, json.loads(json.dumps(planned)))  # as the batch reads them back
            assert asked == []
            assert (kept.lock.text, kept.events.text, kept.lock_params) == (fresh.lock.text, fresh.events.text,
                                                                            fresh.lock_params)
            ARCHIVE_KIND.statements(conn, dry)
            assert any("pg_attribute" in sql for sql in asked)  # not kept: resolved now
            conn.rollback()


def test_a_batchs_stream_ids_go_to_the_server_as_one_binary_text_array(engine):
    """The locked streams' ids are sent back in binary (quoting 1,000 ids into an array literal cost more than the
    audit row itself), and come through whatever they hold: separators, quotes, braces, the word NULL, nothing."""
    import psycopg
    from psycopg.adapt import PyFormat
    from psycopg.pq import Format

    from tidegate.worker.db import TextList

    assert psycopg.adapters.get_dumper(TextList, PyFormat.AUTO).format is Format.BINARY
    awkward = ["a,b", 'q"x', "{}", "NULL", " s ", "back\\slash", "", "ünï", "7"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT CAST(:ids AS text[])"), {"ids": TextList(awkward)}).scalar() == awkward
        assert conn.execute(text("SELECT CAST(:ids AS bigint[])"), {"ids": TextList(["7", "-3"])}).scalar() == [7, -3]
        assert conn.execute(text("SELECT cardinality(CAST(:ids AS uuid[]))"), {"ids": TextList()}).scalar() == 0
