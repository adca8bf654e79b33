"""throttle: per-job pace knobs, canary limit, error-rate stop, gate holds, adaptive batch size

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Every knob is a plain column of backfill_jobs, so an SRE can change it with an
UPDATE (or `tidegate set`) while the job runs; workers read them at each batch.
None of them is indexed, so the per-batch updates stay HOT.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE backfill_jobs
            ADD COLUMN max_rows_per_second double precision CHECK (max_rows_per_second > 0),
            ADD COLUMN sleep_between_batches double precision NOT NULL DEFAULT 0
                CHECK (sleep_between_batches >= 0 AND sleep_between_batches <= 3600),
            ADD COLUMN target_batch_seconds double precision CHECK (target_batch_seconds > 0),
            ADD COLUMN min_batch_size integer CHECK (min_batch_size > 0),
            ADD COLUMN max_batch_size integer CHECK (max_batch_size > 0),
            ADD COLUMN row_limit bigint CHECK (row_limit > 0),
            ADD COLUMN error_rate_threshold double precision NOT NULL DEFAULT 0.01
                CHECK (error_rate_threshold >= 0 AND error_rate_threshold <= 1),
            ADD COLUMN error_window integer NOT NULL DEFAULT 1000 CHECK (error_window > 0),
            ADD COLUMN window_processed bigint NOT NULL DEFAULT 0,
            ADD COLUMN window_errors bigint NOT NULL DEFAULT 0,
            ADD COLUMN held_by text,
            ADD COLUMN held_since timestamptz,
            ADD CONSTRAINT backfill_jobs_batch_bounds_check
                CHECK (min_batch_size IS NULL OR max_batch_size IS NULL OR min_batch_size <= max_batch_size)
        """
    )
    op.execute("ALTER TABLE backfill_slices ADD COLUMN batch_size_now integer CHECK (batch_size_now > 0)")


def downgrade() -> None:
    op.execute("ALTER TABLE backfill_slices DROP COLUMN batch_size_now")
    op.execute(
        """
        ALTER TABLE backfill_jobs
            DROP CONSTRAINT backfill_jobs_batch_bounds_check,
            DROP COLUMN max_rows_per_second, DROP COLUMN sleep_between_batches, DROP COLUMN target_batch_seconds,
            DROP COLUMN min_batch_size, DROP COLUMN max_batch_size, DROP COLUMN row_limit,
            DROP COLUMN error_rate_threshold, DROP COLUMN error_window, DROP COLUMN window_processed,
            DROP COLUMN window_errors, DROP COLUMN held_by, DROP COLUMN held_since
        """
    )
