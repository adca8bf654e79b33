"""archive_audit_batches: compress the audit arrays with lz4

Revision ID: 0017
Revises: 0016
Create Date: 2027-03-02

An archive batch writes one ``archive_audit_batches`` row whose five arrays hold a value per stream
(1,000 streams by default: some 50 kB, stored out of line). PostgreSQL's default compression (pglz)
spent about a third of that insert compressing them; lz4 compresses them faster and a little smaller
(issue 18.1, bench/RESULTS.md). Rows already written keep pglz and read as before; nothing else changes.
A server built without lz4 keeps pglz (the DO block says so with a NOTICE): compression is a matter of
speed here, never of meaning.
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

COLUMNS = ("actions", "stream_ids", "stream_types", "events", "reasons")


def _compression(method: str) -> str:
    sets = ", ".join(f"ALTER COLUMN {c} SET COMPRESSION {method}" for c in COLUMNS)
    return f"""
DO $$
BEGIN
    EXECUTE 'ALTER TABLE archive_audit_batches {sets}';
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'archive_audit_batches keeps its compression: %', SQLERRM;
END
$$"""


def upgrade() -> None:
    op.execute(_compression("lz4"))


def downgrade() -> None:
    op.execute(_compression("pglz"))
