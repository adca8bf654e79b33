-- `tidegate watch-deletions`' statements (jobs/archive/watch.py): its cursor and seen marks, and its
-- reads of the event store. {seq}, {events}, {streams}... are catalog-checked identifiers of the layout
-- (worker/sql render); {stream_type} is selection.sql's piece.

-- name: add_cursor
-- description: The watcher's cursor row, created at 0 the first time a watcher of this name polls.
INSERT INTO archive_watch_cursors (name, layout) VALUES (:n, :l) ON CONFLICT DO NOTHING;

-- name: lock_cursor
-- description: The watcher's cursor, locked: two watchers of one name take turns.
SELECT last_seq FROM archive_watch_cursors WHERE name = :n FOR UPDATE;

-- name: deletions
-- description: Up to :max events of the deletion :types after :after, in sequence order, with their stream's type.
SELECT e.{seq} AS seq, e.{estream}::text AS stream_id, CAST(e.{etype} AS text) AS event_type,
       {stream_type} AS stream_type
FROM {events} e JOIN {streams} s ON s.{key} = e.{estream}
WHERE e.{seq} > :after AND CAST(e.{etype} AS text) = ANY(CAST(:types AS text[]))
ORDER BY e.{seq} LIMIT :max;

-- name: max_seq
-- description: The newest event's sequence number: where the cursor goes when the poll read everything.
SELECT max(e.{seq}) FROM {events} e;

-- name: seen
-- description: Record the deletion events; returns those not seen before.
INSERT INTO archive_watch_seen (name, seq, stream_id)
SELECT :name, u.seq, u.sid FROM unnest(CAST(:seqs AS bigint[]), CAST(:sids AS text[])) AS u(seq, sid)
ON CONFLICT DO NOTHING RETURNING seq, stream_id;

-- name: seen_by_job
-- description: Which job the fresh deletion events enqueued.
UPDATE archive_watch_seen SET job_id = CAST(:j AS uuid) WHERE name = :n AND seq = ANY(CAST(:s AS bigint[]));

-- name: move_cursor
-- description: The cursor after this poll (it commits with the enqueue and the seen marks).
UPDATE archive_watch_cursors SET last_seq = :c, updated_at = now() WHERE name = :n;
