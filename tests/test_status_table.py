"""`tidegate status` never cuts a job id, a checkpoint or a note mid-word (issue 17, point 4): at 40, 100
and 200 columns every word of them is printed whole, `--wide` prints whole ids on one line each, and
`status --watch` keeps an 8-character id at 100 columns. And a command or a worker that falls back to the
embedded server says so on its first line."""

from __future__ import annotations

import os
import subprocess

import pytest
from rich.console import Console
from sqlalchemy import text

from tests.conftest import TIDEGATE, enqueue_items, run_cli
from tests.fixtures import LOG_HANDLER, make_items
from tidegate.worker import status, watch

NOTE = ("paused because the replica in eu-west-1 lags behind and the on-call operator wants to read the"
        " dashboards before going on " + "x" * 70)
CHECKPOINT = "tenant 42, stream 9f1c2e7a-long-composite-key-part, sequence 123456789"


def row(job_id: str, **extra) -> dict:  # type: ignore[no-untyped-def]
    base = {"job_id": job_id, "type": "backfill_range", "enqueued_by": "postgres", "status": "paused",
            "processed_count": 123_456_789, "error_count": 30_000, "total_estimate": 1_000_000_000,
            "rows_per_second": 1234.5, "eta_seconds": None, "held_by": None, "held_since": None, "slices": 4,
            "slices_done": 1, "slices_in_flight": 0, "last_error": None, "reason": NOTE, "by": "bob",
            "last_checkpoint": CHECKPOINT}
    return {**base, **extra}


ROWS = [row("0123abcd-0000-4000-8000-000000000001"), row("0123abcd-1000-4000-8000-000000000002", reason=None),
        row("fedcba98-0000-4000-8000-000000000003", last_checkpoint="2024-06-01T00:00:00+00:00")]


def words(text_: str) -> list[str]:
    return text_.split()


@pytest.mark.parametrize("width", [40, 100, 200, None])
def test_no_word_of_an_id_a_checkpoint_or_a_note_is_cut(width):
    out = status.render_table(ROWS, width)
    printed = out.split()
    for word in words(NOTE) + words(CHECKPOINT) + ["2024-06-01T00:00:00+00:00"]:
        assert word in printed, (width, word)
    # ids: the shortest unique prefix of at least 8 characters, each usable as a prefix
    assert "0123abcd-0" in printed and "0123abcd-1" in printed and "fedcba98" in printed
    if width is not None and width >= 100:  # lines stay within the width but for a word longer than its column
        assert all(len(line) <= width for line in out.splitlines() if "x" * 70 not in line), out
    if width == 40:  # too narrow for columns: a block a job, every line within 40 but for a longer word
        assert all(len(line) <= 40 or len(max(line.split(), key=len)) > 30 for line in out.splitlines()), out


def test_wide_shows_whole_ids_and_one_line_a_job():
    out = status.render_table(ROWS, 40, wide=True)
    lines = out.splitlines()
    assert len(lines) == 1 + len(ROWS)
    for r in ROWS:
        assert r["job_id"] in out
    assert NOTE in out and CHECKPOINT in out


def test_watch_keeps_the_id_at_100_columns():
    for width in (100, 120, 200):
        console = Console(width=width, record=True, color_system=None)
        console.print(watch.render(ROWS, watch.RecentRate(), 0.0, width))
        out = console.export_text()
        assert all(len(line) <= width for line in out.splitlines())
        assert "0123abcd-0" in out and "0123abcd-1" in out and "fedcba98" in out, out
        assert "…" not in out, out  # nothing is cut with an ellipsis
        if width == 100:
            assert {w for w in words(NOTE) if len(w) <= 16} <= set(out.split()), out  # the note wraps at words


@pytest.mark.slow
def test_status_in_a_narrow_terminal_prints_every_word(engine, db_url, tmp_path):
    make_items(engine, 50)
    job = enqueue_items(db_url, tmp_path, LOG_HANDLER)
    run_cli(db_url, "worker", "--drain", "--concurrency", "1", "--poll", "0.1", "--no-maintenance")
    with engine.begin() as conn:  # a finished job keeps its last reason: a long one
        conn.execute(text("UPDATE backfill_jobs SET status_reason = :r WHERE job_id = :j"), {"r": NOTE, "j": job})
    for columns in ("40", "100", "200"):
        out = run_cli(db_url, "status", env={"COLUMNS": columns}).stdout
        assert job[:8] in out.split() and all(w in out.split() for w in words(NOTE)), (columns, out)
    wide = run_cli(db_url, "status", "--wide", env={"COLUMNS": "40"}).stdout
    assert job in wide and NOTE in wide


@pytest.mark.slow
def test_the_embedded_fallback_is_said_on_the_first_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["TIDEGATE_HOME"] = str(tmp_path / "home")

    def first_line(*args: str) -> str:
        out = subprocess.run([TIDEGATE, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        return (out.stderr + out.stdout).splitlines()[0]

    try:
        pgdata = tmp_path / "home" / "pgdata"
        said = f"tidegate: using the embedded database in {pgdata} (the default: no --database-url or DATABASE_URL"
        for args in (("status",), ("db", "upgrade"), ("worker", "--drain", "--concurrency", "1"), ("status",)):
            assert first_line(*args).startswith(said), args
        env["DATABASE_URL"] = "embedded"
        assert first_line("status") == f"tidegate: using the embedded database in {pgdata}"
    finally:
        subprocess.run([TIDEGATE, "db", "embedded", "--stop"], env=env, cwd=tmp_path, capture_output=True, timeout=120)


def test_short_ids_grow_until_unique():
    ids = ["abcdef01-0000-4000-8000-000000000001", "abcdef01-0000-4000-8000-000000000002", "12345678-aaaa"]
    assert status.short_ids(ids) == {ids[0]: ids[0], ids[1]: ids[1], ids[2]: "12345678"}
    assert status.short_ids(["abcdef01-1", "abcdef01-2"]) == {"abcdef01-1": "abcdef01-1", "abcdef01-2": "abcdef01-2"}
