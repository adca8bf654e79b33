-- Least-privilege roles for tidegate. Run as the schema owner after `tidegate db upgrade`.
-- Rename the roles to taste; grant each to the login roles that need it.
-- tests/test_security.py applies this file and checks each role can do its part and nothing else.
--
-- What bounds a job is the worker's role. A job's own SQL statement (`sql`, the CLI's --handler sql:PATH)
-- runs with the worker's privileges, so it runs only on a pool started with --allow-sql and only when
-- the login that enqueued it (recorded by the database: queue_jobs.enqueued_by) is a member of
-- tg_sql_author (ops/security.md, Ad-hoc SQL). Grant tg_worker only the tables jobs should touch.
-- Code and files are not the payload's to choose: a handler must be one the worker loaded at start (the
-- tidegate.handlers entry points, $TIDEGATE_HANDLERS, `tidegate worker --handlers`), and an archive
-- layout a shipped one or one an operator registered in archive_layouts (`tidegate archive layout add`).

-- Data engineers: enqueue jobs (CLI or INSERT) and read their status. Enqueueing validates the
-- job against its tables, so also grant what it reads, e.g.
--   GRANT SELECT ON hero_snapshots TO tg_enqueue;              -- backfill-range's source
--   GRANT SELECT ON es_streams, es_events TO tg_enqueue;       -- archive: discover and dry run
-- etl_errors.sample is a copy of the failed source row: it is readable only with a grant on the
-- column (give it to a login together with SELECT on the job's source; `tidegate errors` also checks
-- the source and says "sample hidden: no SELECT on SOURCE" otherwise).
CREATE ROLE tg_enqueue NOLOGIN;
GRANT SELECT ON tidegate_alembic_version TO tg_enqueue;  -- every command checks the schema revision
GRANT SELECT ON queue_jobs, backfill_jobs, backfill_slices, tidegate_workers, tidegate_live_workers,
                tidegate_job_rates TO tg_enqueue;
GRANT SELECT (id, job_id, slice_no, item_key, error_type, message, created_at) ON etl_errors TO tg_enqueue;
GRANT INSERT ON queue_jobs TO tg_enqueue;
GRANT INSERT ON tidegate_audit TO tg_enqueue;
GRANT USAGE ON SEQUENCE tidegate_audit_id_seq TO tg_enqueue;
-- archive: discover and the dry run snapshot the selection into archive_candidates and roll it back;
-- `archive report`/`status` read the audit; watch-deletions enqueues from its own cursor tables
GRANT SELECT, INSERT, UPDATE ON archive_candidates TO tg_enqueue;
GRANT SELECT ON archive_audit, archive_audit_batches TO tg_enqueue;
GRANT SELECT, INSERT, UPDATE ON archive_watch_cursors, archive_watch_seen TO tg_enqueue;
-- archive jobs name their layout: a shipped one or a registered one (read when enqueueing)
GRANT SELECT ON archive_layouts TO tg_enqueue;
GRANT SELECT ON archive_documents TO tg_enqueue;

-- approved statements: enqueuers name them (payload sql_approved, --handler sql-approved:NAME)
GRANT SELECT ON tidegate_sql_approved TO tg_enqueue;

-- Data engineers trusted to have the workers run statements they write (payload sql, --handler
-- sql:PATH) with the worker's privileges, on pools started with --allow-sql. Grant it to their logins
-- (GRANT tg_sql_author TO alice); they need tg_enqueue too. Everyone else names an approved statement.
-- A superuser passes this check without the grant, as in PostgreSQL itself.
CREATE ROLE tg_sql_author NOLOGIN;

-- SREs: pause, resume, cancel, retry (CLI or the runbook's UPDATE) and read what tidegate keeps, except
-- the copies of source rows in etl_errors.sample (as for tg_enqueue above).
-- `archive report` and `archive status` count what is left in the event store, so also e.g.
--   GRANT SELECT ON es_streams, es_events TO tg_operator;
-- The UPDATE grants below let the runbook's SQL work verbatim; what those UPDATEs may write is the
-- state machine's business: triggers (migration 0005) refuse other moves (done by hand, planned ->
-- pending, run_after in the future, attempts up) and audit every pause, resume, cancel and retry
-- with the login that made it. ops/security.md says who can make what happen.
CREATE ROLE tg_operator NOLOGIN;
GRANT SELECT ON tidegate_alembic_version TO tg_operator;  -- every command checks the schema revision
GRANT SELECT ON queue_jobs, backfill_jobs, backfill_slices, tidegate_workers, tidegate_live_workers, tidegate_audit,
                tidegate_job_rates, archive_candidates, archive_audit, archive_audit_batches, archive_guards,
                archive_documents TO tg_operator;
GRANT SELECT (id, job_id, slice_no, item_key, error_type, message, created_at) ON etl_errors TO tg_operator;
GRANT UPDATE (status, status_reason, status_by, updated_at, finished_at) ON backfill_jobs TO tg_operator;
GRANT UPDATE (status, updated_at, finished_at) ON queue_jobs TO tg_operator;
GRANT UPDATE (attempts, run_after, last_error, updated_at) ON backfill_slices TO tg_operator;
GRANT INSERT ON tidegate_audit TO tg_operator;
GRANT USAGE ON SEQUENCE tidegate_audit_id_seq TO tg_operator;
-- register event-store layouts (`tidegate archive layout add FILE [--replace]`): which tables an
-- archive job may move is the operator's choice, not the enqueuer's
GRANT SELECT, INSERT, UPDATE ON archive_layouts TO tg_operator;
-- `tidegate archive partition` (create a month's partition of the user's events table, detach or drop
-- an empty one) is DDL on the user's table: PostgreSQL lets only the table's owner do it, so it runs as
-- the event store's owner (who is also given INSERT ON tidegate_audit and USAGE ON SEQUENCE
-- tidegate_audit_id_seq, for the audit row), never as tg_operator or a worker.

-- approve and revoke statements any enqueuer may then name (tidegate sql approve FILE / revoke NAME)
GRANT SELECT, INSERT, UPDATE, DELETE ON tidegate_sql_approved TO tg_operator;

-- The worker pool: the queue and checkpoint tables, nothing else of tidegate's.
-- Each job also needs its own data privileges, e.g. for the demo:
--   GRANT SELECT ON hero_snapshots TO tg_worker; GRANT SELECT, INSERT, UPDATE ON user_troops TO tg_worker;
-- and for archive-range on tidegate's demo event store (move strategy):
--   GRANT SELECT, UPDATE ON es_streams TO tg_worker;
--   GRANT SELECT, DELETE ON es_events, es_stream_summaries TO tg_worker;   -- hot events, read model
--   GRANT INSERT ON es_events_archive, es_stream_summaries_archive TO tg_worker;
-- (unarchive-range: the same the other way round)
CREATE ROLE tg_worker NOLOGIN;
GRANT SELECT ON tidegate_alembic_version TO tg_worker;  -- every command checks the schema revision
GRANT SELECT, UPDATE ON queue_jobs TO tg_worker;
GRANT SELECT, INSERT, UPDATE ON backfill_jobs, backfill_slices TO tg_worker;
GRANT SELECT, INSERT, UPDATE ON tidegate_job_rates TO tg_worker;  -- each batch's minute of the rate history
GRANT SELECT, INSERT, UPDATE, DELETE ON tidegate_workers TO tg_worker;
GRANT SELECT ON tidegate_live_workers TO tg_worker;  -- the lease rule (migration 0011): who owns a slice
GRANT INSERT ON etl_errors, tidegate_audit TO tg_worker;
GRANT USAGE ON SEQUENCE etl_errors_id_seq, tidegate_audit_id_seq TO tg_worker;
GRANT SELECT, INSERT, UPDATE ON archive_candidates TO tg_worker;
GRANT SELECT, INSERT ON archive_audit_batches TO tg_worker;
GRANT SELECT ON archive_audit TO tg_worker;
GRANT SELECT ON archive_layouts TO tg_worker;
GRANT USAGE ON SEQUENCE archive_audit_batches_id_seq TO tg_worker;
GRANT SELECT, INSERT, DELETE ON archive_documents TO tg_worker;  -- projection documents of archived streams
GRANT SELECT ON tidegate_sql_approved TO tg_worker;
-- which queue_jobs types are range kinds (migration 0013: their queued jobs get a backfill_jobs row at
-- once, so the runbook's pause catches them; the trigger reads it as its owner). Readable by all three.
GRANT SELECT ON tidegate_range_kinds TO tg_enqueue, tg_operator, tg_worker;
-- On a Citus coordinator only (migration 0018): every batch copies nothing into it, which makes Citus commit
-- the batch in two phases (ops/citus.md). A server without Citus has no such table.
DO $$
BEGIN
    IF to_regclass('tidegate_two_phase') IS NOT NULL THEN
        GRANT INSERT ON tidegate_two_phase TO tg_worker;
    END IF;
END
$$;

-- Retention (the pool's maintenance thread, or `tidegate maintenance run-once` from cron): deletes
-- finished jobs and old errors. Grant it to the pool's login, or run the pool with --no-maintenance
-- and the cron job as a login holding this role.
CREATE ROLE tg_maintenance NOLOGIN;
GRANT SELECT ON tidegate_alembic_version TO tg_maintenance;  -- every command checks the schema revision
GRANT SELECT, DELETE ON queue_jobs, backfill_jobs, backfill_slices, archive_candidates, tidegate_job_rates
    TO tg_maintenance;
GRANT SELECT (id, created_at), DELETE ON etl_errors TO tg_maintenance;      -- not the samples
