-- The registered archive layouts (jobs/archive/layouts.py): table archive_layouts.

-- name: get
-- description: A registered layout's checked document.
SELECT spec FROM archive_layouts WHERE name = :name;

-- name: get_sha
-- description: The sha256 of a registered layout's text: whether re-registering changes it.
SELECT sha256 FROM archive_layouts WHERE name = :name;

-- name: names
-- description: The first :limit registered layout names, for an error message.
SELECT name FROM archive_layouts ORDER BY name LIMIT :limit;

-- name: can_add
-- description: Whether this role may register layouts.
SELECT has_table_privilege('archive_layouts', 'INSERT');

-- name: upsert
-- description: Register a layout (or replace its text and document), by whom and when.
INSERT INTO archive_layouts (name, format, body, sha256, spec)
VALUES (:name, :format, :body, :sha256, CAST(:spec AS jsonb))
ON CONFLICT (name) DO UPDATE SET format = EXCLUDED.format, body = EXCLUDED.body, sha256 = EXCLUDED.sha256,
    spec = EXCLUDED.spec, added_by = session_user, added_at = now();

-- name: list
-- description: Every registered layout, for `tidegate archive layout list`.
SELECT name, 'registered' AS source, spec->>'strategy' AS strategy, sha256, added_by, added_at
FROM archive_layouts ORDER BY name;
