"""archive audit: one row per batch, read one row per stream through the archive_audit view

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

An archive batch of 500 streams wrote 500 ``archive_audit`` rows, each with two index
entries: ~20 ms of a ~100 ms batch. ``archive_audit_batches`` holds the same facts as one
row per batch, the per-stream values in parallel arrays (position i of each array is one
stream), written in the batch transaction as before. ``archive_audit`` becomes a view with
the old columns (``id`` is now the batch row's id, shared by the streams of one batch), so
``unarchive-range --from-audit``, the run summary and the runbook's SQL read it unchanged.
Rows written before this revision are carried over, one batch row per old row.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

VIEW = """
CREATE VIEW archive_audit AS
SELECT b.id, b.at, b.job_id, u.action, b.layout, u.stream_id, u.stream_type, u.events, u.reason, b.actor
FROM archive_audit_batches b
CROSS JOIN LATERAL unnest(b.actions, b.stream_ids, b.stream_types, b.events, b.reasons)
    AS u(action, stream_id, stream_type, events, reason)
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE archive_audit_batches (
            id           bigserial PRIMARY KEY,
            at           timestamptz NOT NULL DEFAULT now(),
            job_id       uuid NOT NULL,
            layout       text NOT NULL,
            actor        text,
            actions      text[] NOT NULL
                CHECK (actions <@ ARRAY['archive', 'unarchive', 'skip'] AND array_position(actions, NULL) IS NULL),
            stream_ids   text[] NOT NULL,
            stream_types text[] NOT NULL,
            events       bigint[] NOT NULL,
            reasons      text[] NOT NULL,
            CHECK (cardinality(stream_ids) = cardinality(actions) AND cardinality(stream_types) = cardinality(actions)
                   AND cardinality(events) = cardinality(actions) AND cardinality(reasons) = cardinality(actions))
        )
        """
    )
    op.execute("CREATE INDEX archive_audit_batches_job_idx ON archive_audit_batches (job_id)")
    op.execute(
        """
        INSERT INTO archive_audit_batches (id, at, job_id, layout, actor, actions, stream_ids, stream_types, events,
                                           reasons)
        SELECT id, at, job_id, layout, actor, ARRAY[action], ARRAY[stream_id], ARRAY[stream_type], ARRAY[events],
               ARRAY[reason]
        FROM archive_audit ORDER BY id
        """
    )
    op.execute("SELECT setval('archive_audit_batches_id_seq', coalesce((SELECT max(id) FROM archive_audit), 0) + 1,"
               " false)")
    op.execute("DROP TABLE archive_audit")
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("ALTER VIEW archive_audit RENAME TO archive_audit_v")
    op.execute(
        """
        CREATE TABLE archive_audit (
            id          bigserial PRIMARY KEY,
            at          timestamptz NOT NULL DEFAULT now(),
            job_id      uuid NOT NULL,
            action      text NOT NULL CHECK (action IN ('archive', 'unarchive', 'skip')),
            layout      text NOT NULL,
            stream_id   text NOT NULL,
            stream_type text,
            events      bigint NOT NULL DEFAULT 0,
            reason      text,
            actor       text
        )
        """
    )
    op.execute("CREATE INDEX archive_audit_job_idx ON archive_audit (job_id, action)")
    op.execute("INSERT INTO archive_audit (at, job_id, action, layout, stream_id, stream_type, events, reason, actor)"
               " SELECT at, job_id, action, layout, stream_id, stream_type, events, reason, actor"
               " FROM archive_audit_v ORDER BY id")
    op.execute("DROP VIEW archive_audit_v")
    op.execute("DROP TABLE archive_audit_batches")
