"""Test data: demo snapshots, a plain integer-keyed table and a processing log."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, text

from tidegate.worker.sql import load

DEMO_START = datetime(2024, 1, 1, tzinfo=UTC)


def seed_demo(engine: Engine, rows: int, users: int | None = None, spacing: float = 30.0) -> None:
    sql = load("tidegate.jobs.demo", "demo.sql")["seed"]
    with engine.begin() as conn:
        for offset in range(0, rows, 50_000):
            conn.execute(text(sql), {"rows": min(50_000, rows - offset), "offset": offset,
                                     "users": users or max(1, rows * 4 // 5), "start": DEMO_START,
                                     "spacing": spacing})
        conn.execute(text("ANALYZE hero_snapshots"))


def clean_run_checksum(engine: Engine) -> tuple[int, int]:
    """user_troops' fingerprint after the demo transformation as one uninterrupted statement,
    leaving user_troops empty again for the run under test."""
    from pathlib import Path

    sql = (Path(__file__).resolve().parent.parent / "jobs/demo/hero_troops.sql").read_text()
    with engine.begin() as conn:
        conn.execute(text(sql), {"lo": "2000-01-01Z", "hi": "2100-01-01Z"})
    clean = troops_checksum(engine)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE user_troops"))
    return clean


def troops_checksum(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(text(load("tidegate.jobs.demo", "demo.sql")["troops_checksum"])).one()
    return int(row.rows), int(row.checksum)


# A SQL handler that logs every key it processes. The log has no unique
# constraint, so a key processed twice shows up twice.
LOG_HANDLER = "INSERT INTO processed_log (k, pid) SELECT k, pg_backend_pid() FROM items WHERE k > :lo AND k <= :hi"
SLOW_LOG_HANDLER = (
    "INSERT INTO processed_log (k, pid) SELECT k, pg_backend_pid() FROM items, (SELECT pg_sleep(:delay)) d"
    " WHERE k > :lo AND k <= :hi"
)


def make_items(engine: Engine, n: int, gaps: bool = False) -> None:
    """items(k) with keys 1..n (or every third key), and an empty processed_log."""
    step = 3 if gaps else 1
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (k bigint PRIMARY KEY, v text)"))
        conn.execute(text("CREATE TABLE processed_log (k bigint NOT NULL, pid int, at timestamptz DEFAULT now())"))
        conn.execute(text("INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, :n, :step) g"),
                     {"n": n * step, "step": step})
        conn.execute(text("ANALYZE items"))


def slow_handler(delay: float) -> str:
    return SLOW_LOG_HANDLER.replace(":delay", str(float(delay)))


def log_report(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT count(*) AS logged, count(DISTINCT k) AS distinct_keys,"
            " (SELECT count(*) FROM items) AS items,"
            " (SELECT count(*) FROM items i WHERE NOT EXISTS (SELECT 1 FROM processed_log l WHERE l.k = i.k)) AS missing"
            " FROM processed_log")).one()
    return dict(row._mapping)
