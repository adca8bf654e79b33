-- Runtime queries of tidegate. One statement per name; named parameters only.
-- Lease rule used throughout: a slice is owned by the worker named in
-- locked_by while that worker is live, i.e. in the view tidegate_live_workers
-- (migration 0011: its heartbeat is younger than its lease).

-- name: register_worker
-- description: Announce a worker process (its heartbeat row is its lease).
INSERT INTO tidegate_workers (id, pool, hostname, pid, lease_seconds)
VALUES (:worker_id, :pool, :hostname, :pid, :lease_seconds)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopping = false;

-- name: heartbeat
-- description: Renew this worker's lease; no row means it was reaped and must re-register.
UPDATE tidegate_workers SET heartbeat_at = now() WHERE id = :worker_id RETURNING id;

-- name: unregister_worker
-- description: Give back every slice this worker holds and drop its lease row.
WITH released AS (
    UPDATE backfill_slices SET locked_by = NULL, updated_at = now()
    WHERE locked_by = :worker_id RETURNING 1
)
DELETE FROM tidegate_workers WHERE id = :worker_id;

-- name: reap_workers
-- description: Forget workers whose heartbeat stopped long ago (their slices are already claimable).
DELETE FROM tidegate_workers
WHERE heartbeat_at < now() - make_interval(secs => lease_seconds * 20);

-- name: claim_queue_job
-- description: Take one pending queue job to plan; SKIP LOCKED lets many workers do this at once.
-- payload as text: tidegate parses it itself, so a payload Python cannot read fails its job (store.py)
SELECT id, type, CAST(payload AS text) AS payload, queue, priority, attempts, max_attempts, enqueued_by
FROM queue_jobs
WHERE status = 'pending'
  AND run_after <= now()
  AND queue = ANY(:queues)
  AND (cardinality(CAST(:types AS text[])) = 0 OR type = ANY(:types))
  AND type <> ALL(CAST(:one_shot AS text[]))
ORDER BY priority DESC, run_after, created_at
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: claim_one_shots
-- description: Take a handful of small jobs (kinds that need no slices) to run in this transaction,
-- marked done in the same statement: they run before it commits, so the mark commits with their
-- effects or not at all (a job that raises is moved back by retry_queue_job, counted). The rows are
-- found once, by the claim index, instead of again by id in a second statement.
-- One ordered scan of queue_jobs_claim_idx per queue (queue = ANY(...) cannot use the index's order,
-- which meant a sort of every pending row per claim); with several queues the surplus rows stay
-- locked, unused, until this transaction ends.
WITH claimed AS (
    SELECT j.id, j.priority, j.run_after, j.created_at
    FROM unnest(CAST(:queues AS text[])) AS w(name)
    CROSS JOIN LATERAL (
        SELECT id, priority, run_after, created_at
        FROM queue_jobs
        WHERE status = 'pending'
          AND queue = w.name
          AND run_after <= now()
          AND type = ANY(:types)
        ORDER BY priority DESC, run_after, created_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) j
    ORDER BY j.priority DESC, j.run_after, j.created_at
    LIMIT :limit
)
UPDATE queue_jobs q
SET status = 'done', attempts = q.attempts + 1, last_error = NULL, updated_at = now(), finished_at = now()
FROM claimed c
WHERE q.id = c.id
RETURNING q.id, q.type, CAST(q.payload AS text) AS payload, q.queue, q.priority, q.attempts, q.max_attempts;

-- name: retry_queue_job
-- description: A queue job whose run (or planning) broke: back off, or fail once out of attempts.
-- :add is 1, or 0 when the claim counted the attempt already (one-shot jobs).
UPDATE queue_jobs
SET attempts = attempts + :add, last_error = :error, updated_at = now(),
    status = CASE WHEN attempts + :add >= max_attempts THEN 'failed' ELSE 'pending' END,
    finished_at = CASE WHEN attempts + :add >= max_attempts THEN now() END,
    run_after = now() + make_interval(secs => LEAST(:backoff_max, :backoff_base * 2 ^ (attempts + :add - 1))
                                              * (0.8 + random() * 0.4))
WHERE id = :job_id;

-- name: insert_range_job
-- description: The checkpoint row of a planned job: new, or the row its queue row got at enqueue (migration
-- description: 0013) filled in. Its status stays as it is: a pause, resume or cancel made before planning holds.
INSERT INTO backfill_jobs AS b (job_id, kind, owner, params, key_type, from_key, to_key, from_ts, to_ts,
                           batch_size, concurrency, total_estimate, last_checkpoint,
                           max_rows_per_second, sleep_between_batches, target_batch_seconds, min_batch_size,
                           max_batch_size, row_limit, error_rate_threshold, enqueued_by)
VALUES (:job_id, :kind, :owner, CAST(:params AS jsonb), :key_type, :from_key, :to_key,
        :from_ts, :to_ts, :batch_size, :concurrency, :total_estimate, :last_checkpoint,
        :max_rows_per_second, :sleep_between_batches, :target_batch_seconds, :min_batch_size,
        :max_batch_size, :row_limit, :error_rate_threshold,
        (SELECT enqueued_by FROM queue_jobs WHERE id = :job_id))
ON CONFLICT (job_id) DO UPDATE
SET (kind, owner, params, key_type, from_key, to_key, from_ts, to_ts, batch_size, concurrency, total_estimate,
     last_checkpoint, max_rows_per_second, sleep_between_batches, target_batch_seconds, min_batch_size,
     max_batch_size, row_limit, error_rate_threshold, enqueued_by, planned, started_at, updated_at) =
    (excluded.kind, excluded.owner, excluded.params, excluded.key_type, excluded.from_key, excluded.to_key,
     excluded.from_ts, excluded.to_ts, excluded.batch_size, excluded.concurrency, excluded.total_estimate,
     excluded.last_checkpoint, excluded.max_rows_per_second, excluded.sleep_between_batches,
     excluded.target_batch_seconds, excluded.min_batch_size, excluded.max_batch_size, excluded.row_limit,
     excluded.error_rate_threshold, excluded.enqueued_by, true, now(), now())
WHERE NOT b.planned;

-- name: insert_slice
-- description: One slice of a planned job, with its own cursor.
INSERT INTO backfill_slices (job_id, slice_no, start_key, end_key, checkpoint)
VALUES (:job_id, :slice_no, :start_key, :end_key, :start_key);

-- name: mark_queue_job_planned
-- description: The queue row follows its range job from now on.
UPDATE queue_jobs SET status = 'running', updated_at = now(), last_error = NULL
WHERE id = :job_id AND status = 'pending';

-- name: job_planned_already
-- description: Does this queue job have its range job already (a planned job's queue row set back to pending)?
SELECT EXISTS (SELECT 1 FROM backfill_jobs WHERE job_id = :job_id AND planned);

-- name: lock_unplanned
-- description: A claimed queue job's unplanned backfill_jobs row (migration 0013), locked for planning; locked
-- description: by someone else (a pause in flight, which waits for the queue row next) it is left alone.
SELECT EXISTS (SELECT 1 FROM backfill_jobs WHERE job_id = :job_id AND NOT planned) AS present,
       (SELECT status FROM backfill_jobs WHERE job_id = :job_id AND NOT planned
        FOR NO KEY UPDATE SKIP LOCKED) AS status;

-- name: restore_planned_queue_job
-- description: Put a planned job's queue row back to what its range job says it is.
UPDATE queue_jobs q
SET status = CASE WHEN j.status IN ('done', 'failed', 'cancelled') THEN j.status ELSE 'running' END,
    updated_at = now()
FROM backfill_jobs j
WHERE q.id = :job_id AND j.job_id = q.id;

-- name: fail_claimed_one_shot
-- description: A one-shot job the claim marked done cannot run at all (its payload cannot be read).
UPDATE queue_jobs SET status = 'failed', last_error = :error, updated_at = now(), finished_at = now()
WHERE id = :job_id;

-- name: fail_queue_job
-- description: A job that cannot run (bad payload, unknown type): failed, with the reason, nothing else touched.
UPDATE queue_jobs
SET status = 'failed', last_error = :error, attempts = attempts + 1,
    updated_at = now(), finished_at = now()
WHERE id = :job_id AND status IN ('pending', 'running');

-- name: claim_slice
-- description: Take one slice of an active job that nobody live owns, within the job's concurrency.
SELECT s.job_id, s.slice_no, s.locked_by
FROM backfill_slices s
JOIN backfill_jobs j ON j.job_id = s.job_id
JOIN queue_jobs q ON q.id = s.job_id
WHERE j.status IN ('pending', 'running')
  AND s.status = 'pending'
  AND s.run_after <= now()
  AND q.queue = ANY(:queues)
  AND j.kind = ANY(:kinds)
  -- unowned, owned by a worker whose lease expired, or our own (we lost track of it in an outage)
  AND (s.locked_by IS NULL OR s.locked_by = :worker_id
       OR NOT EXISTS (SELECT 1 FROM tidegate_live_workers w WHERE w.id = s.locked_by))
  AND (SELECT count(*) FROM backfill_slices o JOIN tidegate_live_workers w ON w.id = o.locked_by
       WHERE o.job_id = s.job_id AND o.status = 'pending' AND o.slice_no <> s.slice_no) < j.concurrency
ORDER BY q.priority DESC, j.created_at, s.slice_no
LIMIT 1
FOR UPDATE OF s SKIP LOCKED;

-- name: take_slice
-- description: Record the new owner of a claimed slice.
UPDATE backfill_slices SET locked_by = :worker_id, locked_at = now(), updated_at = now()
WHERE job_id = :job_id AND slice_no = :slice_no;

-- name: start_job
-- description: First claim of a planned job.
UPDATE backfill_jobs SET status = 'running', updated_at = now()
WHERE job_id = :job_id AND status = 'pending';

-- name: begin_batch
-- description: Inside the batch transaction: fence on ownership, lock the slice, re-read the job's status and knobs.
SELECT j.status, j.kind, CAST(j.params AS text) AS params, j.key_type, j.batch_size, s.checkpoint, s.end_key, s.batch_size_now,
       -- which server backend runs this transaction, and since when: the watchdog cancels exactly it
       pg_backend_pid() AS backend_pid, now() AS xact_start,
       j.enqueued_by,  -- whose own SQL the batch may run (worker/trust.py), copied at planning
       j.processed_count, j.concurrency, j.max_rows_per_second, j.sleep_between_batches, j.target_batch_seconds,
       j.min_batch_size, j.max_batch_size, j.row_limit,
       -- concurrency lowered under us: the slices with the lowest numbers keep running, the others let go
       (SELECT count(*) FROM backfill_slices o JOIN tidegate_live_workers w ON w.id = o.locked_by
        WHERE o.job_id = s.job_id AND o.status = 'pending' AND o.slice_no < s.slice_no) >= j.concurrency
         AS over_concurrency,
       -- concurrency raised under us: fewer slices than wanted, so this batch cuts its own slice in two
       (SELECT count(*) FROM backfill_slices o
        WHERE o.job_id = s.job_id AND o.status = 'pending') < j.concurrency AS short_of_slices
FROM backfill_slices s
JOIN backfill_jobs j ON j.job_id = s.job_id
WHERE s.job_id = :job_id AND s.slice_no = :slice_no
  AND s.locked_by = :worker_id AND s.status = 'pending'
FOR NO KEY UPDATE OF s;

-- name: advance_slice
-- description: Move the slice cursor and counters (done when its end is reached), and read every slice's
-- description: cursor for the job's low watermark, in one round trip: this slice's as just written (moved),
-- description: the others' as they are. No row with moved: the slice is not ours (begin_batch's lock says it is).
WITH moved AS (
UPDATE backfill_slices
SET checkpoint = :checkpoint,
    processed_count = processed_count + :processed,
    error_count = error_count + :errors,
    batches = batches + 1,
    attempts = 0,
    last_error = NULL,
    status = CASE WHEN :exhausted THEN 'done' ELSE 'pending' END,
    locked_by = CASE WHEN :exhausted THEN NULL ELSE locked_by END,
    batch_size_now = CAST(:next_batch_size AS integer),
    updated_at = now()
WHERE job_id = :job_id AND slice_no = :slice_no AND locked_by = :worker_id
RETURNING status, checkpoint, end_key)
SELECT true AS moved, status, checkpoint, end_key FROM moved
UNION ALL
SELECT false, status, checkpoint, end_key FROM backfill_slices WHERE job_id = :job_id AND slice_no <> :slice_no;

-- name: advance_job
-- description: The job's totals and low watermark (takes the job row lock, which serialises finishers); pauses
-- description: the job when its error rate over the last window, or its canary row limit, says so; adds the
-- description: batch to its minute of tidegate_job_rates (after the job row lock: it reads the UPDATE's RETURNING);
-- description: moves the job's pace reservation on and returns the seconds to wait before the slice's next batch.
WITH job AS (
UPDATE backfill_jobs
SET processed_count = processed_count + :processed,
    error_count = error_count + :errors,
    last_checkpoint = :watermark,
    worker_deaths = 0,  -- a batch came through: deaths count only in a row (worker/deadline.py)
    window_processed = CASE WHEN window_processed + :processed >= error_window THEN 0
                            ELSE window_processed + :processed END,
    window_errors = CASE WHEN window_processed + :processed >= error_window THEN 0 ELSE window_errors + :errors END,
    status = CASE
        WHEN status NOT IN ('pending', 'running') THEN status
        WHEN window_processed + :processed >= error_window
             AND window_errors + :errors > error_rate_threshold * (window_processed + :processed) THEN 'paused'
        WHEN row_limit IS NOT NULL AND processed_count + :processed >= row_limit THEN 'paused'
        ELSE status END,
    status_reason = CASE
        WHEN status NOT IN ('pending', 'running') THEN status_reason
        WHEN window_processed + :processed >= error_window
             AND window_errors + :errors > error_rate_threshold * (window_processed + :processed)
          THEN format('error rate %s%% over the last %s items is above %s%%',
                      round(100.0 * (window_errors + :errors) / (window_processed + :processed), 2),
                      window_processed + :processed, round(CAST(100 * error_rate_threshold AS numeric), 2))
        WHEN row_limit IS NOT NULL AND processed_count + :processed >= row_limit THEN 'canary limit reached'
        ELSE status_reason END,
    status_by = CASE
        WHEN status NOT IN ('pending', 'running') THEN status_by
        WHEN (window_processed + :processed >= error_window
              AND window_errors + :errors > error_rate_threshold * (window_processed + :processed))
          OR (row_limit IS NOT NULL AND processed_count + :processed >= row_limit) THEN 'tidegate'
        ELSE status_by END,
    -- the job's rate cap, whatever runs it (migration 0013): the batch's rows reserve their share of time
    -- after the job's reservation so far, or after this batch's start if that lies behind it (no credit
    -- for idle time); the slice waits until then (pace_wait) before its next batch
    paced_until = CASE WHEN max_rows_per_second IS NULL THEN NULL
                       ELSE LEAST(GREATEST(paced_until, now()) + make_interval(secs => :processed / max_rows_per_second),
                                  clock_timestamp() + interval '1 day') END,  -- never a longer wait (throttle.MAX_PAUSE)
    updated_at = now()
WHERE job_id = :job_id
RETURNING job_id, status, status_reason,
          GREATEST(coalesce(extract(epoch FROM paced_until - clock_timestamp()), 0), 0) AS pace_wait
), rate AS (
INSERT INTO tidegate_job_rates AS r (job_id, minute, rows, errors, batches, batch_seconds, max_batch_seconds)
SELECT job.job_id, date_trunc('minute', now()), :processed, :errors, 1, s.seconds, s.seconds
FROM job, (SELECT GREATEST(extract(epoch FROM clock_timestamp() - now()), 0) AS seconds) s
ON CONFLICT (job_id, minute) DO UPDATE
SET rows = r.rows + excluded.rows, errors = r.errors + excluded.errors, batches = r.batches + 1,
    batch_seconds = r.batch_seconds + excluded.batch_seconds,
    max_batch_seconds = GREATEST(r.max_batch_seconds, excluded.max_batch_seconds)
)
SELECT status, status_reason, pace_wait FROM job;

-- name: finish_job_if_done
-- description: Done when no slice is left; runs after advance_job so concurrent finishers see each other.
UPDATE backfill_jobs
SET status = 'done', status_reason = 'all slices done', finished_at = now(), updated_at = now()
WHERE job_id = :job_id AND status IN ('pending', 'running', 'paused')
  AND NOT EXISTS (SELECT 1 FROM backfill_slices WHERE job_id = :job_id AND status <> 'done')
RETURNING job_id;

-- name: finish_queue_job
-- description: Mirror a terminal range-job state onto its queue row.
UPDATE queue_jobs SET status = :status, updated_at = now(), finished_at = now()
WHERE id = :job_id AND status IN ('pending', 'running', 'paused');

-- name: insert_item_error
-- description: One failed item of a batch (written in the batch's transaction).
INSERT INTO etl_errors (job_id, slice_no, item_key, error_type, message, sample)
VALUES (:job_id, :slice_no, :item_key, :error_type, :message, :sample);

-- name: fail_slice_attempt
-- description: A batch failed: release the slice, back off, count the attempt.
UPDATE backfill_slices
SET attempts = attempts + 1, last_error = :error, locked_by = NULL,
    -- exponential backoff with jitter: base * 2^(attempt-1), capped
    run_after = now() + make_interval(secs => LEAST(:backoff_max, :backoff_base * 2 ^ attempts)
                                              * (0.8 + random() * 0.4)),
    updated_at = now()
WHERE job_id = :job_id AND slice_no = :slice_no AND locked_by = :worker_id
RETURNING attempts, run_after - now() AS delay;

-- name: note_job_error
-- description: Keep the latest batch error on the job and its queue row.
WITH qj AS (
    UPDATE queue_jobs SET attempts = GREATEST(attempts, :attempts), last_error = :error, updated_at = now()
    WHERE id = :job_id RETURNING max_attempts
)
UPDATE backfill_jobs SET last_error = :error, updated_at = now()
WHERE job_id = :job_id
RETURNING (SELECT max_attempts FROM qj);

-- name: fail_job
-- description: Attempts exhausted: the job fails with its last error.
UPDATE backfill_jobs
SET status = 'failed', status_reason = :reason, status_by = 'tidegate', finished_at = now(), updated_at = now()
WHERE job_id = :job_id AND status IN ('pending', 'running', 'paused');

-- name: release_slice
-- description: Give a slice back (shutdown, pause seen, job gone).
UPDATE backfill_slices SET locked_by = NULL, updated_at = now()
WHERE job_id = :job_id AND slice_no = :slice_no AND locked_by = :worker_id;

-- name: work_left
-- description: For --drain: is anything claimable now or soon (backoff, expiring leases, new jobs)?
SELECT EXISTS (
    SELECT 1 FROM queue_jobs
    WHERE status = 'pending' AND run_after <= now() AND queue = ANY(:queues)
      AND (cardinality(CAST(:types AS text[])) = 0 OR type = ANY(:types))
) OR EXISTS (
    SELECT 1 FROM backfill_slices s
    JOIN backfill_jobs j ON j.job_id = s.job_id
    JOIN queue_jobs q ON q.id = s.job_id
    WHERE j.status IN ('pending', 'running') AND s.status = 'pending'
      AND q.queue = ANY(:queues) AND j.kind = ANY(:kinds)
      AND (s.locked_by IS NULL OR s.locked_by = :worker_id
           OR NOT EXISTS (SELECT 1 FROM tidegate_live_workers w WHERE w.id = s.locked_by))
) OR EXISTS (
    -- a job with fewer slices left than its concurrency, going on (a batch committed in the last minute): its
    -- slices' owners cut them in two at their next batch (worker/runner.py _process), and the new half is
    -- claimable soon; leaving now would leave the job's tail to one worker
    SELECT 1 FROM backfill_jobs j
    JOIN queue_jobs q ON q.id = j.job_id
    WHERE j.status IN ('pending', 'running') AND q.queue = ANY(:queues) AND j.kind = ANY(:kinds)
      AND (SELECT count(*) FROM backfill_slices s WHERE s.job_id = j.job_id AND s.status = 'pending')
          BETWEEN 1 AND j.concurrency - 1
      AND EXISTS (SELECT 1 FROM backfill_slices s WHERE s.job_id = j.job_id AND s.status = 'pending'
                  AND s.updated_at > now() - interval '1 minute')
);

-- name: set_job_status
-- description: An operator transition on a planned job, guarded by its allowed source states.
UPDATE backfill_jobs
SET status = :to_status, status_reason = :reason, status_by = :actor, updated_at = now(),
    finished_at = CASE WHEN :to_status IN ('done', 'failed', 'cancelled') THEN now() ELSE NULL END
WHERE job_id = :job_id AND status = ANY(:from_statuses)
RETURNING job_id;

-- name: set_all_jobs_status
-- description: The same transition on every job in the allowed source states (pause --all).
UPDATE backfill_jobs
SET status = :to_status, status_reason = :reason, status_by = :actor, updated_at = now()
WHERE status = ANY(:from_statuses)
RETURNING job_id;

-- name: pause_unplanned
-- description: pause --all for queue rows no worker has planned yet (they wait in the queue, unclaimable).
-- A row a planner holds is waited for, then re-checked: once planned it is 'running' and skipped here;
-- the same transaction's next statement pauses its new backfill_jobs row.
UPDATE queue_jobs q
SET status = 'paused', updated_at = now()
WHERE q.status = 'pending' AND NOT EXISTS (SELECT 1 FROM backfill_jobs j WHERE j.job_id = q.id AND j.planned)
RETURNING q.id AS job_id;

-- name: set_queue_status
-- description: Move a queue row (unplanned jobs, or mirroring a planned one).
UPDATE queue_jobs
SET status = :to_status, updated_at = now(),
    finished_at = CASE WHEN :to_status IN ('done', 'failed', 'cancelled') THEN now() ELSE NULL END
WHERE id = :job_id AND status = ANY(:from_statuses)
RETURNING id;

-- name: label_transaction
-- description: Who (--by) and why, for the audit rows the state triggers write in this transaction only.
SELECT set_config('tidegate.actor', :actor, true), set_config('tidegate.reason', :reason, true);

-- name: audit
-- description: Who did what to which job.
INSERT INTO tidegate_audit (actor, action, job_id, details)
VALUES (:actor, :action, :job_id, CAST(:details AS jsonb));

-- name: find_job
-- description: A job by full id or unique id prefix.
SELECT q.id, q.type, q.status AS queue_status, j.status AS job_status
FROM queue_jobs q LEFT JOIN backfill_jobs j ON j.job_id = q.id AND j.planned
WHERE CAST(q.id AS text) LIKE :prefix || '%'
ORDER BY q.created_at DESC
LIMIT 2;

-- name: job_status
-- description: Status rows for `tidegate status` (all jobs, newest first, or one).
SELECT q.id AS job_id, q.type, q.queue, q.status AS queue_status, q.priority, q.attempts, q.max_attempts,
       q.last_error AS queue_error, q.created_at, q.run_after, q.enqueued_by,
       j.status, j.owner, j.status_reason, j.status_by, j.processed_count, j.error_count,
       j.total_estimate, j.last_checkpoint, j.batch_size, j.concurrency, j.started_at, j.finished_at,
       j.updated_at, j.last_error, j.params, j.from_key, j.to_key, j.held_by, j.held_since,
       j.max_rows_per_second, j.sleep_between_batches, j.target_batch_seconds, j.row_limit,
       (SELECT count(*) FROM backfill_slices s WHERE s.job_id = q.id) AS slices,
       (SELECT count(*) FROM backfill_slices s WHERE s.job_id = q.id AND s.status = 'done') AS slices_done,
       (SELECT count(*) FROM backfill_slices s JOIN tidegate_live_workers w ON w.id = s.locked_by
         WHERE s.job_id = q.id AND s.status = 'pending') AS slices_in_flight
FROM queue_jobs q LEFT JOIN backfill_jobs j ON j.job_id = q.id AND j.planned  -- unplanned: the queue row says it
WHERE (CAST(:job_id AS uuid) IS NULL OR q.id = CAST(:job_id AS uuid))
ORDER BY q.created_at DESC
LIMIT :limit;

-- name: job_errors
-- description: Failed items of a job, newest first, with the copy of each source row.
SELECT id, slice_no, item_key, error_type, message, sample, created_at
FROM etl_errors WHERE job_id = :job_id ORDER BY id DESC LIMIT :limit;

-- name: job_errors_no_sample
-- description: Failed items of a job, newest first, for a login that may not read the source rows.
SELECT id, slice_no, item_key, error_type, message, CAST(NULL AS text) AS sample, created_at
FROM etl_errors WHERE job_id = :job_id ORDER BY id DESC LIMIT :limit;

-- name: sample_access
-- description: May this login read a job's samples: SELECT on its source table (by OID, so a name that no
-- description: longer resolves reads as "no") and on the sample column. Jobs without a source need the column only.
SELECT src.source,
       src.source IS NULL OR coalesce(has_table_privilege(to_regclass(src.source), 'SELECT'), false)
         AS can_read_source,
       has_column_privilege('etl_errors', 'sample', 'SELECT') AS can_read_sample
FROM (SELECT (SELECT params ->> 'source' FROM backfill_jobs WHERE job_id = :job_id) AS source) src;

-- name: enqueue
-- description: Put a validated job on the queue (what the runbook's INSERT does by hand).
INSERT INTO queue_jobs (type, queue, payload, priority, max_attempts, run_after, run_id)
VALUES (:type, :queue, CAST(:payload AS jsonb), :priority, :max_attempts, coalesce(:run_after, now()),
        CAST(:run_id AS uuid))
RETURNING id, enqueued_by;

-- name: metrics_queue
-- description: Queue rows by status, and the age of the oldest claimable pending row (for /metrics).
SELECT status, count(*) AS n,
       coalesce(extract(epoch FROM now() - min(run_after) FILTER (WHERE status = 'pending' AND run_after <= now())), 0)
         AS oldest_pending_seconds
FROM queue_jobs GROUP BY status;

-- name: metrics_jobs
-- description: Range jobs by kind and status, plus per active job its remaining rows and slices in flight.
SELECT j.job_id, j.kind, j.status,
       GREATEST(coalesce(j.total_estimate, 0) - j.processed_count, 0) AS remaining,
       (SELECT count(*) FROM backfill_slices s JOIN tidegate_live_workers w ON w.id = s.locked_by
         WHERE s.job_id = j.job_id AND s.status = 'pending') AS in_flight
FROM backfill_jobs j
WHERE j.planned AND (j.status IN ('pending', 'running', 'paused') OR j.finished_at > now() - interval '1 day');

-- name: metrics_workers
-- description: Workers whose lease is alive.
SELECT count(*) FROM tidegate_live_workers;

-- name: prune_queue_jobs
-- description: Delete up to :batch finished queue rows older than the retention (their checkpoint rows cascade).
-- No FOR UPDATE in the subquery: it would need UPDATE privilege, and the DELETE locks what it deletes.
DELETE FROM queue_jobs WHERE id IN (
    SELECT id FROM queue_jobs
    WHERE status IN ('done', 'failed', 'cancelled') AND finished_at < now() - make_interval(secs => :age_seconds)
    LIMIT :batch);

-- name: prune_job_rates
-- description: Delete up to :batch minutes of rate history older than the retention.
DELETE FROM tidegate_job_rates WHERE (job_id, minute) IN (
    SELECT job_id, minute FROM tidegate_job_rates WHERE minute < now() - make_interval(secs => :age_seconds)
    LIMIT :batch);

-- name: prune_etl_errors
-- description: Delete up to :batch failed-item rows older than the retention.
DELETE FROM etl_errors WHERE id IN (
    SELECT id FROM etl_errors WHERE created_at < now() - make_interval(secs => :age_seconds)
    LIMIT :batch);

-- name: hold_job
-- description: A gate holds the job: say which and since when (kept while it keeps holding).
UPDATE backfill_jobs SET held_by = :gate, held_since = CASE WHEN held_by = :gate THEN held_since ELSE now() END
WHERE job_id = :job_id AND held_by IS DISTINCT FROM :gate;

-- name: release_hold
-- description: No gate holds the job any more.
UPDATE backfill_jobs SET held_by = NULL, held_since = NULL WHERE job_id = :job_id AND held_by IS NOT NULL;

-- name: shrink_batch
-- description: A batch hit its statement timeout: the next one on this slice is half as big.
UPDATE backfill_slices SET batch_size_now = :size, updated_at = now()
WHERE job_id = :job_id AND slice_no = :slice_no AND locked_by = :worker_id;

-- name: split_candidate
-- description: A job wanting more slices in flight than it has free: its largest unlocked slice, to cut in two.
SELECT s.job_id, s.slice_no, s.checkpoint, s.end_key, j.key_type
FROM backfill_slices s
JOIN backfill_jobs j ON j.job_id = s.job_id
JOIN queue_jobs q ON q.id = s.job_id
WHERE j.status IN ('pending', 'running') AND s.status = 'pending'
  AND q.queue = ANY(:queues) AND j.kind = ANY(:kinds)
  AND (SELECT count(*) FROM backfill_slices o WHERE o.job_id = j.job_id AND o.status = 'pending') < j.concurrency
ORDER BY q.priority DESC, j.created_at,
         CASE j.key_type WHEN 'bigint' THEN CAST(s.end_key AS numeric) - CAST(s.checkpoint AS numeric)
              ELSE CAST(extract(epoch FROM CAST(s.end_key AS timestamptz) - CAST(s.checkpoint AS timestamptz))
                        AS numeric) END DESC
LIMIT 1
FOR UPDATE OF s SKIP LOCKED;

-- name: split_slice
-- description: Cut a slice at :cut: it keeps (checkpoint, cut), a new slice takes (cut, end).
WITH cut AS (
    UPDATE backfill_slices SET end_key = :cut_end, updated_at = now()
    WHERE job_id = :job_id AND slice_no = :slice_no RETURNING job_id
)
INSERT INTO backfill_slices (job_id, slice_no, start_key, end_key, checkpoint)
SELECT :job_id, (SELECT max(slice_no) + 1 FROM backfill_slices WHERE job_id = :job_id), :cut, :end_key, :cut
FROM cut;

-- name: set_knobs
-- description: `tidegate set`: change a job's knobs; each applies at the job's next batch. :changes holds only
-- description: the knobs given (checked against worker/knobs.py); the others keep their values, null lifts a limit.
UPDATE backfill_jobs j
SET (concurrency, batch_size, max_rows_per_second, sleep_between_batches, target_batch_seconds, min_batch_size,
     max_batch_size, row_limit, error_rate_threshold, updated_at) =
    (SELECT c.concurrency, c.batch_size, c.max_rows_per_second, c.sleep_between_batches, c.target_batch_seconds,
            c.min_batch_size, c.max_batch_size, c.row_limit, c.error_rate_threshold, now()
     FROM jsonb_populate_record(j, CAST(:changes AS jsonb)) c)
WHERE job_id = :job_id AND planned AND status NOT IN ('done', 'failed', 'cancelled')
RETURNING job_id;

-- name: set_payload_knobs
-- description: `tidegate set` on a job no worker has planned yet: its payload's knob fields (checked against
-- description: worker/knobs.py), so the plan uses them. A row being planned is waited for, then skipped: the
-- description: caller sets the planned job instead.
UPDATE queue_jobs q SET payload = q.payload || CAST(:changes AS jsonb), updated_at = now()
WHERE q.id = :job_id AND q.status IN ('pending', 'paused') AND jsonb_typeof(q.payload) = 'object'
  AND NOT EXISTS (SELECT 1 FROM backfill_jobs j WHERE j.job_id = q.id AND j.planned)
RETURNING q.type, CAST(q.payload AS text) AS payload;

-- name: local_lock_timeout
-- description: A lock timeout for this transaction only (the pool's bookkeeping after a worker died).
SELECT set_config('lock_timeout', :ms, true);

-- name: local_statement_timeout
-- description: A statement timeout for this batch's transaction only (SET LOCAL).
SELECT set_config('statement_timeout', :ms, true);

-- name: job_params
-- description: A job's status and validated parameters (for the health gates).
SELECT status, params FROM backfill_jobs WHERE job_id = :job_id;

-- name: lock_job_counts
-- description: A canary batch re-reads the job's count under the job row lock, so slices never overshoot the limit.
SELECT processed_count FROM backfill_jobs WHERE job_id = :job_id FOR NO KEY UPDATE;

-- name: pause_job_self
-- description: The job pauses itself (its canary limit is used up), guarded like an operator's pause.
UPDATE backfill_jobs SET status = 'paused', status_reason = :reason, status_by = 'tidegate', updated_at = now()
WHERE job_id = :job_id AND status IN ('pending', 'running')
RETURNING job_id;

-- name: pace_check
-- description: A slice waiting for its job's pace between batches: the job's status and the seconds left
-- description: until its reservation (paced_until, migration 0013) ends.
SELECT status, GREATEST(coalesce(extract(epoch FROM paced_until - clock_timestamp()), 0), 0) AS pace_wait
FROM backfill_jobs WHERE job_id = :job_id;

-- name: batch_job_status
-- description: The watchdog's look at the job of a batch in flight (a cancel stops it at once).
SELECT status FROM backfill_jobs WHERE job_id = :job_id;

-- name: cancel_batch_backend
-- description: Cancel the statement of a batch past its deadline (or of a cancelled job), from another
-- connection. Only while that backend still runs the same transaction: behind PgBouncer the server
-- backend serves other clients once the batch's transaction is over.
SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = :pid AND xact_start = :xact_start;

-- name: terminate_batch_backend
-- description: End the server backend of a wedged batch (or of a dead worker's batch): its transaction
-- rolls back and its slice's row lock is freed for a takeover. Same guard as cancel_batch_backend.
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = :pid AND xact_start = :xact_start;

-- name: count_worker_death
-- description: A worker died, or was stopped wedged, during a batch of this job: one more death in a row.
UPDATE backfill_jobs SET worker_deaths = worker_deaths + 1, last_error = :error, updated_at = now()
WHERE job_id = :job_id
RETURNING worker_deaths, status;

-- name: expire_worker
-- description: A worker process known dead (its pool saw it exit) loses its lease now, not after it: its
-- slices are claimable (taken over) as soon as no transaction of its own holds their rows.
DELETE FROM tidegate_workers WHERE id = :worker_id;

-- Ad-hoc SQL is a privilege (worker/trust.py, ops/security.md, Ad-hoc SQL).

-- name: session_user
-- description: The login role of this session (what a trigger records as a job's enqueued_by).
SELECT session_user;

-- name: is_sql_author
-- description: May :who have a statement of its own run by the workers? A superuser may (as in PostgreSQL);
-- else only a member of :author_role. A role that does not exist (either one) may not: the oid is NULL,
-- pg_has_role is strict, coalesce gives false.
SELECT coalesce((SELECT r.rolsuper OR pg_has_role(r.oid, (SELECT a.oid FROM pg_roles a WHERE a.rolname = :author_role),
                                                  'MEMBER')
                 FROM pg_roles r WHERE r.rolname = :who), false);

-- name: reset_session
-- description: After a job's own statement, in its transaction (so on the same server connection, even
-- behind PgBouncer): every setting back to its session default, RESET ROLE too; commits with the batch.
SELECT tidegate_reset_session();

-- name: approved_sql_by_name
-- description: The newest approved statement of a name, or the one with this sha256.
SELECT name, sha256, sql, approved_by, approved_at FROM tidegate_sql_approved
WHERE name = :name OR sha256 = :name
ORDER BY approved_at DESC
LIMIT 1;

-- name: approved_sql_by_sha
-- description: An approved statement's text by its hash (a job pins the hash it was planned with).
SELECT sql FROM tidegate_sql_approved WHERE sha256 = :sha256 LIMIT 1;

-- name: approve_sql
-- description: Register an approved statement, or approve a known version again (it becomes the name's
-- newest); approved_by and approved_at are set by a trigger.
INSERT INTO tidegate_sql_approved (name, sha256, sql) VALUES (:name, :sha256, :sql)
ON CONFLICT (name, sha256) DO UPDATE SET approved_at = now()
RETURNING name, sha256, sql, approved_by, approved_at;

-- name: revoke_sql
-- description: Forget every approved version of a name; jobs pinned to one fail at their next batch.
DELETE FROM tidegate_sql_approved WHERE name = :name RETURNING sha256;

-- name: list_approved_sql
-- description: Approved statements, newest first.
SELECT name, sha256, approved_by, approved_at, length(sql) AS chars FROM tidegate_sql_approved
ORDER BY name, approved_at DESC;

-- name: schema_version_table
-- description: Whether tidegate's migrations ever ran here (the table Alembic keeps its revision in).
SELECT to_regclass('tidegate_alembic_version') IS NOT NULL AS present;

-- name: schema_revisions
-- description: The revision(s) the database's tidegate schema is at.
SELECT version_num FROM tidegate_alembic_version;

-- Health gates (worker/gates.py): what the server is doing, read between batches.

-- name: gate_connections
-- description: Client connections in use, and max_connections.
SELECT count(*) AS used, current_setting('max_connections')::int AS max_connections
FROM pg_stat_activity WHERE backend_type = 'client backend';

-- name: gate_long_transaction
-- description: The oldest transaction of another session in this database open longer than :seconds, not
-- description: tidegate's own (application_name tidegate*): it holds back vacuum of our tables.
SELECT pid, extract(epoch FROM now() - xact_start) AS age FROM pg_stat_activity
WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'
  AND datname = current_database()
  AND application_name NOT LIKE 'tidegate%' AND now() - xact_start > make_interval(secs => :seconds)
ORDER BY xact_start
LIMIT 1;

-- name: gate_worst_replica
-- description: The replica furthest behind (name, lag in seconds, bytes not replayed); hidden is true when
-- description: this role may see the replicas but not their progress.
SELECT coalesce(nullif(application_name, ''), host(client_addr), pid::text) AS replica,
       extract(epoch FROM greatest(write_lag, flush_lag, replay_lag))::float AS lag,
       pg_wal_lsn_diff(sent_lsn, replay_lsn)::bigint AS bytes, state IS NULL AS hidden
FROM pg_stat_replication
ORDER BY state IS NULL DESC, 2 DESC NULLS LAST
LIMIT 1;

-- name: gate_vacuum
-- description: One of :tables that (auto)vacuum is working on now, if any.
SELECT p.relid::regclass::text AS rel FROM pg_stat_progress_vacuum p
WHERE p.datname = current_database() AND p.relid = ANY(CAST(:tables AS regclass[]))
LIMIT 1;

-- name: database_identity
-- description: Which database this is, whatever name or address reached it: the server's system identifier
-- (NULL where the role may not read it) and the database's name. A fan-out refuses two targets that are one.
SELECT CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
            THEN (SELECT system_identifier FROM pg_control_system()) END AS system,
       current_database() AS db;

-- name: citus_two_phase
-- description: marker: NULL on a database without Citus; on a Citus coordinator, whether migration 0018
-- description: made tidegate_two_phase, the table a batch copies nothing into to have Citus commit it in two
-- description: phases. can_insert: whether this login may copy into it (roles made before 0018 ran may not).
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')
            THEN to_regclass('tidegate_two_phase') IS NOT NULL END AS marker,
       CASE WHEN to_regclass('tidegate_two_phase') IS NOT NULL
            THEN has_table_privilege('tidegate_two_phase', 'INSERT') END AS can_insert,
       current_user AS login, quote_ident(current_user) AS login_ident;

-- name: gate_citus
-- description: Whether this database has the Citus extension (then the gates also ask its worker nodes).
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');

-- name: gate_node_timeout
-- description: How long this transaction's connections to Citus worker nodes may take to open (ms): a node
-- description: that does not answer holds the job after that, instead of after Citus's default 30 s.
SELECT set_config('citus.node_connection_timeout', CAST(:ms AS text), true);

-- name: gate_worker_nodes
-- description: On a Citus coordinator: every active worker node's answer to gate_node_health (a JSON text), or
-- description: its error when it did not answer (success false).
SELECT nodename || ':' || nodeport AS node, success, result
FROM run_command_on_workers(:command)
ORDER BY nodename, nodeport;

-- name: gate_node_health
-- description: Sent to each Citus worker node (run_command_on_workers: no parameters, one value) to read what
-- description: the gates read on the coordinator: client connections and max_connections; the oldest
-- description: transaction in this database not of tidegate and not Citus's own (a citus_internal or
-- description: citus_run_command session belongs to a distributed transaction whose own session, on the
-- description: coordinator, the coordinator's gate sees); the replica furthest behind (hidden: no privilege).
SELECT json_build_object(
    'used', (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
    'max_connections', current_setting('max_connections')::int,
    'oldest', (SELECT json_build_object('pid', pid, 'age', extract(epoch FROM now() - xact_start)::float)
               FROM pg_stat_activity
               WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'
                 AND datname = current_database() AND application_name NOT LIKE 'tidegate%'
                 AND application_name NOT LIKE 'citus\_internal gpid=%'
                 AND application_name NOT LIKE 'citus\_run\_command gpid=%'
               ORDER BY xact_start LIMIT 1),
    'replica', (SELECT json_build_object(
                    'replica', coalesce(nullif(application_name, ''), host(client_addr), pid::text),
                    'lag', extract(epoch FROM greatest(write_lag, flush_lag, replay_lag))::float,
                    'bytes', pg_wal_lsn_diff(sent_lsn, replay_lsn)::bigint, 'hidden', state IS NULL)
                FROM pg_stat_replication
                ORDER BY state IS NULL DESC, greatest(write_lag, flush_lag, replay_lag) DESC NULLS LAST LIMIT 1)
)::text;

-- The catalog lookups of worker/identifiers.py: a user's table or column name is bound, never parsed.

-- name: catalog_table
-- description: An existing table, view or partitioned table named :rel, in :schema or (schema '') the first
-- description: schema of the search path that has one.
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = :rel AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND (CASE WHEN :schema = '' THEN n.oid = ANY(current_schemas(false)::regnamespace[])
       ELSE n.nspname = :schema END)
ORDER BY array_position(current_schemas(false), n.nspname::text)
LIMIT 1;

-- name: catalog_schema
-- description: An existing schema named exactly :schema (a layout's --schema), with whether this login may use it.
SELECT n.nspname, has_schema_privilege(n.oid, 'USAGE') FROM pg_namespace n WHERE n.nspname = :schema;

-- name: catalog_column
-- description: The type and NOT NULL of column :col of table :rel (a quoted name).
SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a
WHERE a.attrelid = CAST(:rel AS regclass) AND a.attname = :col
  AND a.attnum > 0 AND NOT a.attisdropped;

-- name: catalog_primary_key
-- description: The primary key columns of :rel, in key order.
SELECT a.attname FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = CAST(:rel AS regclass) AND i.indisprimary
ORDER BY array_position(i.indkey, a.attnum);

-- name: catalog_leading_index
-- description: Does an index of :rel start with column :col?
SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
               ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
               WHERE i.indrelid = CAST(:rel AS regclass) AND a.attname = :col);

-- name: catalog_columns
-- description: Every stored (not generated, not dropped) column of :rel, in table order.
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a
WHERE a.attrelid = CAST(:rel AS regclass) AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attgenerated = ''
ORDER BY a.attnum;

-- name: catalog_relation_name
-- description: The schema and name of the existing relation :rel (a quoted name), as the catalog spells them.
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = CAST(:rel AS regclass);

-- name: console_slices
-- description: A job's slices for the console: cursor, counters, owner (and whether its lease is alive).
SELECT s.slice_no, s.start_key, s.end_key, s.checkpoint, s.status, s.locked_by, s.attempts, s.run_after,
       s.processed_count, s.error_count, s.batches, s.batch_size_now, s.last_error, s.updated_at,
       w.id IS NOT NULL AS in_flight
FROM backfill_slices s LEFT JOIN tidegate_live_workers w ON w.id = s.locked_by AND s.status = 'pending'
WHERE s.job_id = :job_id
ORDER BY s.slice_no
LIMIT :limit;

-- name: console_audit
-- description: A job's audit trail for the console, newest first: who (name and login), when, what, why.
SELECT at, actor, db_user, action, details
FROM tidegate_audit WHERE job_id = :job_id
ORDER BY at DESC, id DESC
LIMIT :limit;

-- name: console_rates
-- description: A job's rate history for the console: per minute over the last :minutes, oldest first.
SELECT minute, rows, errors, batches, batch_seconds, max_batch_seconds
FROM tidegate_job_rates
WHERE job_id = :job_id AND minute >= date_trunc('minute', now()) - make_interval(mins => :minutes)
ORDER BY minute;

-- name: console_knobs
-- description: A planned job's row as JSON, from which the console takes the knob columns (worker/knobs.py).
SELECT to_jsonb(j) AS job FROM backfill_jobs j WHERE job_id = :job_id AND planned;

-- name: run_job_ids
-- description: The jobs of one fan-out run in this database (migration 0016), oldest first.
SELECT id FROM queue_jobs WHERE run_id = CAST(:run_id AS uuid) ORDER BY created_at, id;

-- name: recent_runs
-- description: The newest fan-out runs with a job in this database (the web console's runs page), newest first.
SELECT run_id FROM queue_jobs WHERE run_id IS NOT NULL
GROUP BY run_id ORDER BY max(created_at) DESC, run_id LIMIT :limit;

-- name: metrics_runs
-- description: Per fan-out run with a job here that is active or finished in the last day (for /metrics):
-- description: its jobs by status, rows processed and rows estimated left.
SELECT q.run_id, coalesce(j.status, q.status) AS status, count(*) AS jobs,
       sum(coalesce(j.processed_count, 0)) AS processed,
       sum(GREATEST(coalesce(j.total_estimate, 0) - coalesce(j.processed_count, 0), 0)) AS remaining
FROM queue_jobs q LEFT JOIN backfill_jobs j ON j.job_id = q.id AND j.planned
WHERE q.run_id IS NOT NULL
  AND (coalesce(j.status, q.status) IN ('pending', 'running', 'paused') OR q.finished_at > now() - interval '1 day'
       OR j.finished_at > now() - interval '1 day')
GROUP BY q.run_id, coalesce(j.status, q.status);
