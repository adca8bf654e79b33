-- A layout's projection documents (Marten's mt_doc_*), kept in archive_documents while their stream is
-- archived (jobs/archive/archive_range.py). {doc} is the catalog-checked document table, {dkey} its
-- stream-id column and {dtype} that column's type, {cols} its stored columns (worker/sql render);
-- :relation is {doc} as quoted, the key of its rows in archive_documents.

-- name: archive
-- description: Move the locked streams' documents of one table into archive_documents, whole rows.
WITH moved AS (DELETE FROM {doc} d WHERE d.{dkey} = ANY(CAST(:ids AS {dtype}[]))
               RETURNING d.{dkey}::text AS stream_id, to_jsonb(d.*) AS doc)
INSERT INTO archive_documents (relation, stream_id, doc, job_id)
SELECT :relation, m.stream_id, m.doc, CAST(:job_id AS uuid) FROM moved m;

-- name: restore
-- description: Put the unarchived streams' documents of one table back and delete their copies; a document the projection has rebuilt meanwhile is kept (ON CONFLICT DO NOTHING).
WITH back AS (DELETE FROM archive_documents a
              WHERE a.relation = :relation AND a.stream_id = ANY(CAST(:ids AS text[])) RETURNING a.doc)
INSERT INTO {doc} ({cols}) OVERRIDING SYSTEM VALUE
SELECT {cols} FROM (SELECT (jsonb_populate_record(CAST(NULL AS {doc}), b.doc)).* FROM back b) r
ON CONFLICT DO NOTHING;
