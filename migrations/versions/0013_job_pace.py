"""job pace: the rate cap is the job's, whatever runs it

Revision ID: 0013
Revises: 0012
Create Date: 2027-02-02

``backfill_jobs.paced_until``: a job-wide reservation of time. Each batch of a job with a
``max_rows_per_second`` cap moves it on, in the batch's own ``advance_job`` statement (under the job
row lock every batch already takes): ``greatest(paced_until, now()) + rows / max_rows_per_second``,
``now()`` being the batch's transaction start. The batch's slice then waits until ``paced_until``
(``pace_wait``) before its next batch. However many slices are in flight (1 or 64, on 1 or 20
workers, joining or leaving), the job's rows over any window stay within the cap plus the batches in
flight; nothing is divided by the configured concurrency any more. A job paused or idle for a while
gets no credit: the reservation starts again from the next batch's start.

The worker's role updates ``backfill_jobs`` (every column) already; nothing else needs a grant.
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


PACE = """
ALTER TABLE backfill_jobs ADD COLUMN paced_until timestamptz;
COMMENT ON COLUMN backfill_jobs.paced_until IS
    'Until when the rows of the job''s batches so far use up its max_rows_per_second (migration 0013)';

-- a cap changed (tidegate set, or a runbook UPDATE): the reservation still ahead is rescaled to the new
-- cap (the same rows at the new pace), or dropped with a lifted cap, so waiting slices see it at once
CREATE FUNCTION tidegate_pace_rescale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.max_rows_per_second IS NULL OR OLD.max_rows_per_second IS NULL OR NEW.paced_until IS NULL
       OR NEW.paced_until <= clock_timestamp() THEN
        NEW.paced_until := NULL;
    ELSE
        NEW.paced_until := clock_timestamp() + make_interval(secs => LEAST(86400,  -- a slice never waits longer
            extract(epoch FROM NEW.paced_until - clock_timestamp()) * OLD.max_rows_per_second / NEW.max_rows_per_second));
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tidegate_pace_rescale BEFORE UPDATE OF max_rows_per_second ON backfill_jobs
    FOR EACH ROW WHEN (OLD.max_rows_per_second IS DISTINCT FROM NEW.max_rows_per_second)
    EXECUTE FUNCTION tidegate_pace_rescale();
"""


def upgrade() -> None:
    op.execute(PACE)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS tidegate_pace_rescale ON backfill_jobs")
    op.execute("DROP FUNCTION IF EXISTS tidegate_pace_rescale()")
    op.execute("ALTER TABLE backfill_jobs DROP COLUMN paced_until")
