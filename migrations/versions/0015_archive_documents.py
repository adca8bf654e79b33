"""archive_documents: projection documents kept while their stream is archived

Revision ID: 0015
Revises: 0014
Create Date: 2027-02-01

Marten's ArchiveStream removes a stream's projected documents (``mt_doc_*`` read models keyed
by the stream id); Marten has no archive table for them. A layout's ``[documents] tables``
names such tables: archiving a stream moves its documents here, as whole rows (``to_jsonb``),
in the batch's transaction, and unarchiving puts them back (``jsonb_populate_record``) and
deletes them here. ``relation`` is the document table as the catalog check quoted it
(schema-qualified), so two tenant schemas' documents never meet.

The worker writes it (insert on archive, delete on unarchive); operators and enqueuers read
it. Grants to the roles of ops/roles.sql that exist already are given here; a fresh install's
ops/roles.sql grants them with the table.
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
CREATE TABLE archive_documents (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relation    text NOT NULL,
    stream_id   text NOT NULL,
    doc         jsonb NOT NULL CHECK (jsonb_typeof(doc) = 'object'),
    job_id      uuid,
    archived_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX archive_documents_stream_idx ON archive_documents (relation, stream_id);
COMMENT ON TABLE archive_documents IS
    'Projection documents (mt_doc_*) of archived streams, whole rows, restored by unarchive (migration 0015)';
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tg_worker') THEN
        GRANT SELECT, INSERT, DELETE ON archive_documents TO tg_worker;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tg_operator') THEN
        GRANT SELECT ON archive_documents TO tg_operator;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tg_enqueue') THEN
        GRANT SELECT ON archive_documents TO tg_enqueue;
    END IF;
END $$;
""")


def downgrade() -> None:
    op.execute("DROP TABLE archive_documents")
