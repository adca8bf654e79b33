"""queue knob bounds: queue_jobs.max_attempts held to the range the CLI, the admin API and enqueue use

Revision ID: 0010
Revises: 0009
Create Date: 2027-02-02

Migration 0009 gave every knob of backfill_jobs its range; the queue options are knobs too
(worker/knobs.py). ``priority`` is held by its column type (int4), the knob's range exactly;
``max_attempts`` was only ``> 0``, so a runbook's INSERT could queue a job that `tidegate enqueue`
refuses (more than 1,000 attempts). Existing rows above the range are pulled to 1,000, each with a
``tidegate_audit`` row (action ``clamp-knobs``) holding its old value. The constraint is named like
0009's: ``queue_jobs_max_attempts_range``.
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        WITH old AS (
            SELECT id, max_attempts FROM queue_jobs WHERE max_attempts > 1000 FOR UPDATE
        ), fixed AS (
            UPDATE queue_jobs q SET max_attempts = 1000 FROM old WHERE q.id = old.id RETURNING q.id
        )
        INSERT INTO tidegate_audit (actor, action, job_id, details)
        SELECT 'migration 0010', 'clamp-knobs', old.id, jsonb_build_object('max_attempts', old.max_attempts)
        FROM old JOIN fixed ON fixed.id = old.id
        """
    )
    op.execute("ALTER TABLE queue_jobs ADD CONSTRAINT queue_jobs_max_attempts_range CHECK (max_attempts BETWEEN 1 AND 1000)")


def downgrade() -> None:
    op.execute("ALTER TABLE queue_jobs DROP CONSTRAINT queue_jobs_max_attempts_range")
