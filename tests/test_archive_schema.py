"""Issue 16 points 1 and 5: event stores in a schema (seed 000's events.mt_events, seed 004's tenant
schemas), and seed 000's Marten details: projection documents archived and restored with their
streams, mt_event_progression untouched, the discovery CSV's data_source column, unarchive from the
discovery CSV (--ids-file), --apply refused without --limit or --all, --type typos, and the
cross-reference check that says it did not check."""

from __future__ import annotations

import csv
import json

import pytest
from sqlalchemy import text

from tests.conftest import run_cli, scalar
from tests.event_stores import build

pytestmark = pytest.mark.slow

# Marten projection documents (Marten 7's shape of an mt_doc_* table), keyed by the stream id, and the
# async daemon's progression table; both built in the store's schema
MARTEN_DOCS = """
CREATE TABLE {s}.mt_doc_venueview (
    id uuid PRIMARY KEY, data jsonb NOT NULL, mt_last_modified timestamptz NULL DEFAULT transaction_timestamp(),
    mt_version uuid NOT NULL DEFAULT (md5(random()::text || clock_timestamp()::text)::uuid),
    mt_dotnet_type varchar NULL, tenant_id varchar NOT NULL DEFAULT '*DEFAULT*');
INSERT INTO {s}.mt_doc_venueview (id, data, mt_dotnet_type)
SELECT s.id, jsonb_build_object('Id', s.id, 'Name', 'venue ' || s.version, 'Tags', jsonb_build_array(1, 'a')),
       'Views.VenueView' FROM {s}.mt_streams s WHERE s.type = 'venue';
CREATE TABLE {s}.mt_event_progression (
    name varchar PRIMARY KEY, last_seq_id bigint NULL, last_updated timestamptz NULL DEFAULT transaction_timestamp());
INSERT INTO {s}.mt_event_progression VALUES ('VenueView:All', (SELECT max(seq_id) FROM {s}.mt_events), now());
"""
STORE = ["mt_streams", "mt_events_default", "mt_events_archived", "mt_doc_venueview", "mt_event_progression"]


def drain(url: str) -> None:
    run_cli(url, "worker", "--concurrency", "2", "--drain", "--poll", "0.2", timeout=300)


def tables(engine, schema: str, names: list[str]) -> dict[str, tuple[int, str]]:  # type: ignore[no-untyped-def]
    """Row count and checksum of each table of the store (whole rows, order-independent)."""
    found = {}
    with engine.connect() as conn:
        for name in names:
            row = conn.execute(text(f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
                                    f" FROM {schema}.{name} t")).one()
            found[name] = (int(row[0]), row[1])
    return found


def marten_in_events_schema(engine, db_url: str) -> None:  # type: ignore[no-untyped-def]
    build(engine, db_url, "marten", 300, schema="events")
    with engine.begin() as conn:
        conn.execute(text(MARTEN_DOCS.format(s="events")))
        # the seed's create events: DataSource LuckBox or a provider's name
        conn.execute(text("UPDATE events.mt_events SET data = data || jsonb_build_object('DataSource',"
                          " (ARRAY['FoxSports', 'StatsPerform'])[1 + abs(hashtext(stream_id::text)) % 2])"
                          " WHERE data->>'DataSource' <> 'LuckBox'"))


def test_seed_000_runbook_on_a_marten_store_in_the_events_schema(engine, db_url, tmp_path):
    marten_in_events_schema(engine, db_url)
    before = tables(engine, "events", STORE)
    venue = ["--layout", "marten", "--schema", "events", "--type", "venue", "--where", "DataSource!=LuckBox"]
    expected = scalar(engine, "SELECT count(*) FROM events.mt_streams s WHERE s.type = 'venue' AND (SELECT"
                      " e.data->>'DataSource' FROM events.mt_events e WHERE e.stream_id = s.id AND e.version = 1)"
                      " <> 'LuckBox'")
    assert 10 < expected < 100

    # the shipped layout on the search path: the error, now with the way out
    lost = run_cli(db_url, "discover", "--layout", "marten", "--type", "venue", check=False)
    assert lost.returncode == 2 and "'mt_streams' does not exist" in lost.stderr and "--schema" in lost.stderr

    # Stage 0: discovery with --dump-csv; the data_source column is there to spot-check
    ids_csv = tmp_path / "stream-ids.csv"
    found = run_cli(db_url, "discover", *venue, "--csv", str(ids_csv))
    assert "cross-reference check: not checked: the layout declares no references" in found.stdout
    assert "no live stream references" not in found.stdout
    rows = list(csv.DictReader(ids_csv.open()))
    assert len(rows) == expected and {r["data_source"] for r in rows} == {"FoxSports", "StatsPerform"}
    assert list(rows[0])[:6] == ["seq", "stream_id", "stream_type", "events", "cross_referenced", "data_source"]
    as_json = json.loads(run_cli(db_url, "discover", *venue, "--json").stdout)
    assert as_json["cross_reference_check"].startswith("not checked")

    # --entity=Venue as the seed spells it: Marten stores the alias, the typo is named with the types present
    typo = run_cli(db_url, "discover", *venue[:4], "--type", "Venue", check=False)
    assert typo.returncode == 2 and "no stream has this type (did you mean 'venue'?)" in typo.stderr
    assert "the types present: participant, team, venue" in typo.stderr

    # the operator's layout: the shipped marten one, in the events schema, with the projection documents
    from tidegate.jobs.archive import layouts

    spec = layouts.shipped("marten")
    spec.update(name="lbs-marten", schema="events", documents={"tables": ["mt_doc_venueview"]})
    own = tmp_path / "lbs-marten.toml"
    own.write_text(json_to_toml(spec))
    venue = ["--layout", str(own), *venue[4:]]

    # --apply without --limit: refused, with the seed's staging as the hint; nothing enqueued
    args = ["enqueue", "archive-range", *venue, "--reason", "non-LuckBox duplicates", "--owner", "data-platform",
            "--batch-size", "7", "--apply", "--yes"]
    refused = run_cli(db_url, *args, check=False)
    assert refused.returncode == 2 and f"this selection holds {expected} stream(s)" in refused.stderr
    assert "--limit" in refused.stderr and "--all" in refused.stderr
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 0
    assert tables(engine, "events", STORE) == before

    # Stage 1: --limit 5 first, then the remainder with --all
    run_cli(db_url, *args, "--limit", "5")
    drain(db_url)
    assert scalar(engine, "SELECT count(*) FROM events.mt_streams WHERE is_archived") == 5
    job = run_cli(db_url, *args, "--all").stdout.strip()
    drain(db_url)
    checked = run_cli(db_url, "verify", job).stdout  # the seed's checks between stages
    assert f"ok   audit vs processed_count: {expected - 5} stream(s) audited" in checked
    assert "ok   no event left behind: 0 event(s)" in checked
    assert "skip cross-references: not checked: the layout declares no references" in checked
    archived = {str(i) for i in scalar_list(engine, "SELECT id FROM events.mt_streams WHERE is_archived")}
    assert archived == {r["stream_id"] for r in rows}
    # events flagged (in the archived partition), documents gone with their streams and kept by tidegate,
    # the daemon's progression untouched
    assert scalar(engine, "SELECT count(*) FROM events.mt_events_default e JOIN events.mt_streams s"
                          " ON s.id = e.stream_id WHERE s.is_archived") == 0
    assert scalar(engine, "SELECT count(*) FROM events.mt_doc_venueview WHERE id::text = ANY(:a)",
                  a=list(archived)) == 0
    assert scalar(engine, "SELECT count(*) FROM archive_documents WHERE relation = '\"events\".\"mt_doc_venueview\"'"
                          " AND stream_id = ANY(:a)", a=list(archived)) == expected
    after = tables(engine, "events", STORE)
    assert after["mt_event_progression"] == before["mt_event_progression"]
    assert after["mt_doc_venueview"][0] == before["mt_doc_venueview"][0] - expected
    status = json.loads(run_cli(db_url, "archive", "status", "--layout", "marten", "--schema", "events",
                                "--json").stdout)
    assert {r["stream_type"]: r["archived_streams"] for r in status["by_type"]}["venue"] == expected

    # Rollback: reactivation from the discovery CSV restores streams, events and documents row for row
    run_cli(db_url, "enqueue", "unarchive-range", "--layout", "lbs-marten", "--ids-file", str(ids_csv),
            "--owner", "data-platform", "--apply", "--yes")
    drain(db_url)
    assert tables(engine, "events", STORE) == before
    assert scalar(engine, "SELECT count(*) FROM archive_documents") == 0


def test_documents_are_moved_in_the_batch_transaction_a_failed_batch_moves_none(engine, db_url, tmp_path):
    """A batch whose events statement fails leaves the documents where they were (one transaction)."""
    marten_in_events_schema(engine, db_url)
    spec = {"name": "martendocs", "strategy": "flag", "schema": "events",
            "streams": {"table": "mt_streams", "key": "id", "type": "type", "archived_flag": "is_archived"},
            "events": {"table": "mt_events", "stream": "stream_id", "sequence": "seq_id", "version": "version",
                       "data": "data", "archived_flag": "is_archived"},
            "documents": {"tables": ["mt_doc_venueview"]}}
    path = tmp_path / "martendocs.toml"
    path.write_text(json_to_toml(spec))
    before = tables(engine, "events", STORE)
    with engine.begin() as conn:  # every flag update of an event fails, after the documents moved
        conn.execute(text("CREATE FUNCTION events.no_flags() RETURNS trigger LANGUAGE plpgsql AS"
                          " $$BEGIN RAISE EXCEPTION 'refused by test'; END$$"))
        conn.execute(text("CREATE TRIGGER no_flags BEFORE UPDATE ON events.mt_events_default"
                          " FOR EACH ROW EXECUTE FUNCTION events.no_flags()"))
    run_cli(db_url, "enqueue", "archive-range", "--layout", str(path), "--type", "venue", "--reason", "r",
            "--owner", "o", "--max-attempts", "1", "--apply", "--all", "--yes")
    run_cli(db_url, "worker", "--concurrency", "1", "--drain", "--poll", "0.2", timeout=300, check=False)
    errors = scalar(engine, "SELECT string_agg(coalesce(last_error, ''), ' ') FROM (SELECT last_error FROM"
                            " backfill_slices UNION ALL SELECT last_error FROM queue_jobs) e")
    assert "refused by test" in str(errors)  # the events statement failed, after the documents had moved
    assert scalar(engine, "SELECT count(*) FROM archive_documents") == 0
    assert tables(engine, "events", STORE) == before


def json_to_toml(spec: dict) -> str:  # type: ignore[type-arg]
    lines = [f"{k} = {json.dumps(v)}" for k, v in spec.items() if not isinstance(v, dict)]
    for section, values in spec.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def test_rillflow_tenant_schemas_each_archive_only_their_own(engine, db_url, tmp_path):
    """Seed 004: one schema per tenant, the same table names in each; --schema picks the tenant's, a layout file's
    schema key does the same, and the other tenant's store is untouched."""
    build(engine, db_url, "rillflow", 120, schema="tenant_a")
    build(engine, db_url, "rillflow", 120, schema="tenant_b")
    names = ["rf_streams", "events", "events_archive"]
    b_before = tables(engine, "tenant_b", names)
    a_before = tables(engine, "tenant_a", names)
    old = scalar(engine, "SELECT count(*) FROM tenant_a.rf_streams WHERE updated_at < '2024-02-01Z'")
    run_cli(db_url, "enqueue", "archive-range", "--layout", "rillflow", "--schema", "tenant_a", "--before",
            "2024-02-01T00:00:00Z", "--reason", "cold", "--owner", "o", "--apply", "--all", "--yes")
    drain(db_url)
    assert scalar(engine, "SELECT count(*) FROM tenant_a.rf_streams WHERE archived_at IS NOT NULL") == old > 0
    assert scalar(engine, "SELECT count(*) FROM tenant_a.events_archive") > 0
    assert tables(engine, "tenant_b", names) == b_before
    job = scalar(engine, "SELECT payload FROM queue_jobs")
    assert job["schema"] == "tenant_a"  # in the payload, which the worker planned from

    # a layout file with a schema key: the same, registered on --apply; --schema overrides it
    layout = tmp_path / "rf_tenant.toml"
    from tidegate.jobs.archive import layouts

    spec = layouts.shipped("rillflow")
    spec.update(name="rf-tenant-b", schema="tenant_b")
    layout.write_text(json_to_toml(spec))
    run_cli(db_url, "enqueue", "unarchive-range", "--layout", str(layout), "--schema", "tenant_a", "--owner", "o",
            "--apply", "--all", "--yes")
    drain(db_url)
    assert tables(engine, "tenant_a", names) == a_before
    assert tables(engine, "tenant_b", names) == b_before
    dry = json.loads(run_cli(db_url, "discover", "--layout", "rf-tenant-b", "--before", "2024-02-01T00:00:00Z",
                             "--json").stdout)
    assert dry["totals"]["streams"] == old  # tenant_b has the same shape


HOSTILE = [
    ("missing", "nope", "layout schema 'nope' does not exist"),
    ("catalog", "pg_catalog", "system schema"),
    ("information", "information_schema", "system schema"),
    ("toast", "pg_toast", "system schema"),
    ("injection", 'events"; DROP TABLE events.mt_events; --', "does not exist"),
    ("dotted", "events.mt_streams", "does not exist"),
    ("empty", "", "schema must be a schema name"),
    ("number", 7, "schema must be a schema name"),
    ("long", "s" * 64, "schema must be a schema name"),
    ("control", "ev\nents", "not a valid schema name"),
]


def test_hostile_schemas_by_cli_and_by_sql_payload_are_refused_and_change_nothing(engine, db_url):
    marten_in_events_schema(engine, db_url)
    before = tables(engine, "events", STORE)
    for case, schema, words in HOSTILE:
        if not isinstance(schema, str) or not schema or "\n" in schema:
            continue  # a CLI argument is a string; the payload cases below cover the rest
        for command in (["discover"], ["enqueue", "archive-range", "--reason", "r", "--owner", "qa", "--apply",
                                       "--all", "--yes"]):
            proc = run_cli(db_url, *command, "--layout", "marten", "--schema", schema, check=False)
            assert proc.returncode == 2, (case, proc.stderr)
            assert words.replace("layout schema", "") in proc.stderr and "Traceback" not in proc.stderr, case
    with engine.begin() as conn:
        for case, schema, _ in HOSTILE:
            conn.execute(text("INSERT INTO queue_jobs (type, payload) VALUES ('archive_range', CAST(:p AS jsonb))"),
                         {"p": json.dumps({"layout": "marten", "schema": schema, "owner": case, "reason": case})})
    drain(db_url)
    with engine.connect() as conn:
        for case, _, words in HOSTILE:
            row = conn.execute(text("SELECT status, last_error FROM queue_jobs WHERE payload->>'owner' = :o"),
                               {"o": case}).one()
            assert row.status == "failed" and row.last_error.startswith("invalid job:"), (case, row)
            assert words in row.last_error, (case, row.last_error)
    assert scalar(engine, "SELECT count(*) FROM backfill_jobs WHERE planned") == 0
    assert tables(engine, "events", STORE) == before


def test_a_schema_qualifies_only_the_layouts_own_table_names(engine, db_url, tmp_path):
    """A payload's schema cannot re-point a table the layout qualifies itself, nor name a table the layout does not:
    an "attacker" schema holding look-alike tables only ever gets the layout's own names looked up in it."""
    marten_in_events_schema(engine, db_url)
    spec = {"name": "pinned", "strategy": "flag",
            "streams": {"table": "events.mt_streams", "key": "id", "archived_flag": "is_archived"},
            "events": {"table": "events.mt_events", "stream": "stream_id", "sequence": "seq_id",
                       "archived_flag": "is_archived"}}
    path = tmp_path / "pinned.toml"
    path.write_text(json_to_toml(spec))
    run_cli(db_url, "archive", "layout", "add", str(path))
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA other"))
    refused = run_cli(db_url, "discover", "--layout", "pinned", "--schema", "other", check=False)
    assert refused.returncode == 2 and "already schema-qualified" in refused.stderr
    # the worker re-validates: a job planned fine, whose schema is then dropped, fails clearly
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA gone"))
    build(engine, db_url, "marten", 20, schema="gone")
    job = run_cli(db_url, "enqueue", "archive-range", "--layout", "marten", "--schema", "gone", "--reason", "r",
                  "--owner", "o", "--apply", "--all", "--yes").stdout.strip()
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA gone CASCADE"))
    drain(db_url)
    error = scalar(engine, "SELECT coalesce(j.last_error, b.status_reason) FROM queue_jobs j"
                           " LEFT JOIN backfill_jobs b ON b.job_id = j.id WHERE j.id = :j", j=job)
    assert "layout schema 'gone' does not exist" in str(error)


BAD_ID_FILES = [
    ("garbage-line", "stream_id\n{good}\nnot-a-uuid\n", "line 3: 'not-a-uuid' is not a uuid"),
    ("no-id-column", "seq,stream,events\n1,{good},2\n", "line 1: a CSV header needs a stream_id or id column"),
    ("empty", "\n# nothing\n", "no stream id in it"),
    ("blank-cell", "seq,stream_id\n1,{good}\n2,\n", "line 3: no stream id"),
    ("per-line-garbage", "{good}\n\n{good}x\n", "line 3:"),
    ("binary", b"\xff\xfe\x00".decode("latin-1"), "not UTF-8"),
]


def test_ids_file_accepts_csv_or_lines_and_refuses_garbage_naming_the_line(engine, db_url, tmp_path):
    build(engine, db_url, "marten", 30, schema="events")
    good = [str(i) for i in scalar_list(engine, "SELECT id FROM events.mt_streams ORDER BY id LIMIT 3")]
    lines = tmp_path / "ids.txt"
    lines.write_text(f"# reactivate\n{good[0]}\n\n{good[1].upper()}\n{good[0]}\n")
    dry = run_cli(db_url, "enqueue", "archive-range", "--layout", "marten", "--schema", "events", "--ids-file",
                  str(lines), "--reason", "r", "--owner", "o")
    assert "would archive 2 stream(s)" in dry.stdout
    for case, body, words in BAD_ID_FILES:
        path = tmp_path / f"{case}.csv"
        if case == "binary":
            path.write_bytes(b"\xff\xfe\x00stream_id\n")
        else:
            path.write_text(body.format(good=good[2]))
        proc = run_cli(db_url, "enqueue", "unarchive-range", "--layout", "marten", "--schema", "events",
                       "--ids-file", str(path), "--owner", "o", "--apply", "--yes", check=False)
        assert proc.returncode == 2, (case, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr, (case, proc.stderr)
    assert scalar(engine, "SELECT count(*) FROM queue_jobs") == 0


def scalar_list(engine, sql: str) -> list:  # type: ignore[no-untyped-def,type-arg]
    with engine.connect() as conn:
        return list(conn.execute(text(sql)).scalars())
