-- Least-privilege roles for tidegate. Run as the schema owner after `tidegate db upgrade`.
-- Rename the roles to taste; grant each to the login roles that need it.
-- tests/test_security.py applies this file and checks each role can do its part and nothing else.

-- Data engineers: enqueue jobs (CLI or INSERT) and read their status.
-- Enqueueing validates the job against its source table, so also
--   GRANT SELECT ON <source table> TO tg_enqueue;
CREATE ROLE tg_enqueue NOLOGIN;
GRANT SELECT ON queue_jobs, backfill_jobs, backfill_slices, etl_errors, tidegate_workers TO tg_enqueue;
GRANT INSERT ON queue_jobs TO tg_enqueue;
GRANT INSERT ON tidegate_audit TO tg_enqueue;
GRANT USAGE ON SEQUENCE tidegate_audit_id_seq TO tg_enqueue;

-- SREs: pause, resume, cancel, retry (CLI or the runbook's UPDATE) and read everything tidegate keeps.
CREATE ROLE tg_operator NOLOGIN;
GRANT SELECT ON queue_jobs, backfill_jobs, backfill_slices, etl_errors, tidegate_workers, tidegate_audit TO tg_operator;
GRANT UPDATE (status, status_reason, status_by, updated_at, finished_at) ON backfill_jobs TO tg_operator;
GRANT UPDATE (status, updated_at, finished_at) ON queue_jobs TO tg_operator;
GRANT UPDATE (attempts, run_after, last_error, updated_at) ON backfill_slices TO tg_operator;
GRANT INSERT ON tidegate_audit TO tg_operator;
GRANT USAGE ON SEQUENCE tidegate_audit_id_seq TO tg_operator;

-- The worker pool: the queue and checkpoint tables, nothing else of tidegate's.
-- Each job also needs its own data privileges, e.g. for the demo:
--   GRANT SELECT ON hero_snapshots TO tg_worker; GRANT SELECT, INSERT, UPDATE ON user_troops TO tg_worker;
CREATE ROLE tg_worker NOLOGIN;
GRANT SELECT, UPDATE ON queue_jobs TO tg_worker;
GRANT SELECT, INSERT, UPDATE ON backfill_jobs, backfill_slices TO tg_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON tidegate_workers TO tg_worker;
GRANT INSERT ON etl_errors, tidegate_audit TO tg_worker;
GRANT USAGE ON SEQUENCE etl_errors_id_seq, tidegate_audit_id_seq TO tg_worker;
