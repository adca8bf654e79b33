"""job rates: a small per-minute history of each range job's pace, for the console's rate chart

Revision ID: 0012
Revises: 0011
Create Date: 2027-01-26

``tidegate_job_rates`` holds one row per job per minute: rows and failed items processed, batches,
and the seconds those batches' transactions took (sum and max). The batch's own ``advance_job``
statement upserts it (a data-modifying CTE fed by the job UPDATE's RETURNING, so it waits for the
job row lock every batch of the job already takes): no extra round trip, and the batch's seconds are
the database's (``clock_timestamp() - now()``: its transaction so far). Deleting a job deletes its
history; worker/maintenance.py deletes minutes older than the jobs' retention.

Whoever may read ``backfill_jobs`` may read it, and whoever may update ``backfill_jobs`` may write it
(the worker's role: its batches write it): the grants of roles created by ops/roles.sql before this
revision are given here; a fresh install's ops/roles.sql grants them with the table.
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
CREATE TABLE tidegate_job_rates (
    job_id         uuid NOT NULL REFERENCES backfill_jobs (job_id) ON DELETE CASCADE,
    minute         timestamptz NOT NULL,
    rows           bigint NOT NULL DEFAULT 0 CHECK (rows >= 0),
    errors         bigint NOT NULL DEFAULT 0 CHECK (errors >= 0),
    batches        integer NOT NULL DEFAULT 0 CHECK (batches >= 0),
    batch_seconds  double precision NOT NULL DEFAULT 0 CHECK (batch_seconds >= 0),
    max_batch_seconds double precision NOT NULL DEFAULT 0 CHECK (max_batch_seconds >= 0),
    PRIMARY KEY (job_id, minute)
) WITH (fillfactor = 70);
CREATE INDEX tidegate_job_rates_minute_idx ON tidegate_job_rates (minute);
COMMENT ON TABLE tidegate_job_rates IS
    'Per job and minute: rows, errors, batches and batch seconds, upserted by each batch (migration 0012)';
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT DISTINCT a.grantee, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'backfill_jobs'::regclass AND a.grantee <> c.relowner
               AND a.privilege_type IN ('SELECT', 'UPDATE', 'DELETE')
    LOOP
        EXECUTE format('GRANT %s ON tidegate_job_rates TO %s',
                       CASE r.privilege_type WHEN 'UPDATE' THEN 'SELECT, INSERT, UPDATE' ELSE r.privilege_type END,
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
    END LOOP;
END $$;
""")


def downgrade() -> None:
    op.execute("DROP TABLE tidegate_job_rates")
