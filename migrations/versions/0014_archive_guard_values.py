"""archive guard: value flags (Rillflow's retention_class = 'cold') and partition trees of any depth

Revision ID: 0014
Revises: 0013
Create Date: 2027-01-28

* ``archive_guards.event_flag_value``: the value the layout's events flag holds for an archived
  event (``'cold'`` for Rillflow's partitioned backend, whose ``events`` is LIST-partitioned on
  ``retention_class``); NULL keeps the boolean meaning (Marten's ``is_archived = true``).
* ``tidegate_archive_guard()`` finds its settings through every ancestor of the table it fires on
  (``pg_partition_ancestors``): a trigger on ``events`` is cloned to ``events_hot_2025_01``, two levels
  down, where looking one level up found nothing and the guard let every append through. It compares
  the flag as text (no boolean cast, which a text flag such as ``'hot'`` fails), redirects by setting the
  flag to the archived value, and re-inserts with ``OVERRIDING SYSTEM VALUE`` (an identity sequence
  number is kept).

The function is still the one generic function of 0003; the layout's names stay bound values in
``archive_guards``, quoted by ``format()`` as before. ``archive_guards`` is granted as before.
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

GUARD_FUNCTION = r"""
CREATE OR REPLACE FUNCTION tidegate_archive_guard() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    g archive_guards%ROWTYPE;
    rec jsonb := to_jsonb(NEW);
    sid text;
    archived boolean;
    cols text;
BEGIN
    SELECT a.* INTO g FROM archive_guards a  -- a plain table has no ancestors, not even itself
    WHERE CAST(a.events_table AS regclass) = TG_RELID
       OR CAST(a.events_table AS regclass) IN (SELECT p.relid FROM pg_partition_ancestors(TG_RELID) p)
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    sid := rec ->> g.event_stream;
    IF sid IS NULL OR (g.event_flag IS NOT NULL
                       AND (rec ->> g.event_flag) IS NOT DISTINCT FROM coalesce(g.event_flag_value, 'true')) THEN
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
    SELECT string_agg(quote_ident(k), ', ') INTO cols FROM jsonb_object_keys(rec) k;
    IF g.event_flag IS NOT NULL THEN
        EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM jsonb_populate_record(NULL::%s, $1)',
                       g.events_table, cols, cols, g.events_table)
            USING rec || jsonb_build_object(g.event_flag, coalesce(g.event_flag_value, 'true'));
        RETURN NULL;
    END IF;
    EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM jsonb_populate_record(NULL::%s, $1)',
                   g.archive_table, cols, cols, g.archive_table)
        USING rec;
    RETURN NULL;
END
$fn$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE archive_guards ADD COLUMN event_flag_value text")
    op.execute(GUARD_FUNCTION)


def downgrade() -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("tidegate_0003", Path(__file__).with_name("0003_archive.py"))
    assert spec is not None and spec.loader is not None
    previous = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(previous)  # 0003's function, as it was
    op.execute(previous.GUARD_FUNCTION)
    op.execute("ALTER TABLE archive_guards DROP COLUMN IF EXISTS event_flag_value")
