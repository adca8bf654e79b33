"""A queue holding a dozen poison jobs of every kind among ordinary ones, a pool of 2, random SIGKILLs
and a database restart: every ordinary job ends with exactly a clean run's data, every poison job ends
failed with its reason, and the pool never restarts workers faster than its backoff allows.

Short in `make test`; `make test-chaos` runs a bigger queue with more kills and restarts."""

from __future__ import annotations

import json
import random
import re
import time

import pytest
from sqlalchemy import text

from tests import pg
from tests.conftest import enqueue_items, scalar, wait_for
from tests.fixtures import make_items
from tidegate.worker.db import make_engine

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("db_restart")]

RANGE = {"source": "items", "key": "k", "from": "1", "to": "1000000000", "batch_size": 10, "owner": "qa"}
# (case, job type, payload, what its failure must say: the queue row's last_error or the job's reason)
POISON = [
    ("integer-of-5000-digits", "backfill_range", '{"batch_size": ' + "9" * 5000 + "}", "cannot be read"),
    ("nested-5000-deep", "backfill_range", '{"where": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
    ("one-shot-huge-integer", "stamp", '{"n": ' + "7" * 5000 + "}", "cannot be read"),
    ("one-shot-sys-exit", "quit", '{"code": 3}', "SystemExit"),
    ("handler-sys-exit", "backfill_range", json.dumps({**RANGE, "handler": "tests.handlers:exits"}), "SystemExit"),
    ("handler-keyboard-interrupt", "backfill_range", json.dumps({**RANGE, "handler": "tests.handlers:interrupts"}),
     "KeyboardInterrupt"),
    ("handler-os-exit", "backfill_range", json.dumps({**RANGE, "handler": "tests.handlers:exit_hard"}), "poison: "),
    ("handler-segfault", "backfill_range", json.dumps({**RANGE, "handler": "tests.handlers:segfault"}), "poison: "),
    ("handler-hangs", "backfill_range", json.dumps({**RANGE, "handler": "tests.handlers:hang_forever"}), "poison: "),
    ("knob-1e-300", "backfill_range", json.dumps({**RANGE, "handler": "tests.handlers:record_all",
                                                  "max_rows_per_second": 1e-300}), "max_rows_per_second"),
    ("handler-os-system", "backfill_range", json.dumps({**RANGE, "handler": "os:system"}), "os:system"),
    ("sql-analyze-update", "backfill_range",
     json.dumps({**RANGE, "sql": "ANALYZE UPDATE items SET v = 'x' WHERE k > CAST(:lo AS bigint)"
                                 " AND k <= CAST(:hi AS bigint)"}), "invalid job"),
    ("unknown-type", "backfill_rnge", json.dumps(RANGE), "unknown job type"),
]
KILLING = sum(1 for _, _, _, words in POISON if words == "poison: ")
MAX_DEATHS = 3
SIZES = [pytest.param((1200, 4, 1), id="short"), pytest.param((12000, 25, 3), id="long", marks=pytest.mark.chaos)]
DIED = re.compile(r"pool: worker-(\d+) died \((.*?)\)(.*?); restarting (now|in (\d+)s)")


def _status(engine, job_id: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT q.status, coalesce(b.status_reason, '') || ' ' || coalesce(q.last_error, '') AS why"
            " FROM queue_jobs q LEFT JOIN backfill_jobs b ON b.job_id = q.id WHERE q.id = :i"), {"i": job_id}).one()
    return row.status, row.why


@pytest.mark.parametrize("size", SIZES)
def test_poison_jobs_among_ordinary_ones_through_kills_and_a_restart(private_server, tmp_path, pools, size):
    items, kills_wanted, restarts = size
    url, stop, start = private_server
    db_url = pg.with_database(url, pg.create_template(url))
    engine = make_engine(db_url)
    make_items(engine, items)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE stamps (n int NOT NULL)"))
        conn.execute(text("INSERT INTO queue_jobs (type, payload) SELECT 'stamp', jsonb_build_object('n', g)"
                          " FROM generate_series(1, 100) g"))
        poison = {case: str(conn.execute(text(
            "INSERT INTO queue_jobs (type, payload, max_attempts) VALUES (:t, CAST(:p AS jsonb), 2) RETURNING id"),
            {"t": kind, "p": payload}).scalar_one()) for case, kind, payload, _ in POISON}
    slow = ("INSERT INTO processed_log (k, pid) SELECT k, pg_backend_pid() FROM items, (SELECT pg_sleep(0.03)) d"
            " WHERE k > :lo AND k <= :hi")
    half = items // 2
    ordinary = [enqueue_items(db_url, tmp_path, slow, batch_size=10, concurrency=2, frm="1", to=str(half + 1)),
                enqueue_items(db_url, tmp_path, slow, batch_size=10, concurrency=2, frm=str(half + 1),
                              to=str(items + 1))]
    pool = pools("--concurrency", "2", "--lease", "3", "--batch-deadline", "3", "--retry-backoff", "0.05",
                 "--max-worker-deaths", str(MAX_DEATHS), "--no-gates", "--poll", "0.2", url=db_url,
                 env={"TIDEGATE_PLUGINS": "tests.kinds"})

    def settled() -> bool:
        return all(_status(engine, j)[0] == "done" for j in ordinary) and \
            all(_status(engine, j)[0] == "failed" for j in poison.values())

    rng = random.Random(12)
    kills, restarted = 0, 0
    deadline = time.monotonic() + (240 if items < 5000 else 1200)
    while not settled() and time.monotonic() < deadline:
        time.sleep(rng.uniform(3.0, 6.0))
        if restarted < restarts and kills >= (restarted + 1) * kills_wanted // (restarts + 1):
            engine.dispose()
            stop("fast")
            time.sleep(1.5)
            start()
            restarted += 1
        elif kills < kills_wanted:
            workers = pool.workers()
            if workers:
                rng.choice(workers).kill()
                kills += 1
    wait_for(settled, timeout=120, what="ordinary jobs done and poison jobs failed")
    assert pool.terminate(120) == 0
    log = pool.output()

    # ordinary work: exactly a clean run's data, each key once
    with engine.connect() as conn:
        logged = conn.execute(text("SELECT count(*), count(DISTINCT k), min(k), max(k) FROM processed_log")).one()
    assert tuple(logged) == (items, items, 1, items)
    assert scalar(engine, "SELECT count(*) FROM stamps") == scalar(engine, "SELECT count(DISTINCT n) FROM stamps") \
        == 100
    # poison: each failed with its reason
    for case, _, _, words in POISON:
        status, why = _status(engine, poison[case])
        assert status == "failed" and words in why, (case, status, why[:300])
    # the pool: a death is a kill of ours, a poison job's, or a batch it wedged; never a tight loop
    # (a death the pool could not record while the database was down does not count towards poison)
    deaths, unrecorded = DIED.findall(log), log.count("could not record the death")
    assert kills <= len(deaths) <= kills + KILLING * MAX_DEATHS + unrecorded, (kills, len(deaths), log[-3000:])
    # restarts back off: a slot restarted "now" at most twice in a row, then after growing delays
    for slot in {d[0] for d in deaths}:
        delays = [int(d[4] or 0) for d in deaths if d[0] == slot]
        assert all(b >= a or b <= 1 for a, b in zip(delays, delays[1:], strict=False)), (slot, delays)
    assert restarted == restarts and "database unavailable" in log
    engine.dispose()
