"""state guard: every status change, by CLI, admin API, worker or hand-written SQL, goes through the state machine

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Operators hold UPDATE on the status columns so that the runbook's SQL works verbatim. Grants
cannot say *which* values an UPDATE may write, so BEFORE UPDATE triggers do:

* ``backfill_jobs``: only the moves of ops/state-machine.md. The worker's own moves are told
  apart by the state of the data, never by a session variable a caller could set: ``done`` only
  when every slice is done, ``failed`` only when a slice has used its attempts, ``running`` from
  ``pending`` only when a worker holds a slice. Every pause, resume, cancel and retry writes its
  ``tidegate_audit`` row here, whoever made it (the CLI and the admin API no longer write one):
  the database is the single writer, so a runbook UPDATE is audited like ``tidegate pause``.
  An AFTER trigger then keeps the queue row in step and, on retry, gives unfinished slices their
  attempts back (what ``tidegate retry`` used to do in Python).
* ``queue_jobs``: a planned job's row mirrors its range job and moves only with it; an
  unplanned one moves by pause/resume/cancel/retry, or by a worker that counts an attempt.
* ``backfill_slices``: status only moves pending -> done by the slice's owner as it lets go;
  ``attempts`` only grows by the owner counting a failed batch; by hand ``attempts`` may go
  down and ``run_after`` may be set to now or earlier ("retry now"), nothing later.
* ``tidegate_audit.db_user``: the login (``session_user``) that caused each row, set by a
  trigger, so no INSERT can claim another. ``actor`` stays the free-text name (``--by``).

Cost: each trigger has a WHEN clause on the columns it guards, so the per-batch UPDATEs (which
change counters and cursors, not status) never call a function; see bench/guard.py.
The functions are SECURITY DEFINER with a fixed search_path, so the audit row and the queue
mirror are written whatever the caller may INSERT; ``session_user`` stays the caller's login.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STATES = "'pending', 'running', 'paused', 'done', 'failed', 'cancelled'"

FUNCTIONS = f"""
CREATE FUNCTION tidegate_actor() RETURNS text LANGUAGE sql STABLE AS $$
    -- the name the CLI was given with --by (a label, like status_by), else the login
    SELECT coalesce(nullif(current_setting('tidegate.actor', true), ''), session_user::text)
$$;

CREATE FUNCTION tidegate_audit_login() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.db_user := session_user;
    RETURN NEW;
END $$;

CREATE FUNCTION tidegate_job_guard() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
AS $$
DECLARE
    act text;
    why text;
    open_slices bigint;
BEGIN
    IF NEW.status NOT IN ({STATES}) THEN
        RETURN NEW;  -- the CHECK constraint refuses it, by name
    END IF;
    act := CASE
        WHEN OLD.status IN ('pending', 'running') AND NEW.status = 'paused' THEN 'pause'
        WHEN OLD.status = 'paused' AND NEW.status = 'running' THEN 'resume'
        WHEN OLD.status IN ('pending', 'running', 'paused') AND NEW.status = 'cancelled' THEN 'cancel'
        WHEN OLD.status IN ('failed', 'cancelled') AND NEW.status = 'running' THEN 'retry'
        WHEN OLD.status = 'pending' AND NEW.status = 'running' THEN 'start'
        WHEN OLD.status IN ('pending', 'running', 'paused') AND NEW.status = 'done' THEN 'finish'
        WHEN OLD.status IN ('pending', 'running', 'paused') AND NEW.status = 'failed' THEN 'fail'
    END;
    IF act = 'start' AND NOT EXISTS (SELECT 1 FROM backfill_slices
                                     WHERE job_id = NEW.job_id AND locked_by IS NOT NULL) THEN
        why := 'a job starts running when a worker claims its first slice';
    ELSIF act = 'finish' THEN
        SELECT count(*) INTO open_slices FROM backfill_slices WHERE job_id = NEW.job_id AND status <> 'done';
        IF open_slices > 0 THEN
            why := format('a job is done when every slice is done, and %s slice(s) are not', open_slices);
        END IF;
    ELSIF act = 'fail' AND NOT EXISTS (
            SELECT 1 FROM backfill_slices s JOIN queue_jobs q ON q.id = s.job_id
            WHERE s.job_id = NEW.job_id AND s.attempts >= q.max_attempts)
        -- the worker's other reasons, written by it in the same transaction in columns tg_operator
        -- cannot write: a payload it cannot run, worker deaths during the job's batches (0007)
        AND coalesce(NEW.last_error, '') NOT LIKE 'invalid job:%'
        AND coalesce((to_jsonb(NEW) ->> 'worker_deaths')::int, 0) = 0 THEN
        why := 'a job fails when a slice has used its attempts; to stop it, cancel it';
    ELSIF act IS NULL THEN
        why := 'the state machine has no such move';
    END IF;
    IF why IS NOT NULL THEN
        RAISE EXCEPTION 'job % cannot go from % to %: %; from % the allowed moves are: %',
            NEW.job_id, OLD.status, NEW.status, why, OLD.status,
            CASE OLD.status
                WHEN 'pending' THEN 'paused (pause), cancelled (cancel); by a worker: running, done, failed'
                WHEN 'running' THEN 'paused (pause), cancelled (cancel); by a worker: done, failed'
                WHEN 'paused' THEN 'running (resume), cancelled (cancel)'
                WHEN 'failed' THEN 'running (retry)'
                WHEN 'cancelled' THEN 'running (retry)'
                ELSE 'none (done is final)' END
            USING ERRCODE = 'check_violation', HINT = 'see ops/state-machine.md';
    END IF;
    NEW.updated_at := now();
    NEW.finished_at := CASE WHEN NEW.status IN ('done', 'failed', 'cancelled')
                            THEN coalesce(NEW.finished_at, now()) END;
    IF act IN ('pause', 'resume', 'cancel', 'retry') THEN
        -- an UPDATE that did not say who or why (a runbook's): the login, and the action
        IF NEW.status_by IS NOT DISTINCT FROM OLD.status_by THEN
            NEW.status_by := tidegate_actor();
        END IF;
        IF NEW.status_reason IS NOT DISTINCT FROM OLD.status_reason THEN
            NEW.status_reason := coalesce(nullif(current_setting('tidegate.reason', true), ''), act || ' by SQL');
        END IF;
        INSERT INTO tidegate_audit (actor, action, job_id, details)
        VALUES (NEW.status_by, act, NEW.job_id,
                jsonb_build_object('from', OLD.status, 'to', NEW.status, 'reason', NEW.status_reason));
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION tidegate_job_follow() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
AS $$
DECLARE
    mirror text := CASE WHEN NEW.status IN ('done', 'failed', 'cancelled') THEN NEW.status ELSE 'running' END;
BEGIN
    UPDATE queue_jobs SET status = mirror WHERE id = NEW.job_id AND status <> mirror;
    IF OLD.status IN ('failed', 'cancelled') AND NEW.status = 'running' THEN  -- retry: attempts back, run now
        UPDATE backfill_slices SET attempts = 0, run_after = now(), last_error = NULL, updated_at = now()
        WHERE job_id = NEW.job_id AND status = 'pending';
    ELSIF OLD.status = 'paused' AND NEW.status IN ('pending', 'running') THEN
        -- resume: slices backing off after failed batches (a full disk the SRE just fixed) run now,
        -- their attempts still counted
        UPDATE backfill_slices SET run_after = now(), updated_at = now()
        WHERE job_id = NEW.job_id AND status = 'pending' AND run_after > now();
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION tidegate_queue_guard() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT
AS $$
DECLARE
    job_status text;
    mirror text;
    act text;
BEGIN
    IF NEW.status NOT IN ({STATES}) THEN
        RETURN NEW;  -- the CHECK constraint refuses it, by name
    END IF;
    SELECT status INTO job_status FROM backfill_jobs WHERE job_id = NEW.id;
    IF FOUND THEN
        mirror := CASE WHEN job_status IN ('done', 'failed', 'cancelled') THEN job_status ELSE 'running' END;
        IF NEW.status <> mirror THEN
            RAISE EXCEPTION 'job % cannot go from % to % in queue_jobs: it is planned, and its queue row follows'
                ' backfill_jobs (%, so %); move it there: pause, resume, cancel or retry (ops/state-machine.md)',
                NEW.id, OLD.status, NEW.status, job_status, mirror
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.updated_at := now();
        NEW.finished_at := CASE WHEN NEW.status IN ('done', 'failed', 'cancelled') THEN now() END;
        RETURN NEW;
    END IF;
    act := CASE
        WHEN OLD.status = 'pending' AND NEW.status = 'paused' THEN 'pause'
        WHEN OLD.status = 'paused' AND NEW.status = 'pending' THEN 'resume'
        WHEN OLD.status IN ('pending', 'paused') AND NEW.status = 'cancelled' THEN 'cancel'
        WHEN OLD.status IN ('failed', 'cancelled') AND NEW.status = 'pending' THEN 'retry'
    END;
    IF act IS NULL THEN
        -- a worker's moves: a claim or a failed planning counts an attempt (tg_operator may not
        -- write attempts); a one-shot job goes back only within the transaction that claimed it
        IF OLD.status = 'pending' AND NEW.status IN ('done', 'failed') AND NEW.attempts > OLD.attempts THEN
            RETURN NEW;
        END IF;
        IF OLD.status = 'done' AND NEW.status IN ('pending', 'failed')
           AND (SELECT CAST(CAST(xmin AS text) AS bigint) FROM queue_jobs WHERE id = OLD.id)
               = txid_current() % 4294967296 THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'job % cannot go from % to % in queue_jobs: the state machine has no such move;'
            ' a job no worker has planned yet allows: %', NEW.id, OLD.status, NEW.status,
            CASE OLD.status
                WHEN 'pending' THEN 'paused (pause), cancelled (cancel)'
                WHEN 'paused' THEN 'pending (resume), cancelled (cancel)'
                WHEN 'failed' THEN 'pending (retry)'
                WHEN 'cancelled' THEN 'pending (retry)'
                ELSE 'none (done is final)' END
            USING ERRCODE = 'check_violation', HINT = 'see ops/state-machine.md';
    END IF;
    NEW.updated_at := now();
    NEW.finished_at := CASE WHEN NEW.status IN ('done', 'failed', 'cancelled') THEN now() END;
    IF act = 'retry' THEN
        NEW.run_after := now();
    END IF;
    INSERT INTO tidegate_audit (actor, action, job_id, details)
    VALUES (tidegate_actor(), act, NEW.id,
            jsonb_build_object('from', OLD.status, 'to', NEW.status,
                               'reason', coalesce(nullif(current_setting('tidegate.reason', true), ''),
                                                  act || ' by SQL')));
    RETURN NEW;
END $$;

CREATE FUNCTION tidegate_slice_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- the worker's moves all let go of the slice in the same UPDATE (tg_operator may not write locked_by)
    owner_lets_go boolean := OLD.locked_by IS NOT NULL AND NEW.locked_by IS NULL;
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (OLD.status = 'pending' AND NEW.status = 'done'
                                                       AND owner_lets_go) THEN
        RAISE EXCEPTION 'slice % of job % cannot go from % to %: a slice is done when its owner finishes its last'
            ' batch, and never goes back; by hand you may set attempts lower and run_after to now() or earlier',
            OLD.slice_no, OLD.job_id, OLD.status, NEW.status USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.attempts > OLD.attempts AND NOT owner_lets_go THEN
        RAISE EXCEPTION 'slice % of job %: attempts cannot go up from % to % by hand (only a failed batch counts one);'
            ' you may set it lower (0 gives the slice all its retries back)',
            OLD.slice_no, OLD.job_id, OLD.attempts, NEW.attempts USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.run_after IS DISTINCT FROM OLD.run_after AND NOT owner_lets_go
       AND NOT (isfinite(NEW.run_after) AND NEW.run_after <= clock_timestamp()) THEN
        RAISE EXCEPTION 'slice % of job %: run_after cannot be set to % by hand: only now() or earlier'
            ' ("retry now"); to hold a job, pause it (status shows a pause, not a hidden date)',
            OLD.slice_no, OLD.job_id, NEW.run_after USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
"""

TRIGGERS = """
CREATE TRIGGER tidegate_audit_login BEFORE INSERT ON tidegate_audit
    FOR EACH ROW EXECUTE FUNCTION tidegate_audit_login();
CREATE TRIGGER tidegate_job_guard BEFORE UPDATE OF status ON backfill_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION tidegate_job_guard();
CREATE TRIGGER tidegate_job_follow AFTER UPDATE OF status ON backfill_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION tidegate_job_follow();
CREATE TRIGGER tidegate_queue_guard BEFORE UPDATE OF status ON queue_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION tidegate_queue_guard();
CREATE TRIGGER tidegate_slice_guard BEFORE UPDATE OF status, attempts, run_after ON backfill_slices
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.attempts IS DISTINCT FROM NEW.attempts
                       OR OLD.run_after IS DISTINCT FROM NEW.run_after)
    EXECUTE FUNCTION tidegate_slice_guard();
"""


def upgrade() -> None:
    op.execute("ALTER TABLE tidegate_audit ADD COLUMN db_user text")
    op.execute("ALTER TABLE tidegate_audit ALTER COLUMN db_user SET DEFAULT session_user")
    op.execute(FUNCTIONS)
    op.execute(TRIGGERS)


def downgrade() -> None:
    for trigger, table in (("tidegate_slice_guard", "backfill_slices"), ("tidegate_queue_guard", "queue_jobs"),
                           ("tidegate_job_follow", "backfill_jobs"), ("tidegate_job_guard", "backfill_jobs"),
                           ("tidegate_audit_login", "tidegate_audit")):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    for function in ("tidegate_slice_guard", "tidegate_queue_guard", "tidegate_job_follow", "tidegate_job_guard",
                     "tidegate_audit_login", "tidegate_actor"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.execute("ALTER TABLE tidegate_audit DROP COLUMN db_user")
