-- backfill-range's statements on the job's source table. {source} and {key} are catalog-checked
-- identifiers (worker/sql render); {where} is the job's --where filters (jobs/filters.py), or nothing.

-- name: next_keys
-- description: How far the next batch reaches: the batch_size-th key after :lo (below :end), the rows read, and the rows that tie with it (all of them fall in the batch).
WITH b AS (SELECT {key} AS k FROM {source} WHERE {key} > :lo AND {key} < :end{where} ORDER BY {key} LIMIT :n)
SELECT (SELECT max(k) FROM b) AS hi, (SELECT count(*) FROM b) AS n,
       (SELECT count(*) FROM b WHERE k = (SELECT max(k) FROM b)) AS ties_seen,
       (SELECT count(*) FROM {source} WHERE {key} = (SELECT max(k) FROM b){where}) AS ties_all;

-- name: rows
-- description: The source rows of one batch, (lo, hi], for a Python handler.
SELECT * FROM {source} WHERE {key} > :lo AND {key} <= :hi{where} ORDER BY {key};

-- name: fingerprint
-- description: What a batch read ahead must still be to be used: its rows' count and a sum over each row version's ctid and xmin (an insert, update or delete in (lo, hi] changes it).
SELECT count(*) AS n, coalesce(sum(hashtext(ctid::text || ':' || xmin::text)::bigint), 0) AS versions
FROM {source} WHERE {key} > :lo AND {key} <= :hi{where};

-- name: estimate
-- description: The planner's estimate of the rows in [lo, hi).
EXPLAIN (FORMAT JSON) SELECT 1 FROM {source} WHERE {key} >= :lo AND {key} < :hi{where};

-- name: count
-- description: The exact rows in [lo, hi), when the estimate is small enough to count.
SELECT count(*) FROM {source} WHERE {key} >= :lo AND {key} < :hi{where};

-- name: quantiles
-- description: Slice boundaries at quantiles of the keys in range (from a block sample when the range is large), so slices hold about the same rows even when keys are skewed.
SELECT percentile_disc(CAST(:fractions AS float8[])) WITHIN GROUP (ORDER BY k)
FROM (SELECT {key} AS k FROM {source} TABLESAMPLE SYSTEM (:percent) REPEATABLE (7)
      WHERE {key} >= :lo AND {key} < :hi) s;
