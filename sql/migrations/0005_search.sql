-- Search by words and by meaning, and the queue of messages waiting for an
-- embedding from the worker. Never edit this file once released.
--
-- content_tsv holds each message's words, computed once at append (a stored
-- generated column): ranking reads it instead of re-parsing content for every
-- match. Its text search configuration is part of the expression; 'simple' is the
-- default of TEXT_SEARCH_CONFIG, and `context-store worker --ensure-indexes`
-- rewrites the expression for another one. Only the first 200,000 characters are
-- indexed: a tsvector is limited to 1 MB, and the append must never fail on it.
-- Adding the column rewrites messages once.
ALTER TABLE messages
    ADD COLUMN content_tsv tsvector
        GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, left(content, 200000))) STORED,
    -- Set by the worker when the embeddings endpoint refuses a message for good
    -- (empty text, over the model's input limit): it leaves the queue.
    ADD COLUMN embedding_failed_at timestamptz;

-- Full-text search.
CREATE INDEX messages_content_tsv_idx ON messages USING gin (content_tsv);

-- Approximate nearest neighbours by cosine distance. An HNSW index needs one
-- dimension and the column has none, so the index is on a cast, partial to rows
-- of that dimension: 1536, the default EMBEDDING_DIM. Another dimension gets its
-- own index (messages_embedding_<dim>_idx) from `context-store worker
-- --ensure-indexes`; rows of other dimensions never break a cast.
CREATE INDEX messages_embedding_1536_idx ON messages
    USING hnsw ((embedding::vector(1536)) vector_cosine_ops)
    WHERE vector_dims(embedding) = 1536;

-- The worker's queue: messages appended without an embedding, oldest first.
-- Partial, so it holds only what waits and a claim never scans embedded rows.
CREATE INDEX messages_embedding_pending_idx ON messages (created_at)
    WHERE embedding IS NULL AND embedding_failed_at IS NULL;
