-- `tidegate rollout`'s reads of the job it drives (jobs/rollout.py).

-- name: job
-- description: The job's state, progress, holder and the knobs a rollout step sets.
SELECT status, status_reason, processed_count, held_by, held_since, row_limit, concurrency
FROM backfill_jobs WHERE job_id = :job_id AND planned;  -- once a worker planned it
