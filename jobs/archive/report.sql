-- The archive reports' reads (jobs/archive/report.py): a selection's preview, a run's summary, the
-- archive status. {streams}, {key}, {src}... are catalog-checked identifiers of the layout (worker/sql
-- render); {query}, {stream_type}, {archived} and {event_counts} are fragments built from selection.sql.

-- name: by_type
-- description: The snapshot's candidates per stream type: streams, create-only vs with updates, events, cross-referenced.
SELECT coalesce(stream_type, '(none)') AS stream_type, count(*) AS streams,
       count(*) FILTER (WHERE events <= 1) AS create_only, count(*) FILTER (WHERE events > 1) AS with_updates,
       CAST(coalesce(sum(events), 0) AS bigint) AS events, count(*) FILTER (WHERE xref) AS cross_referenced
FROM archive_candidates WHERE snapshot = CAST(:snapshot AS uuid) GROUP BY 1 ORDER BY 2 DESC, 1;

-- name: ids
-- description: Every candidate of the snapshot, in seq order: the dry run's --csv.
SELECT seq, stream_id, stream_type, events, xref FROM archive_candidates
WHERE snapshot = CAST(:snapshot AS uuid) ORDER BY seq;

-- name: summary
-- description: A run's job row and its audit's totals: streams moved and skipped, events moved.
SELECT j.kind, j.status, j.params, j.total_estimate, j.processed_count, j.error_count,
       j.started_at, coalesce(j.finished_at, now()) - j.started_at AS elapsed,
       a.moved, a.skipped, a.events
FROM backfill_jobs j
CROSS JOIN LATERAL (SELECT count(*) FILTER (WHERE a.action IN ('archive', 'unarchive')) AS moved,
                           count(*) FILTER (WHERE a.action = 'skip') AS skipped,
                           coalesce(sum(a.events), 0) AS events
                    FROM archive_audit a WHERE a.job_id = j.job_id) a
WHERE j.job_id = CAST(:job_id AS uuid) AND j.planned;

-- name: recount
-- description: How many streams the selection {query} holds now: the candidates a run left.
SELECT count(*) FROM ({query}) c;

-- name: status
-- description: Hot vs archived streams and events per stream type.
SELECT {stream_type} AS stream_type,
       count(*) FILTER (WHERE NOT ({archived})) AS hot_streams, count(*) FILTER (WHERE {archived}) AS archived_streams,
       CAST(coalesce(sum(e.n) FILTER (WHERE NOT ({archived})), 0) AS bigint) AS hot_events,
       CAST(coalesce(sum(e.n) FILTER (WHERE {archived}), 0) AS bigint) AS archived_events
FROM {streams} s LEFT JOIN ({event_counts}) e ON e.sid = s.{key}
GROUP BY 1 ORDER BY 1;

-- name: event_counts
-- description: Piece of status: events per stream in the events table.
SELECT x.{estream} AS sid, count(*) AS n FROM {src} x GROUP BY 1;

-- name: event_counts_with_archive
-- description: Piece of status: events per stream in the events table and in the archive table.
SELECT x.{estream} AS sid, count(*) AS n FROM {src} x GROUP BY 1
UNION ALL
SELECT x.{estream} AS sid, count(*) AS n FROM {archive} x GROUP BY 1;

-- name: size
-- description: A table's total size on disk and the planner's row estimate, summed over its leaves when it is partitioned (a partitioned table itself holds no rows); a plain table is its own one leaf.
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) AS bytes, coalesce(sum(greatest(c.reltuples, 0)), 0) AS rows
FROM pg_class c
WHERE c.oid IN (SELECT t.relid FROM pg_partition_tree(CAST(:rel AS regclass)) t WHERE t.isleaf)
   OR (c.oid = CAST(:rel AS regclass) AND c.relkind <> 'p');

-- name: partitions
-- description: Every partition under the table :rel (none when it is not partitioned): its parent, level, bound, and size and row estimate summed over its leaves.
SELECT t.relid::text AS name, t.parentrelid::text AS parent, t.level, t.isleaf AS leaf,
       pg_get_expr(c.relpartbound, c.oid) AS bound,
       (SELECT coalesce(sum(pg_total_relation_size(l.relid)), 0) FROM pg_partition_tree(t.relid) l WHERE l.isleaf)
         AS bytes,
       (SELECT coalesce(sum(greatest(lc.reltuples, 0)), 0) FROM pg_partition_tree(t.relid) l
        JOIN pg_class lc ON lc.oid = l.relid WHERE l.isleaf) AS rows
FROM pg_partition_tree(CAST(:rel AS regclass)) t JOIN pg_class c ON c.oid = t.relid
WHERE t.level > 0
ORDER BY t.relid::text;

-- name: guard
-- description: The archive guard on the table :rel: its mode when `tidegate archive guard` installed it and the trigger is attached, else nothing.
SELECT g.mode FROM archive_guards g
WHERE CAST(g.events_table AS regclass) = CAST(:rel AS regclass)
  AND EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = CAST(:rel AS regclass)
              AND t.tgname = 'tidegate_archive_guard');

-- name: ids_with_fields
-- description: Every candidate of the snapshot, in seq order, with the create event's (lowest {first}, then lowest {seq}) data values of the bound :keys, in order: discover --csv. Set-based: one pass over the candidates' events, not a lookup per stream.
WITH firsts AS (
  SELECT DISTINCT ON (e.{estream}) e.{estream}::text AS sid, e.{data} AS d
  FROM {events} e
  JOIN archive_candidates x ON x.snapshot = CAST(:snapshot AS uuid) AND CAST(x.stream_id AS {etype}) = e.{estream}
  ORDER BY e.{estream}, e.{first}, e.{seq})
SELECT c.seq, c.stream_id, c.stream_type, c.events, c.xref,
       ARRAY(SELECT f.d ->> k.key FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS k(key, n) ORDER BY k.n)
FROM archive_candidates c
LEFT JOIN firsts f ON f.sid = c.stream_id
WHERE c.snapshot = CAST(:snapshot AS uuid) ORDER BY c.seq;

-- name: type_exists
-- description: Whether some stream (hot or archived) has the type :type: discover --type's typo check.
SELECT EXISTS (SELECT 1 FROM {streams} s WHERE CAST(s.{stype} AS text) = CAST(:type AS text));

-- name: types_present
-- description: The stream types present (hot or archived), the first :limit: what a --type that matched none might have meant.
SELECT CAST(s.{stype} AS text) FROM {streams} s GROUP BY 1 ORDER BY 1 LIMIT :limit;

-- name: verify_audited
-- description: tidegate verify of an archive job: the streams its audit holds, moved and skipped.
SELECT count(*) AS streams, count(*) FILTER (WHERE action <> 'skip') AS moved,
       count(*) FILTER (WHERE action = 'skip') AS skipped
FROM archive_audit WHERE job_id = CAST(:job_id AS uuid);

-- name: verify_left_behind
-- description: Events still in {src} ({flag_is}: with the flag they had) of the streams the job :job_id audited as :action and that are still in that {state}: none, after a sound run.
SELECT count(*) FROM archive_audit a
JOIN {streams} s ON s.{key}::text = a.stream_id AND {state}
JOIN {src} e ON e.{estream} = s.{key} {flag_is}
WHERE a.job_id = CAST(:job_id AS uuid) AND a.action = :action;

-- name: verify_flag_is
-- description: Piece of verify_left_behind: the event's flag still holds the value it had before the move (:flag_before: false or true, or e.g. 'hot' or 'cold').
AND e.{eflag} = CAST(:flag_before AS {eftype});

-- name: verify_xref
-- description: How many streams the job :job_id archived a live event names under the reference key :ref ({live}: not archived).
SELECT count(DISTINCT a.stream_id) FROM archive_audit a
JOIN {events} e ON e.{data} ->> CAST(:ref AS text) = a.stream_id {live}
WHERE a.job_id = CAST(:job_id AS uuid) AND a.action = 'archive';

-- name: verify_event_live
-- description: Piece of verify_xref: the referencing event is not archived (a layout that flags events: its flag holds the hot value, false or e.g. 'hot').
AND e.{eflag} = CAST(:flag_hot AS {eftype});
