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

Every queued range job has its ``backfill_jobs`` row from the start (issue 17.3): an AFTER INSERT
trigger on ``queue_jobs`` (SECURITY DEFINER: ``tg_enqueue`` inserts queue rows only) gives a job whose
type is listed in ``tidegate_range_kinds`` a row with ``planned = false``, status ``pending`` (or
``paused``, for a row inserted paused). So the runbook's ``UPDATE backfill_jobs SET status = 'paused'
WHERE status = 'pending'`` pauses a job no worker has planned yet, and a plain resume resumes it.
Until it is planned the job's queue row stays its truth, and the two follow each other:

* the unplanned row moved (pause, resume, cancel, retry: guarded and audited as for a planned job;
  start, done and failed are refused: a job no worker planned has no batches) -> its queue row takes
  the matching queue status (``paused``; ``pending`` for pending or running; the end states as they
  are), which is what planners look at;
* the queue row moved (`tidegate pause` on an unplanned job, a planning failure, a runbook UPDATE
  of queue_jobs) -> the unplanned row follows, quietly (the queue row's move was the audited one).

The planner fills the row in (``planned = true``) and keeps its status: a job paused before it was
planned is never claimed while paused, and once resumed it is planned and runs. Planners lock the
row with SKIP LOCKED before planning, so a pause in flight and a planner never wait for each other.
``tidegate_range_kinds`` lists the shipped range kinds; a plugin's range kind is added with an
INSERT (until then its jobs get their row when planned, as before).

The worker's role updates ``backfill_jobs`` (every column) already; ``tidegate_range_kinds`` is read by
the trigger as its owner; readers get SELECT on it below.
"""

import importlib.util
from pathlib import Path
from types import ModuleType


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


# the queue status an unplanned job's row stands for (in parentheses: PL/pgSQL ends an IF's condition at the
# first THEN outside them)
UNPLANNED_MIRROR = ("(CASE WHEN {s} = 'paused' THEN 'paused' WHEN {s} IN ('pending', 'running') THEN 'pending'"
                    " ELSE {s} END)")

RANGE_KINDS = f"""
CREATE TABLE tidegate_range_kinds (
    kind text PRIMARY KEY CHECK (kind ~ '^[a-z][a-z0-9_]{{0,62}}$')
);
COMMENT ON TABLE tidegate_range_kinds IS
    'queue_jobs.type values of range kinds: their queued jobs get a backfill_jobs row at once (migration 0013)';
INSERT INTO tidegate_range_kinds VALUES ('backfill_range'), ('archive_range'), ('unarchive_range');

ALTER TABLE backfill_jobs ADD COLUMN planned boolean NOT NULL DEFAULT true;
COMMENT ON COLUMN backfill_jobs.planned IS
    'false: queued, no worker has planned it yet; its knobs are its payload''s (migration 0013)';

CREATE FUNCTION tidegate_queue_placeholder() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM tidegate_range_kinds WHERE kind = NEW.type) THEN
        INSERT INTO backfill_jobs (job_id, kind, owner, batch_size, status, planned, enqueued_by, started_at)
        VALUES (NEW.id, NEW.type,
                coalesce(left(CASE WHEN jsonb_typeof(NEW.payload) = 'object' THEN NEW.payload ->> 'owner' END, 200),
                         'unknown'),
                1,  -- a placeholder: the plan sets every knob from the payload
                NEW.status, false, NEW.enqueued_by, NULL)
        ON CONFLICT (job_id) DO NOTHING;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tidegate_queue_placeholder AFTER INSERT ON queue_jobs
    FOR EACH ROW WHEN (NEW.status IN ('pending', 'paused')) EXECUTE FUNCTION tidegate_queue_placeholder();

-- the queue row of an unplanned job moved: its backfill_jobs row follows (the job guard lets it, seeing the
-- queue row already there)
CREATE FUNCTION tidegate_queue_follow() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.status IN ('pending', 'paused', 'done', 'failed', 'cancelled') THEN
        UPDATE backfill_jobs
        SET status = NEW.status,
            status_reason = CASE WHEN NEW.status = 'failed' THEN NEW.last_error ELSE status_reason END
        WHERE job_id = NEW.id AND NOT planned AND {UNPLANNED_MIRROR.format(s="status")} <> NEW.status;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tidegate_queue_follow AFTER UPDATE OF status ON queue_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION tidegate_queue_follow();

DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT DISTINCT a.grantee FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'backfill_jobs'::regclass AND a.grantee <> c.relowner AND a.privilege_type = 'SELECT'
    LOOP
        EXECUTE format('GRANT SELECT ON tidegate_range_kinds TO %s',
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
    END LOOP;
END $$;
"""

# migration 0005's guards, taught about unplanned rows: each change below is one anchor of its text
GUARD_CHANGES = (
    # backfill_jobs: an unplanned row follows its queue row quietly; by hand it moves as a planned one,
    # but never starts, finishes or fails (it has no batches)
    ("""    IF NEW.status NOT IN ({STATES}) THEN
        RETURN NEW;  -- the CHECK constraint refuses it, by name
    END IF;
    act := CASE""", """    IF NEW.status NOT IN ({STATES}) THEN
        RETURN NEW;  -- the CHECK constraint refuses it, by name
    END IF;
    IF NOT OLD.planned AND (SELECT q.status FROM queue_jobs q WHERE q.id = NEW.job_id)
                           = """ + UNPLANNED_MIRROR.format(s="NEW.status") + """ THEN
        NEW.updated_at := now();  -- following its queue row, whose move was checked and audited
        NEW.finished_at := CASE WHEN NEW.status IN ('done', 'failed', 'cancelled') THEN now() END;
        RETURN NEW;
    END IF;
    act := CASE"""),
    ("""    IF act = 'start' AND NOT EXISTS""", """    IF NOT OLD.planned AND act IN ('start', 'finish', 'fail') THEN
        why := 'no worker has planned this job yet: it has no batches (pause, resume or cancel it)';
    ELSIF act = 'start' AND NOT EXISTS"""),
    # the queue mirror of an unplanned row
    ("""    mirror text := CASE WHEN NEW.status IN ('done', 'failed', 'cancelled') THEN NEW.status ELSE 'running' END;
BEGIN""", """    mirror text := CASE WHEN NOT NEW.planned THEN """ + UNPLANNED_MIRROR.format(s="NEW.status") + """
                        WHEN NEW.status IN ('done', 'failed', 'cancelled') THEN NEW.status ELSE 'running' END;
BEGIN
    IF NOT NEW.planned AND mirror = 'pending' THEN  -- resumed or retried before planning: plan it now
        UPDATE queue_jobs SET status = mirror, run_after = LEAST(run_after, now())
        WHERE id = NEW.job_id AND status <> mirror;
        RETURN NULL;
    END IF;"""),
    # queue_jobs: an unplanned job's queue row may take the status its row stands for, or move as before
    ("""    SELECT status INTO job_status FROM backfill_jobs WHERE job_id = NEW.id;
    IF FOUND THEN""", """    SELECT status, planned INTO job_status, job_planned FROM backfill_jobs WHERE job_id = NEW.id;
    IF FOUND AND NOT job_planned AND NEW.status = """ + UNPLANNED_MIRROR.format(s="job_status") + """ THEN
        NEW.updated_at := now();  -- following its backfill_jobs row, whose move was checked and audited
        NEW.finished_at := CASE WHEN NEW.status IN ('done', 'failed', 'cancelled') THEN now() END;
        RETURN NEW;
    END IF;
    IF FOUND AND job_planned THEN"""),
    ("""    job_status text;
    mirror text;""", """    job_status text;
    job_planned boolean;
    mirror text;"""),
)


def _state_guard() -> ModuleType:
    """Migration 0005 (its file beside this one: revisions are files, not a package)."""
    spec = importlib.util.spec_from_file_location("tidegate_migration_0005", Path(__file__).with_name(
        "0005_state_guard.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _guards_of_0005() -> str:
    """Migration 0005's guard functions (as CREATE OR REPLACE), the text this migration changes."""
    return _state_guard().FUNCTIONS.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")


def _guards() -> str:
    text = _guards_of_0005()
    states = _state_guard().STATES
    for old, new in GUARD_CHANGES:
        old, new = old.replace("{STATES}", states), new.replace("{STATES}", states)
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def upgrade() -> None:
    op.execute(PACE)
    op.execute(RANGE_KINDS)
    op.execute(_guards())


def downgrade() -> None:
    op.execute(_guards_of_0005())
    op.execute("DROP TRIGGER IF EXISTS tidegate_queue_follow ON queue_jobs")
    op.execute("DROP TRIGGER IF EXISTS tidegate_queue_placeholder ON queue_jobs")
    op.execute("DROP FUNCTION IF EXISTS tidegate_queue_follow()")
    op.execute("DROP FUNCTION IF EXISTS tidegate_queue_placeholder()")
    op.execute("DELETE FROM backfill_jobs WHERE NOT planned")  # 0012's planners create them again
    op.execute("ALTER TABLE backfill_jobs DROP COLUMN planned")
    op.execute("DROP TABLE tidegate_range_kinds")
    op.execute("DROP TRIGGER IF EXISTS tidegate_pace_rescale ON backfill_jobs")
    op.execute("DROP FUNCTION IF EXISTS tidegate_pace_rescale()")
    op.execute("ALTER TABLE backfill_jobs DROP COLUMN paced_until")
