"""runs: the jobs of one fan-out run share a run id

Revision ID: 0016
Revises: 0015
Create Date: 2027-03-01

`tidegate enqueue ... --targets 'shard_*'` creates one job per target database under one run
id. Each target keeps its own tidegate tables (a batch and its checkpoint commit together in
that database), so the run is not a row anywhere: it is the ``run_id`` its jobs carry, and
`status --run`, `pause --run` and the rest find a run's jobs by asking each target. NULL for a
job enqueued on its own. Enqueuers may set it (their INSERT grant covers every column).
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
ALTER TABLE queue_jobs ADD COLUMN run_id uuid;
CREATE INDEX queue_jobs_run_idx ON queue_jobs (run_id) WHERE run_id IS NOT NULL;
COMMENT ON COLUMN queue_jobs.run_id IS
    'The fan-out run this job belongs to (one job per target database share it); NULL: a job on its own (0016)';
""")


def downgrade() -> None:
    op.execute("DROP INDEX queue_jobs_run_idx; ALTER TABLE queue_jobs DROP COLUMN run_id")
