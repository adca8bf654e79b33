"""backfill-range end to end through the real CLI and worker processes."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from tests.conftest import ROOT, enqueue_items, job_row, run_cli, scalar
from tests.fixtures import LOG_HANDLER, log_report, make_items, seed_demo, troops_checksum

SQL_HANDLER = ROOT / "jobs" / "demo" / "hero_troops.sql"
RANGE = ("--from", "2024-01-01T00:00:00Z", "--to", "2025-01-01T00:00:00Z")


def _demo_job(url: str, handler: str, *extra: str) -> str:
    return run_cli(url, "enqueue", "backfill-range", *RANGE, "--handler", handler, "--owner", "tests",
                   *extra).stdout.strip()


def test_python_and_sql_handlers_give_identical_derived_rows(engine, db_url):
    seed_demo(engine, 4000)
    py_job = _demo_job(db_url, "hero_troops", "--batch-size", "300", "--concurrency", "3")
    run_cli(db_url, "worker", "--concurrency", "2", "--drain")
    by_python = troops_checksum(engine)

    with engine.begin() as conn:
        conn.execute(text("TRUNCATE user_troops"))
    sql_job = _demo_job(db_url, f"sql:{SQL_HANDLER}", "--batch-size", "700", "--concurrency", "2")
    run_cli(db_url, "worker", "--concurrency", "2", "--drain")
    by_sql = troops_checksum(engine)

    assert by_python == by_sql and by_python[0] > 0
    assert job_row(engine, py_job).processed_count == job_row(engine, sql_job).processed_count == 4000
    assert job_row(engine, sql_job).error_count == 0  # the SQL handler filters bad rows itself


def test_bad_items_go_to_etl_errors_and_the_batch_goes_on(engine, db_url):
    seed_demo(engine, 3000)
    job = _demo_job(db_url, "hero_troops", "--batch-size", "500")
    run_cli(db_url, "worker", "--drain")
    with engine.connect() as conn:
        bad_ids = {str(r[0]) for r in conn.execute(text(
            "SELECT id FROM hero_snapshots WHERE jsonb_typeof(raw->'ProfileData'->'Troops') IS DISTINCT FROM 'array'"
            " OR raw->'ProfileData'->'Troops' @> '[{\"Level\": \"max\"}]'"))}
        logged = conn.execute(text("SELECT item_key, error_type, message, sample FROM etl_errors")).all()
    assert {r.item_key for r in logged} == bad_ids and len(logged) == len(bad_ids) > 0
    assert {r.error_type for r in logged} == {"PARSE_ERROR"}
    assert all(r.sample and len(r.sample) <= 1000 for r in logged)
    row = job_row(engine, job)
    assert (row.status, row.processed_count, row.error_count) == ("done", 3000, len(bad_ids))
    # good snapshots of the same batches were all written
    good_users = scalar(engine, "SELECT count(DISTINCT user_id) FROM hero_snapshots WHERE NOT (id = ANY(:ids))",
                        ids=[int(i) for i in bad_ids])
    assert scalar(engine, "SELECT count(DISTINCT user_id) FROM user_troops") == good_users

    listed = run_cli(db_url, "errors", job[:8]).stdout
    assert "PARSE_ERROR" in listed and sorted(bad_ids)[0] in listed


def test_concurrency_cuts_the_range_into_slices_each_with_its_own_cursor(engine, db_url, tmp_path):
    make_items(engine, 5000)
    job = enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=250, concurrency=4, frm="1", to="5001")
    run_cli(db_url, "worker", "--concurrency", "2", "--drain")
    with engine.connect() as conn:
        slices = conn.execute(text("SELECT * FROM backfill_slices WHERE job_id = :j"
                                   " ORDER BY CAST(start_key AS bigint)"), {"j": job}).all()
    # planned: 4 slices cut at quantiles. A worker that finds no free slice near the end splits the
    # largest one still running (tail work-stealing), so there may be more by the end, never overlapping.
    planned = sorted((s for s in slices if s.slice_no < 4), key=lambda s: int(s.start_key))
    assert [s.slice_no for s in planned] == [0, 1, 2, 3] and len(slices) >= 4
    assert [int(s.start_key) for s in planned] == [0, 1249, 2499, 3749]  # exclusive cursors at the quantiles
    assert all(s.status == "done" and s.locked_by is None for s in slices)
    assert int(slices[0].start_key) == 0 and int(slices[-1].end_key) == 5001
    for a, b in zip(slices, slices[1:], strict=False):  # adjacent, no gap, no overlap
        assert int(b.start_key) == int(a.end_key) - 1
    assert sum(s.processed_count for s in slices) == 5000
    assert log_report(engine) == {"logged": 5000, "distinct_keys": 5000, "items": 5000, "missing": 0}


def test_ties_on_a_timestamp_key_are_never_split_or_repeated(engine, db_url, tmp_path):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz NOT NULL)"))
        conn.execute(text("CREATE INDEX ON ticks (at)"))
        conn.execute(text("CREATE TABLE processed_log (k bigint NOT NULL)"))
        # 40 distinct instants, 1 to 25 rows each
        conn.execute(text("INSERT INTO ticks (at) SELECT '2024-01-01Z'::timestamptz + make_interval(secs => i)"
                          " FROM generate_series(1, 40) i, generate_series(1, 1 + (i * 7) % 25)"))
    handler = tmp_path / "ticks.sql"
    handler.write_text("INSERT INTO processed_log SELECT id FROM ticks WHERE at > :lo AND at <= :hi")
    run_cli(db_url, "enqueue", "backfill-range", "--source", "ticks", "--key", "at", "--from", "2024-01-01",
            "--to", "2024-01-02", "--handler", f"sql:{handler}", "--batch-size", "3", "--concurrency", "2",
            "--owner", "t")
    run_cli(db_url, "worker", "--drain")
    total = scalar(engine, "SELECT count(*) FROM ticks")
    assert scalar(engine, "SELECT count(*) FROM processed_log") == total
    assert scalar(engine, "SELECT count(DISTINCT k) FROM processed_log") == total
    assert scalar(engine, "SELECT processed_count FROM backfill_jobs") == total


def test_module_function_handler_runs_per_row_and_isolates_failures(engine, db_url):
    make_items(engine, 300)
    run_cli(db_url, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to", "301",
            "--handler", "tests.handlers:record", "--batch-size", "50", "--owner", "t")
    run_cli(db_url, "worker", "--drain")
    sevens = 300 // 7
    assert scalar(engine, "SELECT count(*) FROM processed_log") == 300 - sevens
    assert scalar(engine, "SELECT count(*) FROM etl_errors WHERE error_type = 'ValueError'") == sevens
    assert scalar(engine, "SELECT (processed_count, error_count)::text FROM backfill_jobs") == f"(300,{sevens})"


def test_range_is_half_open(engine, db_url, tmp_path: Path):
    make_items(engine, 100)
    enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=7, frm="10", to="20")
    run_cli(db_url, "worker", "--drain")
    with engine.connect() as conn:
        keys = [r[0] for r in conn.execute(text("SELECT k FROM processed_log ORDER BY k"))]
    assert keys == list(range(10, 20))


def test_a_range_reaching_far_past_its_rows_ends_its_last_slice_where_the_rows_end(engine, db_url, tmp_path):
    """--to far above the last key: the last slice of rows ends just past it and the empty rest is a slice of
    its own, so the tail of the rows is what an idle worker's cut halves, not decades of empty keys."""
    make_items(engine, 5000)
    job = enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=250, concurrency=2, frm="1", to="1000000000")
    near = enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=250, concurrency=2, frm="1", to="5001")
    # one worker: only the last slice left can be cut for idle workers (there are none), so the others keep
    # their planned ends
    run_cli(db_url, "worker", "--concurrency", "1", "--drain")
    with engine.connect() as conn:
        def planned(j: str) -> list[tuple[int, int]]:
            return [(int(s.start_key), int(s.end_key)) for s in conn.execute(text(
                "SELECT start_key, end_key FROM backfill_slices WHERE job_id = :j AND slice_no < 3"
                " ORDER BY slice_no"), {"j": j})]
        far, close = planned(job), planned(near)
    assert len(far) == 3 and far[1][1] == 5001 and far[2][0] == 5000  # (5000, 1e9): the empty rest
    # --to just past the rows: no extra slice (slice 1, the last, may have been cut for an idle worker)
    assert 5000 not in {start for start, _ in close} and close[1][0] < 4000
    for j in (job, near):
        row = job_row(engine, j)
        assert (row.status, row.processed_count) == ("done", 5000)


def test_a_worker_logs_where_each_slices_time_went(engine, db_url, tmp_path):
    import json

    from tidegate.worker.runner import PHASES

    make_items(engine, 2000)
    job = enqueue_items(db_url, tmp_path, LOG_HANDLER, batch_size=500, frm="1", to="2001")
    out = run_cli(db_url, "--log-level", "DEBUG", "--log-format", "json", "worker", "--drain").stderr
    docs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    times = [d["slice_times"] for d in docs if "slice_times" in d]
    batches = [d for d in docs if "phases" in d]
    assert len(times) == 1 and set(PHASES) <= set(times[0]) and times[0]["batches"] == len(batches) >= 4
    assert all(v >= 0 for v in times[0].values()) and times[0]["handler"] > 0
    assert scalar(engine, "SELECT batches FROM backfill_slices WHERE job_id = :j", j=job) == len(batches)
    # the batch lines carry every phase up to the commit; the slice's sums are at least theirs
    for phase in ("gate", "claim", "handler", "record", "commit"):
        assert times[0][phase] >= sum(b["phases"][phase] for b in batches) - 1e-3
