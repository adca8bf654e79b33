-- backfill-range's --where filters. {source} is the catalog-checked source table (worker/sql render);
-- {where} is the filters' " AND ..." fragment (jobs/filters.py), whose {wN} are the filtered columns.

-- name: probe
-- description: Plans the filters once without reading a row: a value that does not fit its column's type fails here, not in a batch.
SELECT 1 FROM {source} WHERE true{where} LIMIT 0;
