-- Context Store schema, version 1.
-- Never edit this file once released: add 0002_... instead.

CREATE EXTENSION IF NOT EXISTS vector;

-- A context is the head of one conversation. Its ancestry never changes after it
-- is created, so it is stored on the row (ancestor_ids / ancestor_ends): reading a
-- fork needs no recursion. Segment i of the lineage is ancestor_ids[i], holding
-- versions ancestor_ends[i-1]+1 .. ancestor_ends[i]; the context itself holds
-- versions ancestor_ends[last]+1 .. head_version. Empty segments are never stored.
CREATE TABLE contexts (
    id             uuid        PRIMARY KEY,
    tenant         text        NOT NULL DEFAULT 'default',
    root_id        uuid        NOT NULL,
    parent_id      uuid        REFERENCES contexts (id),
    fork_version   bigint,
    ancestor_ids   uuid[]      NOT NULL DEFAULT '{}',
    ancestor_ends  bigint[]    NOT NULL DEFAULT '{}',
    head_version   bigint      NOT NULL DEFAULT 0,
    total_tokens   bigint      NOT NULL DEFAULT 0,
    metadata       jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at     timestamptz,
    CONSTRAINT contexts_head_version_check CHECK (head_version >= 0),
    CONSTRAINT contexts_total_tokens_check CHECK (total_tokens >= 0),
    CONSTRAINT contexts_fork_check CHECK (
        (parent_id IS NULL AND fork_version IS NULL)
        OR (parent_id IS NOT NULL AND fork_version >= 0 AND head_version >= fork_version)),
    CONSTRAINT contexts_lineage_check CHECK (
        cardinality(ancestor_ids) = cardinality(ancestor_ends)),
    CONSTRAINT contexts_metadata_check CHECK (jsonb_typeof(metadata) = 'object')
);

-- Newest first listing (keyset on created_at, id) of a tenant's live contexts.
CREATE INDEX contexts_tenant_created_idx
    ON contexts (tenant, created_at DESC, id DESC) WHERE deleted_at IS NULL;
-- Metadata containment filter (jsonb @>).
CREATE INDEX contexts_metadata_idx ON contexts USING gin (metadata jsonb_path_ops);
-- Lineage: every fork of a conversation, for a future shard key and for lookups.
CREATE INDEX contexts_root_idx ON contexts (root_id);

-- Messages are stored once, in the context that appended them; forks read their
-- ancestors' rows. cum_tokens is the running token total including the inherited
-- prefix, so a token window is an index range scan on (context_id, cum_tokens).
CREATE TABLE messages (
    context_id   uuid        NOT NULL REFERENCES contexts (id),
    version      bigint      NOT NULL,
    role         text        NOT NULL,
    content      text        NOT NULL,
    token_count  integer     NOT NULL,
    cum_tokens   bigint      NOT NULL,
    embedding    vector,
    metadata     jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    CONSTRAINT messages_pkey PRIMARY KEY (context_id, version),
    CONSTRAINT messages_version_check CHECK (version >= 1),
    CONSTRAINT messages_role_check CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    CONSTRAINT messages_token_count_check CHECK (token_count >= 0),
    CONSTRAINT messages_cum_tokens_check CHECK (cum_tokens >= token_count),
    CONSTRAINT messages_metadata_check CHECK (jsonb_typeof(metadata) = 'object')
);

-- Token window: first message whose running total reaches a bound.
CREATE INDEX messages_cum_tokens_idx ON messages (context_id, cum_tokens, version);
-- Point-in-time: latest version created at or before a timestamp.
CREATE INDEX messages_created_idx ON messages (context_id, created_at, version);

-- RFC 7396 JSON merge patch, applied in the database so that concurrent patches
-- of one context's metadata serialize on its row and never lose a key.
CREATE FUNCTION cs_merge_patch(target jsonb, patch jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    key text;
    value jsonb;
    result jsonb;
BEGIN
    IF jsonb_typeof(patch) IS DISTINCT FROM 'object' THEN
        RETURN patch;
    END IF;
    IF jsonb_typeof(target) IS DISTINCT FROM 'object' THEN
        result := '{}'::jsonb;
    ELSE
        result := target;
    END IF;
    FOR key, value IN SELECT e.key, e.value FROM jsonb_each(patch) AS e LOOP
        IF jsonb_typeof(value) = 'null' THEN
            result := result - key;
        ELSE
            result := jsonb_set(result, ARRAY[key], cs_merge_patch(result -> key, value));
        END IF;
    END LOOP;
    RETURN result;
END
$$;
