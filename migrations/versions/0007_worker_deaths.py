"""worker deaths: how many workers died (or were stopped wedged) in a row during a job's batches

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

A job whose batches kill or wedge the worker process (a handler that calls ``os._exit``,
segfaults, or hangs past the batch deadline) is a poison job. ``worker_deaths`` counts such
deaths since the job's last successful batch (which resets it to 0), so random kills of an
ordinary job's workers never add up; after a pool's ``--max-worker-deaths`` (default 3) the
job fails with ``poison: N worker deaths during its batches``. Adding a column with a constant
default rewrites nothing (PostgreSQL 11+). A retry (by the CLI or a runbook UPDATE: the state guard
of 0005 lets both through) forgets the deaths, as it forgets the slices' attempts.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE backfill_jobs ADD COLUMN worker_deaths integer NOT NULL DEFAULT 0"
               " CONSTRAINT backfill_jobs_worker_deaths_check CHECK (worker_deaths >= 0)")
    op.execute("""
CREATE FUNCTION tidegate_retry_forgets_deaths() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.worker_deaths := 0;
    RETURN NEW;
END $$;
CREATE TRIGGER tidegate_retry_forgets_deaths BEFORE UPDATE OF status ON backfill_jobs
    FOR EACH ROW WHEN (OLD.status IN ('failed', 'cancelled') AND NEW.status = 'running')
    EXECUTE FUNCTION tidegate_retry_forgets_deaths();
""")


def downgrade() -> None:
    op.execute("DROP TRIGGER tidegate_retry_forgets_deaths ON backfill_jobs")
    op.execute("DROP FUNCTION tidegate_retry_forgets_deaths()")
    op.execute("ALTER TABLE backfill_jobs DROP COLUMN worker_deaths")
