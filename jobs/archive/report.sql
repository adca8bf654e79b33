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
