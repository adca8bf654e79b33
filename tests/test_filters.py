"""--where: structured filters narrow the rows a backfill's handler sees; values are always bound."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from tests.conftest import job_row, run_cli, scalar
from tests.fixtures import make_items
from tidegate.jobs import filters
from tidegate.worker.errors import InvalidInput


@pytest.mark.parametrize(("spec", "parsed"), [
    ("tenant_id = 7", {"field": "tenant_id", "op": "=", "value": "7"}),
    ("region!=eu", {"field": "region", "op": "!=", "value": "eu"}),
    ("region <> 'eu'", {"field": "region", "op": "!=", "value": "eu"}),
    ("k>=10", {"field": "k", "op": ">=", "value": "10"}),
    ("user_id in 1, 2,3", {"field": "user_id", "op": "in", "value": ["1", "2", "3"]}),
    ("user_id IN (4,5)", {"field": "user_id", "op": "in", "value": ["4", "5"]}),
    ("raw_linkset is null", {"field": "raw_linkset", "op": "is null"}),
    ("raw_linkset IS  NOT NULL", {"field": "raw_linkset", "op": "is not null"}),
])
def test_where_parses_the_command_line_forms(spec, parsed):
    assert filters.parse(spec) == parsed
    assert filters.normalize([parsed]) == [parsed]


@pytest.mark.parametrize("spec", ["k", "k ~ 3", "1k = 2", "k is null 3", "k; drop table x = 1"])
def test_where_refuses_what_it_cannot_read(spec):
    with pytest.raises(InvalidInput):
        filters.parse(spec)


def _job(url: str, *where: str, handler: str = "tests.handlers:log_all") -> str:
    args = [a for w in where for a in ("--where", w)]
    return run_cli(url, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to",
                   "100000", "--handler", handler, "--batch-size", "50", "--concurrency", "2", "--owner", "tests",
                   *args).stdout.strip()


def test_where_narrows_the_rows_the_handler_sees_and_what_is_counted(engine, db_url):
    make_items(engine, 1000)
    with engine.begin() as conn:  # rows still lacking a value, like seed 001's observations without rawLinkset
        conn.execute(text("UPDATE items SET v = NULL WHERE k % 10 = 0"))
    lacking = _job(db_url, "v is null")
    listed = _job(db_url, "k in 3,5,700", "v is not null")
    dry = json.loads(run_cli(db_url, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1",
                             "--to", "100000", "--handler", "tests.handlers:log_all", "--where", "v is null",
                             "--owner", "tests", "--dry-run", "--json").stdout)
    assert dry["rows"] == 100 and dry["sample_keys"] == ["10", "20", "30", "40", "50"]
    run_cli(db_url, "worker", "--concurrency", "2", "--drain", "--poll", "0.1")
    assert job_row(engine, lacking).processed_count == 100
    assert job_row(engine, listed).processed_count == 2  # 700 lacks v
    assert scalar(engine, "SELECT count(*) FROM processed_log WHERE k % 10 = 0") == 100
    assert scalar(engine, "SELECT array_agg(k ORDER BY k) FROM processed_log WHERE k % 10 <> 0") == [3, 5]
    assert scalar(engine, "SELECT count(*) - count(DISTINCT k) FROM processed_log") == 0
    run_cli(db_url, "verify", lacking[:8])  # the parity check respects the filter


def test_where_with_a_sql_handler_is_refused_with_a_reason(engine, db_url, tmp_path):
    make_items(engine, 10)
    handler = tmp_path / "h.sql"
    handler.write_text("INSERT INTO processed_log (k) SELECT k FROM items WHERE k > :lo AND k <= :hi")
    out = run_cli(db_url, "enqueue", "backfill-range", "--source", "items", "--key", "k", "--from", "1", "--to",
                  "100", "--handler", f"sql:{handler}", "--where", "k = 3", "--owner", "tests", check=False)
    assert out.returncode == 2 and "Python handlers only" in out.stderr


@pytest.mark.parametrize(("where", "message"), [
    ([{"field": "nope", "op": "=", "value": "1"}], "nope"),
    ([{"field": "k", "op": "like", "value": "1"}], "unknown operator"),
    ([{"field": "k", "op": "=", "value": "1; DROP TABLE items"}], "invalid input syntax for type bigint"),
    ([{"field": "k", "op": "in", "value": []}], "in needs a list"),
    ({"field": "k"}, "must be a list"),
])
def test_malformed_filters_given_by_sql_fail_the_job_clearly(engine, db_url, where, message):
    make_items(engine, 10)
    payload = {"source": "items", "key": "k", "from": 1, "to": 100, "handler": "tests.handlers:log_all",
               "where": where}
    with engine.begin() as conn:
        job = conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('backfill_range', CAST(:p AS jsonb))"
                                " RETURNING id"), {"p": json.dumps(payload)}).scalar_one()
    run_cli(db_url, "worker", "--concurrency", "1", "--drain", "--poll", "0.1")
    status, error = engine.connect().execute(text("SELECT status, last_error FROM queue_jobs WHERE id = :j"),
                                             {"j": job}).one()
    assert status == "failed" and message in error
    assert scalar(engine, "SELECT count(*) FROM items") == 10
