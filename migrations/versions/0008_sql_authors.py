"""sql authors: who enqueued a job, recorded by the database; approved statements

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24

A job's own SQL statement (payload ``sql``) runs with the worker's privileges, so running one is a
privilege of the role that enqueued it (ops/security.md, Ad-hoc SQL). That role is recorded here by the
database, not by the client:

* ``queue_jobs.enqueued_by``: ``session_user`` of the INSERT, set by a default and forced by a
  BEFORE INSERT trigger, so an INSERT (the runbook's, or an attacker's) cannot claim another role;
  an UPDATE cannot change it either. Rows queued before this revision keep NULL (unknown): their
  ``sql``, if any, is refused.
* ``backfill_jobs.enqueued_by``: the same value, copied when the job is planned (for status).
* ``tidegate_sql_approved``: statements an operator approved (``tidegate sql approve FILE``), by
  name and sha256 of their text; the database checks the hash against the text. Any enqueuer may
  name one (payload ``sql_approved``); it runs without the sql-author check.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE queue_jobs ADD COLUMN enqueued_by text")  # NULL for rows queued before
    op.execute("ALTER TABLE queue_jobs ALTER COLUMN enqueued_by SET DEFAULT session_user")
    op.execute(
        """
        CREATE FUNCTION tidegate_stamp_enqueued_by() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- the database says who enqueued, whatever the INSERT or UPDATE claims
            IF TG_OP = 'INSERT' THEN
                NEW.enqueued_by := session_user;
            ELSE
                NEW.enqueued_by := OLD.enqueued_by;
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER queue_jobs_enqueued_by BEFORE INSERT OR UPDATE OF enqueued_by ON queue_jobs"
        " FOR EACH ROW EXECUTE FUNCTION tidegate_stamp_enqueued_by()"
    )
    op.execute("ALTER TABLE backfill_jobs ADD COLUMN enqueued_by text")
    op.execute(
        """
        CREATE TABLE tidegate_sql_approved (
            name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]{1,100}$'),
            sha256      text NOT NULL,
            sql         text NOT NULL,
            approved_by text NOT NULL DEFAULT session_user,
            approved_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (name, sha256),
            CHECK (sha256 = encode(sha256(convert_to(sql, 'UTF8')), 'hex'))
        )
        """
    )
    op.execute("CREATE INDEX tidegate_sql_approved_sha_idx ON tidegate_sql_approved (sha256)")
    op.execute(
        """
        CREATE FUNCTION tidegate_stamp_approved_by() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.approved_by := session_user;
            NEW.approved_at := now();
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER tidegate_sql_approved_by BEFORE INSERT OR UPDATE ON tidegate_sql_approved"
        " FOR EACH ROW EXECUTE FUNCTION tidegate_stamp_approved_by()"
    )
    # After a job's own statement, in its transaction (worker/trust.py): every setting back to its session
    # default (RESET ALL), and the role (which RESET ALL leaves alone); the batch's statement timeout is
    # kept for the rest of the batch (LOCAL). One round trip.
    op.execute(
        """
        CREATE FUNCTION tidegate_reset_session() RETURNS void LANGUAGE plpgsql AS $$
        DECLARE
            timeout text := current_setting('statement_timeout');
        BEGIN
            RESET ALL;
            RESET ROLE;
            PERFORM set_config('statement_timeout', timeout, true);
        END $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION tidegate_reset_session()")
    op.execute("DROP TABLE tidegate_sql_approved")
    op.execute("DROP FUNCTION tidegate_stamp_approved_by()")
    op.execute("ALTER TABLE backfill_jobs DROP COLUMN enqueued_by")
    op.execute("DROP TRIGGER queue_jobs_enqueued_by ON queue_jobs")
    op.execute("DROP FUNCTION tidegate_stamp_enqueued_by()")
    op.execute("ALTER TABLE queue_jobs DROP COLUMN enqueued_by")
