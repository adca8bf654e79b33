-- `tidegate archive partition` (jobs/archive/partition.py): maintenance of a layout's events table that is
-- LIST-partitioned on its flag value (Rillflow: retention_class 'hot'/'cold') with monthly RANGE partitions
-- under each value. {part}, {parent}, {ptype} are catalog-checked identifiers (worker/sql render; a new
-- partition's name is worker/identifiers.new_partition's); values are bound, or read back from settings.

-- name: partitioning
-- description: How the relation :rel is partitioned: strategy (l, r, h), number of key columns, the first key column; no row if it is not partitioned.
SELECT pt.partstrat AS strategy, pt.partnatts AS columns, a.attname AS key
FROM pg_partitioned_table pt
LEFT JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
WHERE pt.partrelid = CAST(:rel AS regclass);

-- name: value_partition
-- description: The partition of :events that holds exactly the value :value (FOR VALUES IN ('cold')): its schema and name.
SELECT n.nspname AS schema, c.relname AS name
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = CAST(:events AS regclass)
  AND pg_get_expr(c.relpartbound, c.oid) = 'FOR VALUES IN (' || quote_literal(CAST(:value AS text)) || ')';

-- name: found
-- description: Whether a relation named :rel (a quoted name) exists, whether it is a partition of :parent, and its bound.
SELECT c.oid IS NOT NULL AS exists, coalesce(i.inhparent = CAST(:parent AS regclass), false) AS attached,
       pg_get_expr(c.relpartbound, c.oid) AS bound
FROM (SELECT to_regclass(CAST(:rel AS text)) AS oid) r
LEFT JOIN pg_class c ON c.oid = r.oid
LEFT JOIN pg_inherits i ON i.inhrelid = c.oid;

-- name: bounds
-- description: The new partition's bounds as transaction-local settings, read back by create_month: a bound value never enters DDL text.
SELECT set_config('tidegate.partition_from', CAST(:lo AS text), true),
       set_config('tidegate.partition_to', CAST(:hi AS text), true),
       set_config('lock_timeout', CAST(:lock_timeout AS text), true);

-- name: create_month
-- description: Create the month's partition of the value's partition {parent} (bounds from the settings of `bounds`).
CREATE TABLE {part} PARTITION OF {parent}
FOR VALUES FROM (CAST(current_setting('tidegate.partition_from') AS {ptype}))
            TO (CAST(current_setting('tidegate.partition_to') AS {ptype}));

-- name: lock_parent
-- description: Before proving a partition empty: its parent, so no row is routed to it meanwhile (the order appends lock in: parent, then partition).
LOCK TABLE ONLY {parent} IN ACCESS EXCLUSIVE MODE;

-- name: lock_part
-- description: Before proving a partition empty: the partition itself.
LOCK TABLE {part} IN ACCESS EXCLUSIVE MODE;

-- name: rows_in
-- description: Rows in the partition, counted up to :limit (proof that it is empty, or how far from it).
SELECT count(*) FROM (SELECT 1 FROM {part} LIMIT :limit) r;

-- name: detach
-- description: Detach the (proven empty) partition: it stays as a table of its own.
ALTER TABLE {parent} DETACH PARTITION {part};

-- name: drop
-- description: Drop the (proven empty, detached) partition.
DROP TABLE {part};
