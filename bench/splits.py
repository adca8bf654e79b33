"""Why a backfill at concurrency 2 pays more per row than at 1: where the slices' inserts land in the
derived table's primary key.

The demo's target key (user_id, troop_id) rises with the source key, so at concurrency 2 the upper slice
appends at the primary key's right edge while the lower slice inserts just below the upper slice's first
keys: into leaf pages that are not the rightmost. PostgreSQL splits a full rightmost leaf page at its
fillfactor (90% left), but these pages in halves, so the lower slice's part of the index ends up with
about 1.7x the pages, and each of its batches writes more WAL and more page splits.

Bare SQL on a two-column table shaped like user_troops' key, without tidegate: the same rows inserted
in ascending batches of 5,000 users (50,000 rows) three ways, each on a fresh table:
- one writer, bottom to top (every insert at the right edge: the single statement and concurrency 1);
- two writers at once, one per half (concurrency 2's slices);
- the upper half first, then the lower half, one writer (no concurrency, the lower half's inserts below
  existing keys): shows it is where the inserts land, not that two run at once.
"""

from __future__ import annotations

import threading
import time

import psycopg

from bench.common import scratch_database, server_url
from tidegate.worker.db import libpq_url

USERS = 200_000  # per half; 10 rows each: 4,000,000 rows in all
BATCH = 5_000
TABLE = "CREATE TABLE splits (user_id bigint, troop_id int, v int NOT NULL, PRIMARY KEY (user_id, troop_id))"
INSERT = ("INSERT INTO splits SELECT u, t, 1 FROM generate_series(%s::bigint, %s::bigint) u,"
          " generate_series(1, 10) t ORDER BY u, t ON CONFLICT (user_id, troop_id) DO NOTHING")
SIZES = "SELECT pg_relation_size('splits_pkey') / 8192, pg_relation_size('splits_pkey') / 2^20"


def _insert(url: str, lo: int, hi: int) -> None:
    with psycopg.connect(url) as conn:
        for first in range(lo, hi, BATCH):
            conn.execute(INSERT, (first, min(first + BATCH, hi) - 1))
            conn.commit()


def _run(url: str, how: str) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS splits")
        conn.execute(TABLE)
        conn.execute("CHECKPOINT")
    started = time.perf_counter()
    if how == "one writer":
        _insert(url, 0, 2 * USERS)
    elif how == "two writers":
        threads = [threading.Thread(target=_insert, args=(url, k * USERS, (k + 1) * USERS)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        _insert(url, USERS, 2 * USERS)
        _insert(url, 0, USERS)
    seconds = time.perf_counter() - started
    with psycopg.connect(url) as conn:
        pages, mib = conn.execute(SIZES).fetchone()  # type: ignore[misc]
    print(f"{how}: {seconds:.1f}s, primary key {mib:.0f} MiB", flush=True)
    return {"seconds": seconds, "pages": int(pages), "mib": float(mib)}


HOWS = ("one writer", "two writers", "upper half first")


def run(url: str | None = None) -> dict:
    with scratch_database(url or server_url()) as db:
        plain = libpq_url(db)
        return {how: _run(plain, how) for how in HOWS}


def report(r: dict) -> str:
    base = r["one writer"]
    lines = [f"### Where concurrency 2's inserts land ({2 * USERS * 10:,} rows of a (bigint, int) primary key, batches"
             f" of {BATCH * 10:,} rows)", "", "| inserts | seconds | primary key | vs one writer |",
             "|---|---|---|---|"]
    for how in HOWS:
        x = r[how]
        lines.append(f"| {how} | {x['seconds']:.1f} | {x['mib']:.0f} MiB ({x['pages']:,} pages) |"
                     f" {x['pages'] / base['pages']:.2f}x the pages |")
    lines += ["", "The lower half's inserts land below keys already there; PostgreSQL splits those leaf pages in"
                  " halves (the rightmost one at its 90% fillfactor). Two writers and \"upper half first\" leave the"
                  " same index: it is where the rows land, not that two writers run at once."]
    return "\n".join(lines)
