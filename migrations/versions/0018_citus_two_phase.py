"""tidegate_two_phase: on a Citus coordinator, every batch commits with Citus's two-phase commit

Revision ID: 0018
Revises: 0017
Create Date: 2027-03-09

A batch's rows on the worker nodes and its checkpoint on the coordinator must commit together. Citus
uses two-phase commit when a transaction writes more than one node or runs a multi-shard statement;
a transaction whose writes all went to one node through single-shard statements (an ItemHandler's
INSERTs of one tenant, a short last batch) it commits one-phase, in its pre-commit step, before the
coordinator's own commit. A coordinator crash between the two kept the rows and lost the checkpoint:
the batch ran again, doubling a handler that is not idempotent.

Citus starts two-phase commit for the whole transaction when it copies into a distributed table, even
zero rows. This table is what a worker copies nothing into, in every batch on a Citus coordinator
(worker/store.py force_two_phase): one round trip, no row ever stored. Created only where the citus
extension is installed (and has a node for its one shard); elsewhere this migration does nothing.
ops/citus.md says what to do when Citus is added after this migration ran.
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') AND to_regclass('tidegate_two_phase') IS NULL
    THEN
        CREATE TABLE tidegate_two_phase (k integer);
        COMMENT ON TABLE tidegate_two_phase IS
            'tidegate: always empty; a zero-row COPY into it makes Citus commit a batch in two phases';
        PERFORM create_distributed_table('tidegate_two_phase', 'k', shard_count => 1);
    END IF;
END
$$""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS tidegate_two_phase")
