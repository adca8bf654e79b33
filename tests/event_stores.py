"""Event stores built the way their systems build them, filled with streams, for the archive tests.

* tidegate: the demo migration (migrations/demo/d0002), as `tidegate demo seed-events` applies it.
* Marten 7 with archived-stream partitioning: mt_events LIST-partitioned on is_archived
  (mt_events_default / mt_events_archived), seq_id from mt_events_sequence, a unique
  (stream_id, version, is_archived) index; mt_streams with is_archived and tenant_id.
* Rillflow-style dual table: rf_streams with archived_at/archived_by/archive_reason and
  retention_class; events -> events_archive, which carries extra audit columns with defaults.
* Rillflow's partitioned backend (seed 004, its 0005 migration): events LIST-partitioned on
  retention_class into events_hot / events_cold, each RANGE-partitioned by month on created_at
  (events_hot_2024_01 ... with events_hot_default / events_cold_default); its data is deterministic
  (stream ids from md5), so two builds hold the same rows and a run can be compared to a clean run.
"""

from __future__ import annotations

import re

from sqlalchemy import Engine, text

MARTEN = """
CREATE SEQUENCE mt_events_sequence;
CREATE TABLE mt_streams (
    id uuid NOT NULL, type varchar NULL, version bigint NULL, timestamp timestamptz NOT NULL DEFAULT (now()),
    snapshot jsonb NULL, snapshot_version integer NULL, created timestamptz NOT NULL DEFAULT (now()),
    tenant_id varchar NULL DEFAULT '*DEFAULT*', is_archived bool NULL DEFAULT FALSE,
    CONSTRAINT pkey_mt_streams_id PRIMARY KEY (id));
CREATE TABLE mt_events (
    seq_id bigint NOT NULL DEFAULT nextval('mt_events_sequence'), id uuid NOT NULL, stream_id uuid NULL,
    version bigint NOT NULL, data jsonb NOT NULL, type varchar(500) NOT NULL,
    timestamp timestamptz NOT NULL DEFAULT (now()), tenant_id varchar NULL DEFAULT '*DEFAULT*',
    mt_dotnet_type varchar NULL, is_archived bool NOT NULL DEFAULT FALSE,
    CONSTRAINT pkey_mt_events_seq_id_is_archived PRIMARY KEY (seq_id, is_archived)
) PARTITION BY LIST (is_archived);
CREATE TABLE mt_events_default PARTITION OF mt_events DEFAULT;
CREATE TABLE mt_events_archived PARTITION OF mt_events FOR VALUES IN (TRUE);
CREATE UNIQUE INDEX pk_mt_events_stream_and_version ON mt_events (stream_id, version, is_archived);
"""
MARTEN_DATA = """
INSERT INTO mt_streams (id, type, version, timestamp, created, tenant_id)
SELECT gen_random_uuid(), (ARRAY['participant', 'venue', 'team'])[1 + g % 3], 1 + g % 4,
       '2024-01-01'::timestamptz + make_interval(hours => g), '2024-01-01'::timestamptz + make_interval(hours => g),
       CASE WHEN g % 5 = 0 THEN 'other' ELSE '*DEFAULT*' END
FROM generate_series(1, :n) g;
INSERT INTO mt_events (id, stream_id, version, data, type, tenant_id)
SELECT gen_random_uuid(), s.id, v,
       jsonb_build_object('DataSource', CASE WHEN hashtext(s.id::text) % 3 = 0 THEN 'LuckBox' ELSE 'FoxSports' END,
                          'n', v),
       s.type || CASE WHEN v = 1 THEN '_created' ELSE '_updated' END, s.tenant_id
FROM mt_streams s, generate_series(1, s.version) v ORDER BY s.created, v;
"""

RF_STREAMS = """
CREATE TABLE rf_streams (
    stream_id uuid PRIMARY KEY, aggregate_type text NOT NULL, tenant_id text, created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL, archived_at timestamptz, archived_by text, archive_reason text,
    retention_class text NOT NULL DEFAULT 'hot');
"""
RILLFLOW = RF_STREAMS + """
CREATE TABLE events (
    global_seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, stream_id uuid NOT NULL, stream_seq int NOT NULL,
    event_type text NOT NULL, body jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}'::jsonb,
    causation_id uuid, correlation_id uuid, event_version int NOT NULL DEFAULT 1, tenant_id text,
    created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (stream_id, stream_seq));
CREATE TABLE events_archive (
    global_seq bigint PRIMARY KEY, stream_id uuid NOT NULL, stream_seq int NOT NULL,
    event_type text NOT NULL, body jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}'::jsonb,
    causation_id uuid, correlation_id uuid, event_version int NOT NULL DEFAULT 1, tenant_id text,
    created_at timestamptz NOT NULL DEFAULT now(), archived_at timestamptz NOT NULL DEFAULT now(),
    archived_by text, archive_reason text);
CREATE INDEX ON events_archive (stream_id, stream_seq);
"""
RF_EVENTS = """
INSERT INTO events (stream_id, stream_seq, event_type, body, tenant_id, created_at)
SELECT s.stream_id, v, s.aggregate_type || '_' || v, jsonb_build_object('v', v), s.tenant_id,
       s.created_at + make_interval(mins => v)
FROM rf_streams s, generate_series(1, 1 + abs(hashtext(s.stream_id::text)) % 3) v ORDER BY s.created_at, v;
"""
RILLFLOW_DATA = """
INSERT INTO rf_streams (stream_id, aggregate_type, tenant_id, created_at, updated_at)
SELECT gen_random_uuid(), (ARRAY['order', 'cart'])[1 + g % 2], 't' || (g % 3),
       '2024-01-01'::timestamptz + make_interval(days => g), '2024-01-01'::timestamptz + make_interval(days => g)
FROM generate_series(1, :n) g;
""" + RF_EVENTS

RILLFLOW_PARTITIONED = RF_STREAMS + """
CREATE TABLE events (
    global_seq bigint GENERATED ALWAYS AS IDENTITY, stream_id uuid NOT NULL, stream_seq int NOT NULL,
    event_type text NOT NULL, body jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}'::jsonb,
    causation_id uuid, correlation_id uuid, event_version int NOT NULL DEFAULT 1, tenant_id text,
    created_at timestamptz NOT NULL DEFAULT now(), retention_class text NOT NULL DEFAULT 'hot',
    PRIMARY KEY (global_seq, retention_class, created_at)
) PARTITION BY LIST (retention_class);
CREATE INDEX events_stream_idx ON events (stream_id, stream_seq);
CREATE TABLE events_hot PARTITION OF events FOR VALUES IN ('hot') PARTITION BY RANGE (created_at);
CREATE TABLE events_cold PARTITION OF events FOR VALUES IN ('cold') PARTITION BY RANGE (created_at);
CREATE TABLE events_hot_default PARTITION OF events_hot DEFAULT;
CREATE TABLE events_cold_default PARTITION OF events_cold DEFAULT;
CREATE TABLE events_hot_2024_01 PARTITION OF events_hot FOR VALUES FROM ('2024-01-01Z') TO ('2024-02-01Z');
CREATE TABLE events_hot_2024_02 PARTITION OF events_hot FOR VALUES FROM ('2024-02-01Z') TO ('2024-03-01Z');
CREATE TABLE events_cold_2024_01 PARTITION OF events_cold FOR VALUES FROM ('2024-01-01Z') TO ('2024-02-01Z');
CREATE TABLE events_cold_2024_02 PARTITION OF events_cold FOR VALUES FROM ('2024-02-01Z') TO ('2024-03-01Z');
"""
RILLFLOW_PARTITIONED_DATA = """
INSERT INTO rf_streams (stream_id, aggregate_type, tenant_id, created_at, updated_at)
SELECT md5('rf' || g)::uuid, (ARRAY['order', 'cart'])[1 + g % 2], 't' || (g % 3),
       '2024-01-01Z'::timestamptz + make_interval(hours => 4 * g), '2024-01-01Z'::timestamptz + make_interval(hours => 4 * g)
FROM generate_series(1, :n) g;
""" + RF_EVENTS

TIDEGATE_DATA = """
INSERT INTO es_streams (id, type, version, tenant_id, created_at, updated_at)
SELECT gen_random_uuid(), (ARRAY['user', 'luck_box_purchase', 'venue'])[1 + g % 3], 1 + g % 3, 'default',
       '2024-01-01'::timestamptz + make_interval(mins => g), '2024-01-01'::timestamptz + make_interval(mins => g)
FROM generate_series(1, :n) g;
INSERT INTO es_events (stream_id, version, type, data)
SELECT s.id, v, s.type || '_' || v,
       jsonb_build_object('DataSource', CASE WHEN abs(hashtext(s.id::text)) % 4 = 0 THEN 'LuckBox' ELSE 'Import' END)
FROM es_streams s, generate_series(1, s.version) v ORDER BY s.created_at, v;
INSERT INTO es_stream_summaries SELECT s.id, s.version, s.type || '_' || s.version FROM es_streams s;
"""


def demo_schema(url: str) -> None:
    from alembic import command

    from tidegate.worker.schema import alembic_config

    command.upgrade(alembic_config(url, "demo"), "head")


def build(engine: Engine, url: str, layout: str, streams: int, schema: str | None = None) -> None:
    """``schema``: the store's tables go into this schema (created), not on the search path, as Marten's
    DatabaseSchemaName or a Rillflow tenant schema puts them (not for the tidegate demo store)."""
    in_schema = f"SET LOCAL search_path = {schema}, public" if schema else "SELECT 1"
    with engine.begin() as conn:
        if schema:
            assert layout != "tidegate" and schema.isidentifier()
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
        conn.execute(text(in_schema))
        if layout == "tidegate":
            pass
        elif layout == "marten":
            conn.execute(text(MARTEN))
        elif layout == "rillflow_partitioned":
            conn.execute(text(RILLFLOW_PARTITIONED))
        else:
            conn.execute(text(RILLFLOW))
    if layout == "tidegate":
        demo_schema(url)
    data = {"tidegate": TIDEGATE_DATA, "marten": MARTEN_DATA, "rillflow": RILLFLOW_DATA,
            "rillflow_partitioned": RILLFLOW_PARTITIONED_DATA}[layout]
    with engine.begin() as conn:
        conn.execute(text(in_schema))
        for statement in data.strip().split(";\n"):
            if statement.strip():
                conn.execute(text(statement), {"n": streams})
        conn.execute(text("ANALYZE"))


TABLES = {
    "tidegate": ["es_streams", "es_events", "es_events_archive", "es_stream_summaries", "es_stream_summaries_archive"],
    "marten": ["mt_streams", "mt_events_default", "mt_events_archived"],
    "rillflow": ["rf_streams", "events", "events_archive"],
    "rillflow_partitioned": ["rf_streams", "events_hot_2024_01", "events_hot_2024_02", "events_hot_default",
                             "events_cold_2024_01", "events_cold_2024_02", "events_cold_default"],
}


def fingerprint(engine: Engine, layout: str, *, without: tuple[str, ...] = ()) -> dict[str, tuple[int, str]]:
    """Row count and checksum of every table of the store (whole rows, order-independent); ``without``:
    columns left out (archived_at, which is the clock's, when two runs are compared)."""
    found = {}
    drop = "".join(f" - '{c}'" for c in without)
    with engine.connect() as conn:
        for table in TABLES[layout]:
            row = conn.execute(text(f"SELECT count(*), md5(coalesce(string_agg((to_jsonb(t){drop})::text, ','"
                                    f" ORDER BY (to_jsonb(t){drop})::text), '')) FROM {table} t")).one()
            found[table] = (int(row[0]), row[1])
    return found


# Marten 7 as it creates its tables with Events.UseArchivedStreamPartitioning (Weasel's StreamsTable and
# EventsTable, single tenancy): BOTH tables LIST-partitioned on is_archived, primary keys (id, is_archived)
# and (seq_id, is_archived), the unique (stream_id, version, is_archived) index, the unique event id index
# and the (stream_id, is_archived) foreign key. The selection's plan tests run on these indexes.
_STREAMS7 = """CREATE TABLE mt_streams (
    id uuid NOT NULL, type varchar NULL, version bigint NULL, timestamp timestamptz NOT NULL DEFAULT (now()),
    snapshot jsonb NULL, snapshot_version integer NULL, created timestamptz NOT NULL DEFAULT (now()),
    tenant_id varchar NULL DEFAULT '*DEFAULT*', is_archived bool NOT NULL DEFAULT FALSE,
    CONSTRAINT pkey_mt_streams_id_is_archived PRIMARY KEY (id, is_archived)
) PARTITION BY LIST (is_archived);
CREATE TABLE mt_streams_default PARTITION OF mt_streams DEFAULT;
CREATE TABLE mt_streams_archived PARTITION OF mt_streams FOR VALUES IN (TRUE);"""
MARTEN7 = re.sub(r"CREATE TABLE mt_streams \(.*?PRIMARY KEY \(id\)\);", lambda _: _STREAMS7, MARTEN, count=1, flags=re.DOTALL) + """
CREATE UNIQUE INDEX pk_mt_events_id_unique ON mt_events (id, is_archived);
ALTER TABLE mt_events ADD CONSTRAINT fkey_mt_events_stream_id_is_archived FOREIGN KEY (stream_id, is_archived)
    REFERENCES mt_streams (id, is_archived) ON DELETE CASCADE;
"""
assert "PRIMARY KEY (id, is_archived)" in MARTEN7 and "PRIMARY KEY (seq_id, is_archived)" in MARTEN7
