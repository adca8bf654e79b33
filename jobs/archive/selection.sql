-- Which streams an archive job selects (jobs/archive/selection.py). {key}, {streams}, {src},
-- {estream}... are catalog-checked identifiers of the job's layout (worker/sql render); {conds},
-- {joins}, {stream_type}, {event_count}, {pos}, {limit} and {query} are fragments the module builds from
-- the pieces below and its own constants. The sections after `candidates` are such pieces.
--
-- Every piece that reads events is set-based: one aggregate over the events table joined to the
-- streams, never a subquery per stream. The per-stream `ORDER BY seq LIMIT 1` this replaced walked
-- the sequence index once per stream on Marten's own indexes (34-39 s for 25,000 streams);
-- tests/test_archive_selection.py walks the plans of every shipped layout to keep it out.

-- name: candidates
-- description: The selected streams: key, type, events (or 0 when not counted) and position on disk.
SELECT s.{key}::text AS stream_id, {stream_type} AS stream_type, {event_count} AS events, {pos} AS pos
FROM {streams} s{joins}
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
-- description: Piece of xref: the event is not archived (a layout that flags events).
AND NOT e.{eflag};

-- name: stream_type
-- description: Piece: the stream's type as text.
CAST(s.{stype} AS text);

-- name: no_stream_type
-- description: Piece: a layout without a stream type column.
CAST(NULL AS text);

-- name: event_count
-- description: Piece: how many events the stream has (the discovery report's create-only vs with updates), from the joined aggregate c.
coalesce(c.n, 0);

-- name: join_event_counts
-- description: Piece: each stream's events in {src}, counted by one aggregate over the table and joined as c.
LEFT JOIN (SELECT x.{estream} AS sid, count(*) AS n FROM {src} x GROUP BY 1) c ON c.sid = s.{key}

-- name: join_create_events
-- description: Piece: each stream's create event in {src} (its lowest {ever}: the version, or the sequence for a layout without one; ties go to the lowest sequence) with its {fields} and the stream's event count n, joined as c. {first} finds each stream's lowest {ever} over the whole table, and the create events are joined back on (stream, version): the columns of the (stream, version) unique index, never the sequence index.
LEFT JOIN (SELECT DISTINCT ON (e.{estream}) e.{estream} AS sid, f.n, {fields}
           FROM ({first}) f JOIN {src} e ON e.{estream} = f.sid AND e.{ever} = f.first
           ORDER BY e.{estream}, e.{seq}) c ON c.sid = s.{key}

-- name: first_version
-- description: Piece of join_create_events: each stream's lowest {ever}, in the order of the (stream, version) index, which serves it (an index-only scan); no count.
SELECT DISTINCT ON (x.{estream}) x.{estream} AS sid, x.{ever} AS first, 0 AS n FROM {src} x ORDER BY x.{estream}, x.{ever};

-- name: first_version_counted
-- description: Piece of join_create_events: each stream's lowest {ever} and its events, by one aggregate (the discovery report counts them anyway).
SELECT x.{estream} AS sid, min(x.{ever}) AS first, count(*) AS n FROM {src} x GROUP BY 1;

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
-- description: Piece of join_create_events: the create event's data field named by the bound :{k}, as text, as column {f} of c.
e.{data} ->> CAST(:{k} AS text) AS {f}
