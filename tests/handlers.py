"""Handlers a user might write as module:function (imported by worker subprocesses)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, text

from tidegate.jobs.demo.handlers import HeroTroops
from tidegate.jobs.handlers import ItemHandler


def record(conn: Connection, row: Mapping[str, Any]) -> None:
    """Log the key; keys divisible by 7 are bad items."""
    if row["k"] % 7 == 0:
        raise ValueError(f"k={row['k']} is divisible by 7")
    conn.execute(text("INSERT INTO processed_log (k) VALUES (:k)"), {"k": row["k"]})


not_a_handler = 42


class _FailEvery(ItemHandler):
    """Logs each key; every ``every``-th key is a bad item (an error rate of 1/every)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def transform(self, row: Mapping[str, Any]) -> Iterable[Any]:
        if row["k"] % self.every == 0:
            raise ValueError(f"k={row['k']} is a bad item")
        return [{"k": row["k"]}]

    def write(self, conn: Connection, records: list[Any]) -> None:
        conn.execute(text("INSERT INTO processed_log (k) VALUES (:k)"), records)


fail_5_percent = _FailEvery(20)
fail_01_percent = _FailEvery(1000)
log_all = _FailEvery(10**18)


class _OffByOneTroops(HeroTroops):
    """A bug a canary should catch: every level written one too high."""

    def write(self, conn: Connection, records: list[Any]) -> None:
        super().write(conn, [(r[0], r[1], r[2] + 1, *r[3:]) for r in records])


off_by_one_troops = _OffByOneTroops()


# -- jobs that misbehave (tests/test_isolation.py): each must cost its own job, never a worker --------


def exits(conn: Connection, row: Mapping[str, Any]) -> None:
    """A `main` function called as a handler: argparse's way of giving up."""
    raise SystemExit(2)


def interrupts(conn: Connection, row: Mapping[str, Any]) -> None:
    raise KeyboardInterrupt


class _ExitsInTransform(ItemHandler):
    def transform(self, row: Mapping[str, Any]) -> Iterable[Any]:
        raise SystemExit("transform gave up")

    def write(self, conn: Connection, records: list[Any]) -> None:
        pass


exits_in_transform = _ExitsInTransform()


def record_all(conn: Connection, row: Mapping[str, Any]) -> None:
    """Log every key, one statement per row (the per-row style, with no bad items)."""
    conn.execute(text("INSERT INTO processed_log (k) VALUES (:k)"), {"k": row["k"]})


def record_slowly_at_50s(conn: Connection, row: Mapping[str, Any]) -> None:
    """Log every key; keys divisible by 50 cost 0.3 s of the database's time."""
    if row["k"] % 50 == 0:
        conn.execute(text("SELECT pg_sleep(0.3)"))
    record_all(conn, row)


class _LogSlowlyAt50s(ItemHandler):
    """The set-based style of record_slowly_at_50s: one write per batch, 0.3 s per key divisible by 50."""

    def transform(self, row: Mapping[str, Any]) -> Iterable[Any]:
        return [{"k": row["k"]}]

    def write(self, conn: Connection, records: list[Any]) -> None:
        slow = sum(1 for r in records if r["k"] % 50 == 0)
        if slow:
            conn.execute(text("SELECT pg_sleep(:s)"), {"s": 0.3 * slow})
        conn.execute(text("INSERT INTO processed_log (k) VALUES (:k)"), records)


log_slowly_at_50s = _LogSlowlyAt50s()


def sleep_in_database(conn: Connection, row: Mapping[str, Any]) -> None:
    """A step of 1.5 s of the database's time per row, then log the key."""
    conn.execute(text("SELECT pg_sleep(1.5)"))
    record_all(conn, row)


# -- handlers that kill or wedge their worker (tests/test_deadlines.py) -----------------------


def hang_forever(conn: Connection, row: Mapping[str, Any]) -> None:
    """Hangs in Python, not in SQL: no statement to cancel."""
    import time

    time.sleep(10**9)


def exit_hard(conn: Connection, row: Mapping[str, Any]) -> None:
    import os

    os._exit(1)


def sigkill_self(conn: Connection, row: Mapping[str, Any]) -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def segfault(conn: Connection, row: Mapping[str, Any]) -> None:
    import ctypes

    ctypes.string_at(0)


def record_slower_each_row_of_the_batch(conn: Connection, row: Mapping[str, Any]) -> None:
    """Log every key; each row's statement sleeps 0.25 s for every row its batch (its transaction: now())
    already logged. A step of five rows or more runs one statement past the time box's timeout of 1 s;
    a step of one or two never does."""
    conn.execute(text("SELECT pg_sleep(0.25 * count(*)) FROM processed_log WHERE at = now()"))
    record_all(conn, row)


def copy_row_id(conn: Connection, row: Mapping[str, Any]) -> None:
    """Copy a source row's (tbl, id) into `derived` (tests/test_key_types.py)."""
    conn.execute(text("INSERT INTO derived (tbl, id) VALUES (:tbl, :id)"), {"tbl": row["tbl"], "id": row["id"]})


def record_collector(conn: Connection, row: Mapping[str, Any]) -> None:
    """Log the key, negated while Python's cyclic garbage collector is on (a worker's batch: it should be off)."""
    import gc

    conn.execute(text("INSERT INTO processed_log (k) VALUES (:k)"), {"k": -row["k"] if gc.isenabled() else row["k"]})
