"""archive: candidate snapshots, per-stream audit, deletion-watch cursors

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

* ``archive_candidates`` fixes an archive (or unarchive) job's selection when a
  worker plans it: one row per stream, numbered ``seq`` 1..N. The job is keyed by
  ``seq`` (a bigint, like every range job), whatever the type of the stream id
  (uuid, text, bigint), so slices and batches are seq ranges and a dry run can
  report the selection exactly.
* ``archive_audit`` holds one row per stream a job archived, unarchived or
  skipped, written in the batch transaction that moved it: its counts match the
  tables, and ``unarchive-range --from-audit JOB_ID`` reads it back.
* ``archive_watch_cursors``: the highest events-table sequence `watch-deletions` has
  seen, per watcher name; ``archive_watch_seen`` the deletion events it turned into work
  (each exactly once: a rescan behind the cursor catches late commits without doubling).
* ``archive_guards`` and the trigger function ``tidegate_archive_guard()``: `tidegate
  archive guard` stores a layout's names here (as bound values) and attaches the one
  generic function to the events table, so no user name is ever spliced into DDL text.
  The function locks the stream row FOR KEY SHARE (it waits for an archive batch holding
  it FOR UPDATE, then sees the committed mark) and refuses the insert (SQLSTATE P0001,
  "stream ... is archived") or redirects it to the archive table / sets the archived flag.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE archive_candidates (
            snapshot    uuid NOT NULL,
            seq         bigint NOT NULL CHECK (seq > 0),
            stream_id   text NOT NULL,
            stream_type text,
            events      bigint NOT NULL DEFAULT 0,
            xref        boolean NOT NULL DEFAULT false,
            PRIMARY KEY (snapshot, seq)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE archive_audit (
            id          bigserial PRIMARY KEY,
            at          timestamptz NOT NULL DEFAULT now(),
            job_id      uuid NOT NULL,
            action      text NOT NULL CHECK (action IN ('archive', 'unarchive', 'skip')),
            layout      text NOT NULL,
            stream_id   text NOT NULL,
            stream_type text,
            events      bigint NOT NULL DEFAULT 0,
            reason      text,
            actor       text
        )
        """
    )
    op.execute("CREATE INDEX archive_audit_job_idx ON archive_audit (job_id, action)")
    op.execute(
        """
        CREATE TABLE archive_watch_cursors (
            name        text PRIMARY KEY,
            layout      text NOT NULL,
            last_seq    bigint NOT NULL DEFAULT 0,
            updated_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )


    op.execute(
        """
        CREATE TABLE archive_watch_seen (
            name        text NOT NULL REFERENCES archive_watch_cursors (name) ON DELETE CASCADE,
            seq         bigint NOT NULL,
            stream_id   text NOT NULL,
            job_id      uuid,
            seen_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (name, seq)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE archive_guards (
            events_table     text PRIMARY KEY,   -- quoted, schema-qualified (catalog-checked)
            mode             text NOT NULL CHECK (mode IN ('reject', 'redirect')),
            layout           text NOT NULL,
            streams_table    text NOT NULL,
            stream_key       text NOT NULL,
            key_type         text NOT NULL,
            mark_column      text NOT NULL,
            mark_is_flag     boolean NOT NULL,
            event_stream     text NOT NULL,
            archive_table    text,               -- move strategy: redirect here
            event_flag       text,               -- flag strategy: redirect by setting this
            installed_at     timestamptz NOT NULL DEFAULT now(),
            installed_by     text
        )
        """
    )
    op.execute(GUARD_FUNCTION)


GUARD_FUNCTION = r"""
CREATE OR REPLACE FUNCTION tidegate_archive_guard() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    g archive_guards%ROWTYPE;
    rec jsonb := to_jsonb(NEW);
    sid text;
    archived boolean;
    cols text;
BEGIN
    SELECT * INTO g FROM archive_guards a
    WHERE CAST(a.events_table AS regclass) = TG_RELID
       OR CAST(a.events_table AS regclass) IN (SELECT inhparent FROM pg_inherits WHERE inhrelid = TG_RELID)
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    sid := rec ->> g.event_stream;
    IF sid IS NULL OR (g.event_flag IS NOT NULL AND coalesce((rec ->> g.event_flag)::boolean, false)) THEN
        RETURN NEW;  -- no stream, or an event already flagged archived (an archive batch moving it)
    END IF;
    EXECUTE format('SELECT %s FROM %s WHERE %I = CAST($1 AS %s) FOR KEY SHARE',
                   CASE WHEN g.mark_is_flag THEN format('coalesce(%I, false)', g.mark_column)
                        ELSE format('%I IS NOT NULL', g.mark_column) END,
                   g.streams_table, g.stream_key, g.key_type)
        INTO archived USING sid;
    IF NOT coalesce(archived, false) THEN
        RETURN NEW;
    END IF;
    IF g.mode = 'reject' THEN
        RAISE EXCEPTION 'stream % is archived: append refused (tidegate archive guard on %)', sid, g.events_table
            USING ERRCODE = 'P0001', HINT = 'unarchive it first: tidegate enqueue unarchive-range --stream ' || sid;
    END IF;
    IF g.event_flag IS NOT NULL THEN
        EXECUTE format('INSERT INTO %s SELECT * FROM jsonb_populate_record(NULL::%s, $1)', g.events_table,
                       g.events_table)
            USING rec || jsonb_build_object(g.event_flag, true);
        RETURN NULL;
    END IF;
    SELECT string_agg(quote_ident(k), ', ') INTO cols FROM jsonb_object_keys(rec) k;
    EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM jsonb_populate_record(NULL::%s, $1)',
                   g.archive_table, cols, cols, g.archive_table)
        USING rec;
    RETURN NULL;
END
$fn$
"""


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS tidegate_archive_guard() CASCADE")
    op.execute("DROP TABLE IF EXISTS archive_guards")
    for table in ("archive_watch_seen", "archive_watch_cursors", "archive_audit", "archive_candidates"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
