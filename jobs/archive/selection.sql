-- Which streams an archive job selects (jobs/archive/selection.py). {key}, {streams}, {src},
-- {estream}... are catalog-checked identifiers of the job's layout (worker/sql render); {conds},
-- {stream_type}, {event_count}, {pos}, {limit} and {query} are fragments the module builds from the
-- pieces below and its own constants. The sections after `candidates` are such pieces.

-- name: candidates
-- description: The selected streams: key, type, events (or 0 when not counted) and position on disk.
SELECT s.{key}::text AS stream_id, {stream_type} AS stream_type, {event_count} AS events, {pos} AS pos
FROM {streams} s
WHERE {conds}
{limit};

-- name: first_by_key
-- description: Piece: --limit keeps the first N streams by key.
ORDER BY s.{key}
LIMIT :limit;

-- name: snapshot
-- description: Store the selection {query} under :snapshot, numbered in the order of the stream rows on disk (selection.py says why).
INSERT INTO archive_candidates (snapshot, seq, stream_id, stream_type, events)
SELECT CAST(:snapshot AS uuid), row_number() OVER (ORDER BY c.pos, c.stream_id), c.stream_id, c.stream_type,
       c.events
FROM ({query}) c;

-- name: physical
-- description: Whether the streams relation :rel has rows on disk (a table, not a view): a view has no ctid.
SELECT c.relkind IN ('r', 'p', 'm') FROM pg_class c WHERE c.oid = CAST(:rel AS regclass);

-- name: xref
-- description: Flag the candidates whose id an event of a live, unselected stream holds under the reference key :ref; {live} is the events' not-archived condition, or nothing.
UPDATE archive_candidates c SET xref = true
FROM {events} e
WHERE c.snapshot = CAST(:snapshot AS uuid) AND e.{data} ->> CAST(:ref AS text) = c.stream_id {live}
  AND NOT EXISTS (SELECT 1 FROM archive_candidates o
                  WHERE o.snapshot = CAST(:snapshot AS uuid) AND o.stream_id = e.{estream}::text);

-- name: event_live
-- description: Piece of xref: the event is not archived (a layout that flags events: its flag holds the hot value, false or e.g. 'hot').
AND e.{eflag} = CAST(:flag_hot AS {eftype});

-- name: stream_type
-- description: Piece: the stream's type as text.
CAST(s.{stype} AS text);

-- name: no_stream_type
-- description: Piece: a layout without a stream type column.
CAST(NULL AS text);

-- name: event_count
-- description: Piece: how many events the stream has (the discovery report's create-only vs with updates).
(SELECT count(*) FROM {src} e WHERE e.{estream} = s.{key});

-- name: archived_by_flag
-- description: Piece: the stream is archived, by its flag.
s.{sflag};

-- name: hot_by_flag
-- description: Piece: the stream is not archived, by its flag.
NOT s.{sflag};

-- name: archived_by_at
-- description: Piece: the stream is archived, by archived_at (a layout without a flag).
s.{sat} IS NOT NULL;

-- name: hot_by_at
-- description: Piece: the stream is not archived, by archived_at.
s.{sat} IS NULL;

-- name: has_hot_events
-- description: Piece: --move-marked, the (archived) stream still has events in the hot table.
EXISTS (SELECT 1 FROM {src} e WHERE e.{estream} = s.{key});

-- name: has_hot_flagged_events
-- description: Piece: --move-marked on a layout that flags events: the stream still has events whose flag holds the hot value (in the hot partition).
EXISTS (SELECT 1 FROM {src} e WHERE e.{estream} = s.{key} AND e.{eflag} = CAST(:flag_hot AS {eftype}));

-- name: by_type
-- description: Piece: --type.
CAST(s.{c_type} AS text) = CAST(:type AS text);

-- name: by_tenant
-- description: Piece: --tenant.
CAST(s.{c_tenant} AS text) = CAST(:tenant AS text);

-- name: before
-- description: Piece: --before, on the stream's activity column.
s.{c_activity} < CAST(:before AS timestamptz);

-- name: stream_ids
-- description: Piece: --stream, the ids cast to the key's type.
s.{key} = ANY(CAST(:stream_ids AS {ktype}[]));

-- name: from_audit
-- description: Piece: --from-audit, the streams a job archived.
s.{key}::text IN (SELECT a.stream_id FROM archive_audit a
                  WHERE a.job_id = CAST(:audit_job AS uuid) AND a.action = 'archive');

-- name: create_event_field
-- description: Piece: the create event's (the stream's first event by sequence) data field named by the bound :{k}, as text.
(SELECT e.{data} ->> CAST(:{k} AS text) FROM {src} e WHERE e.{estream} = s.{key} ORDER BY e.{seq} LIMIT 1);
