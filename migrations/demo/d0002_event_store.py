"""demo event store: the tables of tidegate's own archive layout (jobs/archive/layouts/tidegate.toml)

Revision ID: d0002
Revises: d0001
Create Date: 2026-11-23

Streams keep their row when archived (archived_at/by/reason mark it); their events
move to es_events_archive (same columns) and their summary read-model row to
es_stream_summaries_archive. Applied with the other demo tables (`tidegate demo seed`).
"""

from alembic import op

revision = "d0002"
down_revision = "d0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE es_streams (
            id              uuid PRIMARY KEY,
            type            text NOT NULL,
            version         bigint NOT NULL DEFAULT 0,
            tenant_id       text NOT NULL DEFAULT 'default',
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            archived_at     timestamptz,
            archived_by     text,
            archive_reason  text
        )
        """
    )
    op.execute("CREATE INDEX es_streams_type_idx ON es_streams (type)")
    op.execute(
        """
        CREATE TABLE es_events (
            seq         bigserial PRIMARY KEY,
            stream_id   uuid NOT NULL REFERENCES es_streams (id),
            version     bigint NOT NULL,
            type        text NOT NULL,
            data        jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at  timestamptz NOT NULL DEFAULT now(),
            UNIQUE (stream_id, version)
        )
        """
    )
    op.execute("CREATE TABLE es_events_archive (LIKE es_events INCLUDING DEFAULTS)")
    op.execute("ALTER TABLE es_events_archive ADD PRIMARY KEY (seq)")
    op.execute("CREATE INDEX es_events_archive_stream_idx ON es_events_archive (stream_id, version)")
    op.execute(
        """
        CREATE TABLE es_stream_summaries (
            stream_id   uuid PRIMARY KEY REFERENCES es_streams (id),
            events      bigint NOT NULL,
            last_type   text
        )
        """
    )
    op.execute("CREATE TABLE es_stream_summaries_archive (LIKE es_stream_summaries)")
    op.execute("ALTER TABLE es_stream_summaries_archive ADD PRIMARY KEY (stream_id)")


def downgrade() -> None:
    for table in ("es_stream_summaries_archive", "es_stream_summaries", "es_events_archive", "es_events",
                  "es_streams"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
