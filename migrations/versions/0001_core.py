"""core: queue, checkpoints, slices, errors, audit, worker leases

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Notes on the choices here (they matter for a queue that runs for hours):

* ``queue_jobs`` accepts the backfill runbook's INSERT verbatim; everything
  the workers need beyond it has a default.
* ``backfill_jobs`` and ``backfill_slices`` are rewritten once per batch.
  They carry no index on the columns a batch changes (counters, checkpoint,
  updated_at) and leave half of each page free (fillfactor 50), so those
  updates stay HOT and a million batches leave no index bloat.
* Every status column is closed by a CHECK constraint: a typo in a manual
  UPDATE is refused by the database instead of wedging a job.
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

QUEUE_STATUSES = "'pending', 'running', 'paused', 'done', 'failed', 'cancelled'"
JOB_STATUSES = "'pending', 'running', 'paused', 'done', 'failed', 'cancelled'"


def upgrade() -> None:
    if op.get_bind().dialect.server_version_info < (13,):
        op.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")  # gen_random_uuid() before PostgreSQL 13
    op.execute(
        f"""
        CREATE TABLE queue_jobs (
            id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            type          text NOT NULL CHECK (type ~ '^[a-z][a-z0-9_]{{0,62}}$'),
            queue         text NOT NULL DEFAULT 'default' CHECK (queue ~ '^[A-Za-z0-9_.-]{{1,63}}$'),
            payload       jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            priority      integer NOT NULL DEFAULT 0,
            attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            max_attempts  integer NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
            status        text NOT NULL DEFAULT 'pending' CHECK (status IN ({QUEUE_STATUSES})),
            run_after     timestamptz NOT NULL DEFAULT now(),
            last_error    text,
            created_at    timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now(),
            finished_at   timestamptz
        ) WITH (fillfactor = 80)
        """
    )
    # The planning claim: pending jobs of some queues, best priority first.
    op.execute(
        "CREATE INDEX queue_jobs_claim_idx ON queue_jobs (queue, priority DESC, run_after, created_at)"
        " WHERE status = 'pending'"
    )
    # Retention and "jobs by status" for metrics.
    op.execute("CREATE INDEX queue_jobs_status_finished_idx ON queue_jobs (status, finished_at)")

    op.execute(
        f"""
        CREATE TABLE backfill_jobs (
            job_id            uuid PRIMARY KEY REFERENCES queue_jobs (id) ON DELETE CASCADE,
            kind              text NOT NULL,
            owner             text NOT NULL DEFAULT 'unknown',
            params            jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            key_type          text NOT NULL DEFAULT 'bigint' CHECK (key_type IN ('bigint', 'timestamptz')),
            from_key          text,
            to_key            text,
            from_ts           timestamptz,
            to_ts             timestamptz,
            batch_size        integer NOT NULL CHECK (batch_size > 0),
            concurrency       integer NOT NULL DEFAULT 1 CHECK (concurrency > 0),
            status            text NOT NULL DEFAULT 'pending' CHECK (status IN ({JOB_STATUSES})),
            status_reason     text,
            status_by         text,
            processed_count   bigint NOT NULL DEFAULT 0 CHECK (processed_count >= 0),
            error_count       bigint NOT NULL DEFAULT 0 CHECK (error_count >= 0),
            total_estimate    bigint,
            last_checkpoint   text,
            last_error        text,
            created_at        timestamptz NOT NULL DEFAULT now(),
            started_at        timestamptz DEFAULT now(),
            updated_at        timestamptz NOT NULL DEFAULT now(),
            finished_at       timestamptz
        ) WITH (fillfactor = 50)
        """
    )

    op.execute(
        """
        CREATE TABLE backfill_slices (
            job_id            uuid NOT NULL REFERENCES backfill_jobs (job_id) ON DELETE CASCADE,
            slice_no          integer NOT NULL CHECK (slice_no >= 0),
            start_key         text NOT NULL,
            end_key           text NOT NULL,
            checkpoint        text NOT NULL,
            status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
            locked_by         text,
            locked_at         timestamptz,
            attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            run_after         timestamptz NOT NULL DEFAULT now(),
            processed_count   bigint NOT NULL DEFAULT 0 CHECK (processed_count >= 0),
            error_count       bigint NOT NULL DEFAULT 0 CHECK (error_count >= 0),
            batches           bigint NOT NULL DEFAULT 0,
            last_error        text,
            updated_at        timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, slice_no)
        ) WITH (fillfactor = 50)
        """
    )

    op.execute(
        """
        CREATE TABLE etl_errors (
            id          bigserial PRIMARY KEY,
            job_id      uuid NOT NULL,
            slice_no    integer,
            item_key    text,
            error_type  text NOT NULL,
            message     text NOT NULL,
            sample      text,
            created_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX etl_errors_job_idx ON etl_errors (job_id, id)")
    op.execute("CREATE INDEX etl_errors_created_idx ON etl_errors (created_at)")

    op.execute(
        """
        CREATE TABLE tidegate_audit (
            id        bigserial PRIMARY KEY,
            at        timestamptz NOT NULL DEFAULT now(),
            actor     text NOT NULL,
            action    text NOT NULL,
            job_id    uuid,
            details   jsonb NOT NULL DEFAULT '{}'::jsonb
        )
        """
    )
    op.execute("CREATE INDEX tidegate_audit_job_idx ON tidegate_audit (job_id, at)")

    # One row per live worker process. A worker owns slices while its
    # heartbeat is fresh: the lease is this timestamp, renewed by a thread,
    # so a batch's row lock on its slice never blocks the renewal.
    op.execute(
        """
        CREATE TABLE tidegate_workers (
            id            text PRIMARY KEY,
            pool          text NOT NULL,
            hostname      text NOT NULL,
            pid           integer NOT NULL,
            started_at    timestamptz NOT NULL DEFAULT now(),
            heartbeat_at  timestamptz NOT NULL DEFAULT now(),
            lease_seconds double precision NOT NULL DEFAULT 10 CHECK (lease_seconds > 0),
            stopping      boolean NOT NULL DEFAULT false
        ) WITH (fillfactor = 50)
        """
    )


def downgrade() -> None:
    for table in (
        "tidegate_workers",
        "tidegate_audit",
        "etl_errors",
        "backfill_slices",
        "backfill_jobs",
        "queue_jobs",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")
