-- archive-range's and unarchive-range's statements on the event store. {key}, {streams}, {events},
-- {estream}... are catalog-checked identifiers of the job's layout (worker/sql render); {state} and
-- {sets} are fragments the kind builds from its own constants (the expected state, the marks).

-- name: lock_mark
-- description: Lock the batch's candidates (cross-referenced ones only with force) still in the expected state, in key order, and set or clear their marks; their ids.
WITH locked AS (SELECT s.{key} AS k FROM {streams} s
    WHERE s.{key} = ANY(ARRAY(SELECT CAST(c.stream_id AS {ktype}) FROM archive_candidates c
        WHERE c.snapshot = CAST(:snapshot AS uuid) AND c.seq > :lo AND c.seq <= :hi AND (:force OR NOT c.xref)))
      AND {state} ORDER BY s.{key} FOR UPDATE)
UPDATE {streams} t SET {sets} WHERE t.{key} = ANY(ARRAY(SELECT k FROM locked)) RETURNING t.{key}::text;

-- name: move_events
-- description: Move the locked streams' events between the events and archive tables (the audit follows, in the same statement).
WITH moved AS (DELETE FROM {src} e WHERE e.{estream} = ANY(CAST(:ids AS {etype}[])) RETURNING {cols}),
ins AS (INSERT INTO {dst} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved),
counts AS (SELECT g.s::text AS stream_id, g.n FROM (SELECT {estream} AS s, count(*) AS n FROM moved GROUP BY 1) g)
{audit};

-- name: lock_only
-- description: --move-marked: lock the batch's candidates still archived, in key order, leaving their marks as they are; their ids.
SELECT s.{key}::text FROM {streams} s
WHERE s.{key} = ANY(ARRAY(SELECT CAST(c.stream_id AS {ktype}) FROM archive_candidates c
    WHERE c.snapshot = CAST(:snapshot AS uuid) AND c.seq > :lo AND c.seq <= :hi AND (:force OR NOT c.xref)))
  AND {state} ORDER BY s.{key} FOR UPDATE;

-- name: flag_events
-- description: Set the locked streams' events' flag from :flag_from to :flag_to (true/false, or a value such as 'hot'/'cold': on a table partitioned by the flag the rows move partition), for a layout that flags events in place (the audit follows).
WITH flagged AS (UPDATE {events} e SET {eflag} = CAST(:flag_to AS {eftype})
  WHERE e.{estream} = ANY(CAST(:ids AS {etype}[])) AND e.{eflag} = CAST(:flag_from AS {eftype})
  RETURNING e.{estream}),
counts AS (SELECT g.s::text AS stream_id, g.n FROM (SELECT {estream} AS s, count(*) AS n FROM flagged GROUP BY 1) g)
{audit};

-- name: mark_flag_events
-- description: For a store whose events' foreign key names the streams' flag (Marten 7 partitioned: (stream_id, is_archived) references mt_streams (id, is_archived)): the locked streams' marks and their events' flag in one statement, so the key is checked once both have moved, where either statement alone breaks it (the audit follows).
WITH marked AS (UPDATE {streams} t SET {sets} WHERE t.{key} = ANY(CAST(:ids AS {ktype}[])) RETURNING t.{key}),
flagged AS (UPDATE {events} e SET {eflag} = CAST(:flag_to AS {eftype})
  WHERE e.{estream} = ANY(CAST(:ids AS {etype}[])) AND e.{eflag} = CAST(:flag_from AS {eftype})
  RETURNING e.{estream}),
counts AS (SELECT g.s::text AS stream_id, g.n FROM (SELECT {estream} AS s, count(*) AS n FROM flagged GROUP BY 1) g)
{audit};

-- name: flag_in_fkey
-- description: Whether a foreign key of the events table :events references the streams table :streams through the streams' flag column :flag (then marks and flags move in one statement).
SELECT EXISTS (SELECT 1 FROM pg_constraint c
  JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attname = :flag
  WHERE c.contype = 'f' AND c.conrelid = CAST(:events AS regclass) AND c.confrelid = CAST(:streams AS regclass)
    AND a.attnum = ANY(c.confkey));

-- name: nothing_moved
-- description: No stream was locked: the batch's audit row alone, every candidate skipped.
WITH counts AS (SELECT CAST(NULL AS text) AS stream_id, CAST(0 AS bigint) AS n WHERE false)
{audit};

-- name: audit
-- description: Ends the three statements above: the batch's audit row, every candidate of (lo, hi] in seq order with what happened to it (:ids are the streams locked and moved); the streams audited and the events moved.
, audit AS (
  INSERT INTO archive_audit_batches (job_id, layout, actor, actions, stream_ids, stream_types, events, reasons)
  SELECT CAST(:job_id AS uuid), :layout, :actor,
         array_agg(CASE WHEN l.id IS NULL THEN 'skip' ELSE :action END ORDER BY c.seq),
         array_agg(c.stream_id ORDER BY c.seq), array_agg(c.stream_type ORDER BY c.seq),
         array_agg(coalesce(n.n, 0) ORDER BY c.seq),
         array_agg(CASE WHEN l.id IS NOT NULL THEN :reason WHEN c.xref AND NOT :force THEN :xref_why
                        ELSE :gone_why END ORDER BY c.seq)
  FROM archive_candidates c
  LEFT JOIN unnest(CAST(:ids AS text[])) AS l(id) ON l.id = c.stream_id
  LEFT JOIN counts n ON n.stream_id = c.stream_id
  WHERE c.snapshot = CAST(:snapshot AS uuid) AND c.seq > :lo AND c.seq <= :hi
  HAVING count(*) > 0
  RETURNING cardinality(actions) AS streams)
SELECT (SELECT coalesce(sum(streams), 0) FROM audit) AS streams, (SELECT coalesce(sum(n), 0) FROM counts) AS events;

-- name: move_models
-- description: Move one read model's rows of the locked streams between its table and its archive.
WITH moved AS (DELETE FROM {src} r WHERE r.{rkey} = ANY(CAST(:ids AS {rtype}[])) RETURNING {cols})
INSERT INTO {dst} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved;

-- name: details
-- description: What `tidegate status` adds for archive jobs: streams moved and skipped, events moved (from the audit).
SELECT job_id, count(*) FILTER (WHERE action <> 'skip') AS streams,
       count(*) FILTER (WHERE action = 'skip') AS skipped, coalesce(sum(events), 0) AS events
FROM archive_audit WHERE job_id = ANY(CAST(:ids AS uuid[])) GROUP BY job_id;
