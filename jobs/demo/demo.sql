-- SQL of the demo. Named sections, loaded with worker.sql.load.

-- name: count_snapshots
-- description: How many snapshots the demo table holds (an existing table of the asked size is kept).
SELECT count(*) FROM hero_snapshots;

-- name: empty_troops
-- description: Empty the derived table, so a run starts from nothing.
TRUNCATE user_troops;

-- name: empty_snapshots
-- description: Empty the snapshots before a refill, ids from 1 again.
TRUNCATE hero_snapshots RESTART IDENTITY;

-- name: analyze_snapshots
-- description: Fresh statistics after a seed, so the planner's estimates (and a job's slices) are right.
ANALYZE hero_snapshots;

-- name: seed
-- description: :rows deterministic snapshots after :offset, for :users users, from :start; about 1 in 997 malformed.
INSERT INTO hero_snapshots (user_id, namecode, created_at, size_bytes, raw)
SELECT 1 + (i % :users),
       'NC' || lpad(upper(to_hex(1 + (i % :users))), 8, '0'),
       CAST(:start AS timestamptz) + make_interval(secs => i * :spacing + (abs(hashtext(i::text)) % 1000) / 1000.0),
       octet_length(doc::text),
       doc
FROM (
    SELECT i,
           CASE i % 997
             WHEN 13 THEN jsonb_build_object('NameCode', 'NC' || i, 'Level', 3, 'ProfileData', jsonb_build_object('Troops', 'corrupted'))
             WHEN 500 THEN jsonb_build_object('NameCode', 'NC' || i, 'Level', 9, 'ProfileData', jsonb_build_object('Pets', '[]'::jsonb))
             WHEN 777 THEN jsonb_build_object('NameCode', 'NC' || i, 'ProfileData', jsonb_build_object('Troops',
                 jsonb_build_array(jsonb_build_object('Id', 6001, 'Level', 'max', 'Count', 1))))
             ELSE jsonb_build_object(
               'NameCode', 'NC' || lpad(upper(to_hex(1 + (i % :users))), 8, '0'),
               'Level', 1 + abs(hashtext('lvl' || i)) % 1500,
               'Guild', jsonb_build_object('Id', abs(hashtext('g' || (i % :users))) % 5000, 'Rank', abs(hashtext('r' || i)) % 5),
               'ProfileData', jsonb_build_object(
                 'Troops', (SELECT jsonb_agg(jsonb_build_object(
                               'Id', 6000 + ((i * 7 + k * 31) % 300),
                               'Level', 1 + abs(hashtext(i || '-' || k)) % 20,
                               'Count', 1 + abs(hashtext(k || '-' || i)) % 50,
                               'Ascension', abs(hashtext('a' || i || k)) % 6) ORDER BY k)
                            FROM generate_series(0, 9) AS k),
                 'Pets', jsonb_build_array(jsonb_build_object('Id', 3000 + i % 80, 'Level', 1 + i % 20)),
                 'Kingdoms', jsonb_build_array('Broken Spire', 'Whitehelm', 'Zaejin')))
           END AS doc
    FROM generate_series(:offset + 1, :offset + :rows) AS i
) s;

-- name: troops_checksum
-- description: Order-independent fingerprint of user_troops, to compare two runs.
SELECT count(*) AS rows,
       coalesce(sum(hashtext(user_id || ':' || troop_id || ':' || level || ':' || amount || ':' || ascension || ':' || snapshot_id)::bigint), 0) AS checksum
FROM user_troops;
