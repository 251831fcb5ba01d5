-- name: claim_pending_embeddings
-- Up to `limit` messages waiting for an embedding, oldest first, locked for the
-- caller's transaction; rows another worker holds are skipped, never waited for,
-- so several workers share the queue without taking the same message twice.
SELECT m.context_id, m.version, m.content
FROM messages AS m
WHERE m.embedding IS NULL AND m.embedding_failed_at IS NULL
ORDER BY m.created_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: set_embeddings!
-- Writes the embeddings of claimed messages (parallel arrays; each embedding in
-- pgvector's text form); a message that has one by now keeps it.
UPDATE messages AS m
SET embedding = u.embedding::vector
FROM unnest(%(context_ids)s::uuid[], %(versions)s::bigint[], %(embeddings)s::text[]) AS u (context_id, version, embedding)
WHERE m.context_id = u.context_id AND m.version = u.version AND m.embedding IS NULL;

-- name: mark_embeddings_failed!
-- Takes messages the endpoint refused for good out of the queue.
UPDATE messages AS m
SET embedding_failed_at = clock_timestamp()
FROM unnest(%(context_ids)s::uuid[], %(versions)s::bigint[]) AS u (context_id, version)
WHERE m.context_id = u.context_id AND m.version = u.version AND m.embedding IS NULL;

-- name: count_embedding_backlog$
-- Messages waiting for an embedding, counted up to `cap` (an index-only walk of
-- the queue's partial index, bounded whatever its length).
SELECT count(*) FROM (
    SELECT 1 FROM messages AS m
    WHERE m.embedding IS NULL AND m.embedding_failed_at IS NULL
    LIMIT %(cap)s
) AS waiting;

-- name: list_embedding_indexes
-- The HNSW indexes on embeddings (messages_embedding_<dim>_idx): their dimension,
-- whether they are valid, and the planner's estimate of the rows they hold
-- (-1 before the table's first VACUUM or ANALYZE). An index of another dimension
-- than EMBEDDING_DIM that holds rows means the deployment changed its dimension.
SELECT substring(c.relname FROM '^messages_embedding_([0-9]+)_idx$')::integer AS dim,
       i.indisvalid AS valid, c.reltuples AS rows
FROM pg_class AS c
JOIN pg_index AS i ON i.indexrelid = c.oid
WHERE c.relnamespace = current_schema()::regnamespace AND c.relname ~ '^messages_embedding_[0-9]+_idx$'
ORDER BY 1;

-- name: lock_index_builds$
-- Waits for the session-level advisory lock that serializes `worker
-- --ensure-indexes` runs (released when the session ends).
SELECT pg_advisory_lock(%(key)s::bigint) IS NOT NULL;
