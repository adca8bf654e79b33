"""The archive runbook's recipe (ops/runbooks/archive.md): whole streams moved by a SQL handler,
under SIGKILL, never torn, sequence numbers and versions kept."""

from __future__ import annotations

import random
import re
import signal
import time

import pytest
from sqlalchemy import text

from tests.conftest import ROOT, job_row, run_cli, scalar, wait_for

pytestmark = pytest.mark.slow

MARTEN_LIKE = """
CREATE TABLE mt_streams (id uuid PRIMARY KEY, type text NOT NULL, version bigint NOT NULL,
                         timestamp timestamptz NOT NULL DEFAULT now(), created timestamptz NOT NULL,
                         tenant_id text NOT NULL DEFAULT '*DEFAULT*', is_archived boolean NOT NULL DEFAULT false);
CREATE INDEX ON mt_streams (created);
CREATE TABLE mt_events (seq_id bigserial PRIMARY KEY, id uuid NOT NULL, stream_id uuid NOT NULL REFERENCES mt_streams,
                        version bigint NOT NULL, data jsonb NOT NULL, type text NOT NULL,
                        timestamp timestamptz NOT NULL DEFAULT now(), tenant_id text NOT NULL DEFAULT '*DEFAULT*',
                        is_archived boolean NOT NULL DEFAULT false, UNIQUE (stream_id, version));
CREATE TABLE mt_events_archive (LIKE mt_events);
INSERT INTO mt_streams (id, type, version, created)
SELECT gen_random_uuid(), CASE WHEN g % 3 = 0 THEN 'user' ELSE 'luck_box_purchase' END, 1 + g % 5,
       '2023-01-01'::timestamptz + make_interval(mins => g)
FROM generate_series(1, 1500) g;
INSERT INTO mt_events (id, stream_id, version, data, type)
SELECT gen_random_uuid(), s.id, v, jsonb_build_object('n', v), 'happened'
FROM mt_streams s, generate_series(1, s.version) v;
"""


def _recipe() -> str:
    doc = (ROOT / "ops/runbooks/archive.md").read_text()
    return re.search(r"-- archive_move\.sql.*?\n(WITH streams AS .*?;)\n```", doc, re.S)[1]


def test_the_runbook_recipe_archives_whole_streams_under_sigkill(engine, db_url, tmp_path, pools):
    with engine.begin() as conn:
        conn.execute(text(MARTEN_LIKE))
        before = conn.execute(text("SELECT md5(string_agg(e.seq_id || ':' || e.stream_id || ':' || e.version, ',' ORDER BY e.seq_id))"
                                   " FROM mt_events e JOIN mt_streams s ON s.id = e.stream_id"
                                   " WHERE s.type = 'luck_box_purchase'")).scalar()
    handler = tmp_path / "archive_move.sql"
    handler.write_text(_recipe())
    job = run_cli(db_url, "enqueue", "backfill-range", "--source", "mt_streams", "--key", "created",
                  "--from", "2023-01-01", "--to", "2023-02-01", "--handler", f"sql:{handler}",
                  "--batch-size", "20", "--concurrency", "3", "--owner", "data-platform").stdout.strip()
    pool = pools("--concurrency", "2", "--lease", "2")
    rng = random.Random(8)
    for _ in range(3):
        time.sleep(rng.uniform(0.2, 0.8))
        workers = pool.workers()
        if workers:
            rng.choice(workers).send_signal(signal.SIGKILL)
    wait_for(lambda: job_row(engine, job).status == "done", timeout=120, what="archive job done")
    assert pool.terminate() == 0

    torn = scalar(engine, "SELECT count(*) FROM mt_streams s WHERE EXISTS (SELECT 1 FROM mt_events e WHERE"
                          " e.stream_id = s.id) AND EXISTS (SELECT 1 FROM mt_events_archive a WHERE a.stream_id = s.id)")
    assert torn == 0
    assert scalar(engine, "SELECT count(*) FROM mt_streams WHERE type = 'luck_box_purchase' AND NOT is_archived") == 0
    assert scalar(engine, "SELECT count(*) FROM mt_streams WHERE type = 'user' AND is_archived") == 0
    after = scalar(engine, "SELECT md5(string_agg(seq_id || ':' || stream_id || ':' || version, ',' ORDER BY seq_id))"
                           " FROM mt_events_archive")
    assert after == before  # same rows, same sequence numbers and versions
    assert job_row(engine, job).processed_count == 1500
