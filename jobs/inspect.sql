-- The dry run's and the parity checks' reads (jobs/inspect.py). {source} and {key} are the job's
-- catalog-checked source table and key column (worker/sql render); {where} is its --where filters
-- (jobs/filters.py), or nothing.

-- name: read_only
-- description: One snapshot for every check, so a job running meanwhile is seen consistently; and nothing written.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: first_keys
-- description: The first :n keys of [lo, hi): the dry run's sample.
SELECT {key} AS k FROM {source} WHERE {key} >= :lo AND {key} < :hi{where} ORDER BY {key} LIMIT :n;

-- name: one_batch
-- description: Where the first batch of :n rows of [lo, hi) ends: the dry run times one batch read.
SELECT max(k) FROM (SELECT {key} AS k FROM {source} WHERE {key} >= :lo AND {key} < :hi{where} ORDER BY {key} LIMIT :n) b;

-- name: count_done
-- description: The source rows of one processed span, (lo, hi].
SELECT count(*) FROM {source} WHERE {key} > :lo AND {key} <= :hi{where};

-- name: duplicates
-- description: How many keys of the derived table occur more than once; {cols} is its key columns, each a catalog-checked {cN}.
SELECT count(*) FROM (SELECT 1 FROM {table} GROUP BY {cols} HAVING count(*) > 1) d;

-- name: sample
-- description: A repeatable sample of up to :n processed source rows of (lo, hi], recomputed by the handler.
SELECT * FROM {source} TABLESAMPLE BERNOULLI (:percent) REPEATABLE (:seed)
WHERE {key} > :lo AND {key} <= :hi{where} LIMIT :n;

-- name: job
-- description: The job being checked: its state and its counters.
SELECT kind, status, params, key_type, processed_count, error_count, total_estimate, batch_size, concurrency,
       max_rows_per_second, sleep_between_batches
FROM backfill_jobs WHERE job_id = :job_id;

-- name: slices
-- description: Each slice's start and cursor: the processed spans.
SELECT slice_no, start_key, checkpoint FROM backfill_slices WHERE job_id = :job_id ORDER BY slice_no;

-- name: failed_items
-- description: The items the job recorded as bad: in etl_errors, not in the derived table.
SELECT item_key FROM etl_errors WHERE job_id = :job_id;
