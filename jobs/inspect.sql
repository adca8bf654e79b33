-- The dry run's and the parity checks' reads (jobs/inspect.py). {source} and {key} are the job's
-- catalog-checked source table and key column (worker/sql render); {where} is its --where filters
-- (jobs/filters.py), or nothing.

-- name: read_only
-- description: One snapshot for every check, so a job running meanwhile is seen consistently; and nothing written.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: first_keys
-- description: The first :n keys of [lo, hi): the dry run's sample.
SELECT {key} AS k FROM {source} WHERE {key} >= :lo AND {key} < :hi{where} ORDER BY {key} LIMIT :n;

-- name: session_read_only
-- description: The rehearsal's session: every transaction but the rehearsal's own is read-only (a handler that ends the rehearsal's transaction writes nothing after it).
SET default_transaction_read_only = on;

-- name: read_write
-- description: The rehearsal's own transaction writes (the real handler runs in it), and is always rolled back.
SET TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE;

-- name: xact_id
-- description: The rehearsal's transaction id, assigned now: the same id at the end proves no handler ended the transaction.
SELECT pg_current_xact_id()::text;

-- name: xact_id_now
-- description: The transaction id in force now, if any (not assigning one): compared with xact_id.
SELECT pg_current_xact_id_if_assigned()::text;

-- name: guard_table
-- description: A commit guard: a deferred foreign key that can never hold, checked only at COMMIT, so a COMMIT of the rehearsal's transaction fails and rolls it back.
CREATE TEMP TABLE tidegate_rehearsal_guard (id int PRIMARY KEY,
    parent int REFERENCES tidegate_rehearsal_guard DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP;

-- name: guard_row
-- description: The row that breaks the guard's foreign key (parent 2 never exists).
INSERT INTO tidegate_rehearsal_guard VALUES (1, 2);

-- name: sample_keys_exact
-- description: The rehearsal's sample on a range of up to 50,000 rows: the keys at :fractions of the matching rows in key order (row-even, exact).
SELECT DISTINCT k FROM unnest((SELECT percentile_disc(CAST(:fractions AS float8[])) WITHIN GROUP (ORDER BY {key})
                               FROM {source} WHERE {key} >= :lo AND {key} < :hi{where})) AS k
WHERE k IS NOT NULL ORDER BY k;

-- name: sample_keys_blocks
-- description: The rehearsal's sample on a larger range: the same quantiles from a repeatable block sample of about 50,000 rows (bounded cost).
SELECT DISTINCT k FROM unnest((SELECT percentile_disc(CAST(:fractions AS float8[])) WITHIN GROUP (ORDER BY {key})
                               FROM {source} TABLESAMPLE SYSTEM (:percent) REPEATABLE (7)
                               WHERE {key} >= :lo AND {key} < :hi{where})) AS k
WHERE k IS NOT NULL ORDER BY k;

-- name: sample_rows
-- description: Every matching row of the sampled keys (ties included, as a batch always holds them): what the handler is given.
SELECT * FROM {source} WHERE {key} = ANY(:keys){where} ORDER BY {key};

-- name: written
-- description: Rows inserted, updated and deleted per table so far in this transaction (triggers' writes included), as PostgreSQL counts them.
SELECT schemaname || '.' || relname AS tbl, n_tup_ins AS inserted, n_tup_upd AS updated, n_tup_del AS deleted
FROM pg_stat_xact_user_tables
WHERE schemaname NOT LIKE 'pg\_temp%' AND n_tup_ins + n_tup_upd + n_tup_del > 0;

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
FROM backfill_jobs WHERE job_id = :job_id AND planned;

-- name: slices
-- description: Each slice's start and cursor: the processed spans.
SELECT slice_no, start_key, checkpoint FROM backfill_slices WHERE job_id = :job_id ORDER BY slice_no;

-- name: failed_items
-- description: The items the job recorded as bad: in etl_errors, not in the derived table.
SELECT item_key FROM etl_errors WHERE job_id = :job_id;
