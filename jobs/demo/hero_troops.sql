-- The demo's SQL handler: hero_snapshots in (:lo, :hi] -> user_troops, set-based.
-- Same result as the Python handler `hero_troops`: malformed snapshots are
-- skipped whole, the newest snapshot of a user wins, re-running is a no-op.
INSERT INTO user_troops AS ut (user_id, troop_id, level, amount, ascension, snapshot_id, snapshot_at)
SELECT DISTINCT ON (s.user_id, (t->>'Id')::int)
       s.user_id, (t->>'Id')::int, (t->>'Level')::int, (t->>'Count')::int,
       coalesce((t->>'Ascension')::int, 0), s.id, s.created_at
FROM hero_snapshots s
CROSS JOIN LATERAL jsonb_array_elements(s.raw->'ProfileData'->'Troops') AS t
WHERE s.created_at > :lo AND s.created_at <= :hi
  AND jsonb_typeof(s.raw->'ProfileData'->'Troops') = 'array'
  AND NOT EXISTS (
      SELECT 1 FROM jsonb_array_elements(s.raw->'ProfileData'->'Troops') AS bad
      WHERE jsonb_typeof(bad->'Id') IS DISTINCT FROM 'number'
         OR jsonb_typeof(bad->'Level') IS DISTINCT FROM 'number'
         OR jsonb_typeof(bad->'Count') IS DISTINCT FROM 'number')
ORDER BY s.user_id, (t->>'Id')::int, s.created_at DESC, s.id DESC
ON CONFLICT (user_id, troop_id) DO UPDATE
SET level = EXCLUDED.level, amount = EXCLUDED.amount, ascension = EXCLUDED.ascension,
    snapshot_id = EXCLUDED.snapshot_id, snapshot_at = EXCLUDED.snapshot_at
WHERE (ut.snapshot_at, ut.snapshot_id) < (EXCLUDED.snapshot_at, EXCLUDED.snapshot_id)
