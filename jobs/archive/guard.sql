-- `tidegate archive guard`'s statements (jobs/archive/guard.py). {events} is the layout's
-- catalog-checked events table (worker/sql render); the trigger function itself is migration 0003's.

-- name: drop_trigger
-- description: Detach the guard from the events table (if attached).
DROP TRIGGER IF EXISTS tidegate_archive_guard ON {events};

-- name: create_trigger
-- description: Attach the guard to the events table: every insert passes tidegate_archive_guard().
CREATE TRIGGER tidegate_archive_guard BEFORE INSERT ON {events}
FOR EACH ROW EXECUTE FUNCTION tidegate_archive_guard();

-- name: forget
-- description: The events table's guard settings, removed.
DELETE FROM archive_guards WHERE events_table = :t;

-- name: upsert
-- description: The layout's names and the mode the trigger reads, as bound values (never DDL text).
INSERT INTO archive_guards (events_table, mode, layout, streams_table, stream_key, key_type, mark_column,
                            mark_is_flag, event_stream, archive_table, event_flag, event_flag_value, installed_by)
VALUES (:events_table, :mode, :layout, :streams_table, :stream_key, :key_type, :mark_column, :mark_is_flag,
        :event_stream, :archive_table, :event_flag, :event_flag_value, :by)
ON CONFLICT (events_table) DO UPDATE SET mode = EXCLUDED.mode, layout = EXCLUDED.layout,
    streams_table = EXCLUDED.streams_table, stream_key = EXCLUDED.stream_key, key_type = EXCLUDED.key_type,
    mark_column = EXCLUDED.mark_column, mark_is_flag = EXCLUDED.mark_is_flag, event_stream = EXCLUDED.event_stream,
    archive_table = EXCLUDED.archive_table, event_flag = EXCLUDED.event_flag,
    event_flag_value = EXCLUDED.event_flag_value, installed_at = now(),
    installed_by = EXCLUDED.installed_by;
