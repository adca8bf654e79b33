-- The bulk write of an ItemHandler that declares its table (jobs/handlers.py, ItemHandler.write).
-- {table} and the columns are catalog-checked identifiers (worker/identifiers.py); {cols}, {keys},
-- {order} and {action} are fragments the code assembles from placeholders of those identifiers.
-- The records go to a table of the write's own transaction (a temporary table created and dropped by
-- each write, so nothing outlives it on a server connection a PgBouncer may hand to another client).

-- name: bulk_table
-- description: An empty table with the target's columns, for one write's records.
CREATE TEMP TABLE tg_bulk ON COMMIT DROP AS SELECT {cols} FROM {table} WITH NO DATA;

-- name: bulk_copy
-- description: The records, streamed in with COPY (text format: a bad value is the server's data error).
COPY pg_temp.tg_bulk FROM STDIN;

-- name: bulk_insert
-- description: Every record into the table, in the order written (a handler that declares no conflict key).
INSERT INTO {table} ({cols}) SELECT {cols} FROM pg_temp.tg_bulk ORDER BY ctid;

-- name: bulk_upsert
-- description: One row per conflict key into the table: the newest record of the batch (by the handler's newer_by columns, then the last written) inserted, or updating the row already there.
INSERT INTO {table} AS t ({cols})
SELECT DISTINCT ON ({keys}) {cols} FROM pg_temp.tg_bulk
ORDER BY {keys}{order}, ctid DESC
ON CONFLICT ({keys}) DO {action};

-- name: bulk_drop
-- description: The write's table, gone (a second write in the same transaction makes its own).
DROP TABLE pg_temp.tg_bulk;

-- name: bulk_copy_binary
-- description: The records, streamed in with COPY in binary (the columns' types set on the client: no text to format or parse).
COPY pg_temp.tg_bulk FROM STDIN (FORMAT BINARY);

-- name: bulk_types
-- description: No row, only the columns' types (their OIDs, for a binary COPY).
SELECT {cols} FROM {table} LIMIT 0;

-- name: bulk_update
-- description: The conflict action of bulk_upsert: the record's values over the row's ({sets}: "col = EXCLUDED.col, ...").
UPDATE SET {sets}

-- name: bulk_update_newer
-- description: The same, only when the record is newer than the row (by the handler's newer_by columns).
UPDATE SET {sets} WHERE ({mine}) < ({theirs})
