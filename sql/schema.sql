-- Context Store: the current schema in one file, to read.
--
-- The database is built by the migrations in migrations/ (applied in order by
-- `context-store migrate`), never from this file; tests/integration/test_schema.py
-- builds a database from each and checks that their catalogs are the same (tables,
-- columns, constraints, indexes, functions). A new migration updates this file in
-- the same commit.
--
-- Functions carry a version suffix (_v1, _v2): a migration that changes one adds _v2
-- beside it, so the workers of the previous release keep calling theirs while a
-- deploy rolls. The unsuffixed functions at the end are the first release's, kept
-- for that reason; a later migration drops them.

-- ---------------------------------------------------------------- tables

CREATE EXTENSION IF NOT EXISTS vector;

-- A context is the head of one conversation. Its ancestry never changes after it
-- is created, so it is stored on the row (ancestor_ids / ancestor_ends): reading a
-- fork needs no recursion. Segment i of the lineage is ancestor_ids[i], holding
-- versions ancestor_ends[i-1]+1 .. ancestor_ends[i]; the context itself holds
-- versions ancestor_ends[last]+1 .. head_version. Empty segments are never stored.
--
-- root_id is the conversation's root (a root context's own id; a fork's parent's
-- root): the shard key (0007, docs/SHARDING.md). The keys include it and lead with
-- the id, so a lookup by id alone is still a prefix probe.
CREATE TABLE contexts (
    id             uuid        NOT NULL,
    tenant         text        NOT NULL DEFAULT 'default',
    root_id        uuid        NOT NULL,
    parent_id      uuid,
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
    CONSTRAINT contexts_metadata_check CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT contexts_pkey PRIMARY KEY (id, root_id),
    -- A fork shares its parent's root, so the parent is found on the fork's shard.
    CONSTRAINT contexts_parent_fkey FOREIGN KEY (parent_id, root_id) REFERENCES contexts (id, root_id)
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
-- root_id (0007) is the root of the context that holds the message: the shard key,
-- in the primary key and the foreign key; the other indexes leave it out (never
-- unique, and every probe through them names the context, whose rows share it).
CREATE TABLE messages (
    context_id   uuid        NOT NULL,
    version      bigint      NOT NULL,
    role         text        NOT NULL,
    content      text        NOT NULL,
    token_count  integer     NOT NULL,
    cum_tokens   bigint      NOT NULL,
    embedding    vector,
    metadata     jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    -- Search (0005): the words of content, computed once at append; and when the
    -- worker gave up embedding the message (the endpoint refused it for good).
    content_tsv  tsvector    GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, left(content, 200000))) STORED,
    embedding_failed_at timestamptz,
    root_id      uuid        NOT NULL,
    CONSTRAINT messages_pkey PRIMARY KEY (context_id, root_id, version),
    CONSTRAINT messages_context_fkey FOREIGN KEY (context_id, root_id) REFERENCES contexts (id, root_id),
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
-- A message's root follows from its context (0008): without this the planner
-- takes the two equalities every probe has as independent and costs a generic
-- plan for one row per context.
CREATE STATISTICS messages_context_root (dependencies) ON context_id, root_id FROM messages;
-- Full-text search (0005); TEXT_SEARCH_CONFIG is the expression's configuration.
CREATE INDEX messages_content_tsv_idx ON messages USING gin (content_tsv);
-- Nearest neighbours by cosine distance (0005): HNSW needs a dimension, so the
-- index is on a cast, partial to rows of EMBEDDING_DIM (1536 here; another
-- dimension gets messages_embedding_<dim>_idx from `worker --ensure-indexes`).
CREATE INDEX messages_embedding_1536_idx ON messages
    USING hnsw ((embedding::vector(1536)) vector_cosine_ops)
    WHERE vector_dims(embedding) = 1536;
-- The embedding worker's queue (0005): messages waiting for an embedding.
CREATE INDEX messages_embedding_pending_idx ON messages (created_at)
    WHERE embedding IS NULL AND embedding_failed_at IS NULL;

-- Which root a context belongs to, for a request that names only the context
-- (0007): distributed by id on Citus, so the lookup routes to one shard. Never
-- changes once written; its key keeps context ids unique across roots.
CREATE TABLE context_roots (
    id       uuid NOT NULL,
    root_id  uuid NOT NULL,
    CONSTRAINT context_roots_pkey PRIMARY KEY (id)
);

-- Fills messages.root_id from the context when an insert left it out: only the
-- previous release's statements do, while a deploy rolls. Dropped before the
-- tables are distributed.
CREATE FUNCTION cs_fill_message_root_v1()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- No such context: a root of its own id, so that the foreign key refuses the
    -- row as it did before (a not-null error would tell the caller less).
    NEW.root_id := coalesce((SELECT c.root_id FROM contexts AS c WHERE c.id = NEW.context_id), NEW.context_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER messages_fill_root BEFORE INSERT ON messages
    FOR EACH ROW WHEN (NEW.root_id IS NULL) EXECUTE FUNCTION cs_fill_message_root_v1();

-- Records the root of a context the previous release created (its statements do
-- not write context_roots); the current statements have written the row already,
-- and the conflict leaves it. A later migration drops it, with messages_fill_root.
CREATE FUNCTION cs_record_context_root_v1()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO context_roots (id, root_id) VALUES (NEW.id, NEW.root_id) ON CONFLICT (id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER contexts_record_root AFTER INSERT ON contexts
    FOR EACH ROW EXECUTE FUNCTION cs_record_context_root_v1();

-- ---------------------------------------------------------------- API keys

-- API keys: each belongs to one tenant. Only a SHA-256 of the key is stored; the
-- key itself is shown once, when it is created, and can never be read back.
CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    tenant       text        NOT NULL,
    name         text,
    secret_hash  bytea       NOT NULL,
    prefix       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_keys_secret_hash_key UNIQUE (secret_hash),
    CONSTRAINT api_keys_secret_hash_check CHECK (octet_length(secret_hash) = 32),
    -- The same rule as the CLI's: tenants appear in logs and tables unquoted.
    CONSTRAINT api_keys_tenant_check CHECK (tenant ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    CONSTRAINT api_keys_name_check CHECK (char_length(name) BETWEEN 1 AND 200),
    CONSTRAINT api_keys_prefix_check CHECK (char_length(prefix) BETWEEN 1 AND 16)
);

-- `keys list --tenant T`, oldest first; also answers "does any live key exist".
CREATE INDEX api_keys_tenant_created_idx ON api_keys (tenant, created_at, id);
-- Start-up and every worker ask whether any live key exists (open mode or not).
CREATE INDEX api_keys_live_idx ON api_keys (created_at) WHERE revoked_at IS NULL;

-- ---------------------------------------------------------------- idempotency keys

-- Idempotency keys: the first successful response to a POST that carried an
-- Idempotency-Key, kept for a retry of the same request. The row commits in the
-- same transaction as the write it describes, so a worker that dies mid-request
-- leaves neither. Rows past expires_at are ignored and removed in small batches
-- by the service itself.
CREATE TABLE idempotency_keys (
    tenant        text        NOT NULL,
    key           text        NOT NULL,
    method        text        NOT NULL,
    path          text        NOT NULL,
    request_hash  bytea       NOT NULL,
    status        smallint    NOT NULL,
    headers       jsonb       NOT NULL,
    body          bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at    timestamptz NOT NULL,
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (tenant, key, method, path),
    CONSTRAINT idempotency_keys_key_check CHECK (key ~ '^[!-~]{1,255}$'),
    CONSTRAINT idempotency_keys_status_check CHECK (status BETWEEN 200 AND 299)
);

-- The service's clean-up takes the oldest expired rows first.
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

-- Claims a key for one request, in the caller's transaction: 'in_use' when another
-- transaction holds it (a request with that key is still running), else the lock
-- is held until the caller commits and the stored response, if any, is returned
-- with status 'stored' ('new' when there is none). plpgsql so that the lookup runs
-- in a snapshot taken after the lock: a first request that committed while this
-- one waited for nothing is seen, never repeated.
CREATE FUNCTION cs_claim_idempotency_v1(p_tenant text, p_key text, p_method text, p_path text)
RETURNS TABLE (status text, request_hash bytea, response_status smallint, headers jsonb, body bytea)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(
        hashtextextended(p_tenant || chr(10) || p_key || chr(10) || p_method || chr(10) || p_path, 0)
    ) THEN
        status := 'in_use';
        RETURN NEXT;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT CASE WHEN k.tenant IS NULL THEN 'new' ELSE 'stored' END,
               k.request_hash, k.status, k.headers, k.body
        FROM (SELECT) AS one
        LEFT JOIN idempotency_keys AS k
          ON k.tenant = p_tenant AND k.key = p_key AND k.method = p_method AND k.path = p_path
         AND k.expires_at > clock_timestamp();
END
$$;

-- ---------------------------------------------------------------- functions (current)

-- RFC 3339 UTC with microseconds, the API's one timestamp format:
-- 2026-01-01T00:00:00.000000Z. STABLE like to_char, so that the planner inlines it
-- (a function declared stricter than its body is called, not inlined: measured
-- several times slower per row).
CREATE FUNCTION cs_time_v1(ts timestamptz)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- A message as the API returns it; the embedding (pgvector's text form is a JSON
-- array) only when asked for.
CREATE FUNCTION cs_message_doc_v1(m messages, with_embedding boolean)
RETURNS json
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN with_embedding THEN
        json_build_object('context_id', m.context_id, 'version', m.version, 'role', m.role,
                          'content', m.content, 'token_count', m.token_count,
                          'metadata', m.metadata, 'created_at', cs_time_v1(m.created_at),
                          'embedding', m.embedding::text::json)
    ELSE
        json_build_object('context_id', m.context_id, 'version', m.version, 'role', m.role,
                          'content', m.content, 'token_count', m.token_count,
                          'metadata', m.metadata, 'created_at', cs_time_v1(m.created_at))
    END
$$;

-- RFC 7396 JSON merge patch, applied in the database so that concurrent patches
-- of one context's metadata serialize on its row and never lose a key.
CREATE FUNCTION cs_merge_patch_v1(target jsonb, patch jsonb)
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
            result := jsonb_set(result, ARRAY[key], cs_merge_patch_v1(result -> key, value));
        END IF;
    END LOOP;
    RETURN result;
END
$$;

-- A context's view is the list of segments on its row (ancestor_ids /
-- ancestor_ends) followed by its own messages; every function below takes that
-- list and probes each segment through an index, so its cost depends on the depth
-- of the lineage and the size of the answer, never on the length of the
-- conversation.

-- The segments of a view up to version upto: which context holds versions lo..hi.
CREATE FUNCTION cs_segments_v1(ids uuid[], ends bigint[], self uuid, upto bigint)
RETURNS TABLE (context_id uuid, lo bigint, hi bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT s.cid, coalesce(ends[s.ord - 1], 0) + 1, least(s.end_v, upto)
    FROM unnest(ids || self, ends || upto) WITH ORDINALITY AS s (cid, end_v, ord)
    WHERE coalesce(ends[s.ord - 1], 0) + 1 <= least(s.end_v, upto)
$$;

-- The message at one version of a view (no row when the version is not in it).
CREATE FUNCTION cs_message_v1(ids uuid[], ends bigint[], self uuid, upto bigint, v bigint)
RETURNS SETOF messages
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT m.*
    FROM cs_segments_v1(ids, ends, self, upto) AS s
    JOIN messages AS m ON m.context_id = s.context_id AND m.version = v
    WHERE v BETWEEN s.lo AND s.hi
$$;

-- Running token total of a view at version v (0 at version 0).
CREATE FUNCTION cs_cum_tokens_v1(ids uuid[], ends bigint[], self uuid, v bigint)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce((SELECT m.cum_tokens FROM cs_message_v1(ids, ends, self, v, v) AS m), 0)
$$;

-- Latest version <= upto created at or before ts (0 when none). created_at never
-- decreases as versions grow; each segment is searched below the creation time of
-- its last version, so later rows of an ancestor are never scanned.
CREATE FUNCTION cs_version_at_v1(ids uuid[], ends bigint[], self uuid, upto bigint, ts timestamptz)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(max(x.version), 0)
    FROM cs_segments_v1(ids, ends, self, upto) AS s
    CROSS JOIN LATERAL (
        SELECT m.version
        FROM messages AS m
        WHERE m.context_id = s.context_id
          AND m.version <= s.hi
          AND m.created_at <= least(ts, (SELECT e.created_at FROM messages AS e
                                         WHERE e.context_id = s.context_id AND e.version = s.hi))
        ORDER BY m.created_at DESC, m.version DESC
        LIMIT 1
    ) AS x
$$;

-- Messages from_v..to_v of a view, in any order (callers sort by version). Versions
-- of a view have no gaps, so a keyset page is such a range too: its cost is the
-- rows returned plus one index probe per segment it touches.
CREATE FUNCTION cs_range_v1(ids uuid[], ends bigint[], self uuid, from_v bigint, to_v bigint)
RETURNS SETOF messages
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT m.*
    FROM cs_segments_v1(ids, ends, self, to_v) AS s
    CROSS JOIN LATERAL (
        SELECT * FROM messages AS r
        WHERE r.context_id = s.context_id AND r.version BETWEEN greatest(s.lo, from_v) AND s.hi
        -- OFFSET 0 keeps this a per-segment index range scan: pulled up into the
        -- caller, the planner may hash-join a whole-table scan when one
        -- conversation holds most of the table (52 ms against 0.3 ms, measured).
        OFFSET 0
    ) AS m
$$;

-- A live context's lineage, head and token total, and the version a read sees:
-- as of a time, as of a version, or the head. One row, always: status is 'ok',
-- 'missing' (no such live context for this tenant) or 'past_head' (as_of_version
-- beyond the head); view_version is capped at the head.
CREATE FUNCTION cs_view_v1(p_context uuid, p_tenant text, p_as_of_version bigint, p_as_of timestamptz)
RETURNS TABLE (status text, id uuid, ids uuid[], ends bigint[], head_version bigint,
               total_tokens bigint, view_version bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN c.id IS NULL THEN 'missing'
                WHEN p_as_of_version > c.head_version THEN 'past_head'
                ELSE 'ok' END,
           c.id, c.ancestor_ids, c.ancestor_ends, c.head_version, c.total_tokens,
           CASE WHEN p_as_of IS NOT NULL
                THEN cs_version_at_v1(c.ancestor_ids, c.ancestor_ends, c.id, c.head_version, p_as_of)
                ELSE least(coalesce(p_as_of_version, c.head_version), c.head_version) END
    FROM (SELECT) AS one
    LEFT JOIN contexts AS c
      ON c.id = p_context AND c.tenant = p_tenant AND c.deleted_at IS NULL
$$;

-- The token window of a live context's view, as one row: status as in cs_view_v1,
-- and when 'ok' the window's messages as a JSON array in version order with its
-- token count, first and last versions, and whether older messages were left out.
-- The window is the longest run of most recent messages whose token counts fit
-- max_tokens: the run starts after the first version whose running total reaches
-- (total - budget), found by one index probe per lineage segment on cum_tokens.
-- With pin_system, message 1 is kept when it is a system message that fits, and
-- counts against the budget.
--
-- plpgsql rather than one SQL statement: its small statements keep cached generic
-- plans, where the single statement cost more to plan (about 3 ms) than to run.
CREATE FUNCTION cs_window_v1(p_context uuid, p_tenant text, p_as_of_version bigint,
                             p_as_of timestamptz, p_max_tokens bigint, p_pin_system boolean)
RETURNS TABLE (status text, view_version bigint, data json, token_count bigint,
               from_version bigint, to_version bigint, truncated boolean)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    ctx record;
    seg record;
    total bigint;
    pinned integer;
    reach bigint;
    from_v bigint := 1;
    hit bigint;
BEGIN
    SELECT * INTO ctx FROM cs_view_v1(p_context, p_tenant, p_as_of_version, p_as_of);
    status := ctx.status;
    view_version := ctx.view_version;
    IF ctx.status <> 'ok' THEN
        RETURN NEXT;
        RETURN;
    END IF;
    IF ctx.view_version = ctx.head_version THEN
        total := ctx.total_tokens;
    ELSE
        total := cs_cum_tokens_v1(ctx.ids, ctx.ends, ctx.id, ctx.view_version);
    END IF;
    IF p_pin_system AND ctx.view_version >= 1 THEN
        SELECT m.token_count INTO pinned
        FROM cs_message_v1(ctx.ids, ctx.ends, ctx.id, ctx.view_version, 1) AS m
        WHERE m.role = 'system' AND m.token_count <= p_max_tokens;
    END IF;
    reach := total - (p_max_tokens - coalesce(pinned, 0));
    IF reach > 0 THEN
        FOR seg IN SELECT * FROM cs_segments_v1(ctx.ids, ctx.ends, ctx.id, ctx.view_version) AS s
                   ORDER BY s.lo LOOP
            SELECT m.version INTO hit
            FROM messages AS m
            WHERE m.context_id = seg.context_id AND m.cum_tokens >= reach
            ORDER BY m.cum_tokens, m.version
            LIMIT 1;
            -- cum_tokens never decreases along the lineage: the first hit in a
            -- segment's context is its answer, unless it lies past the segment.
            IF hit IS NOT NULL AND hit <= seg.hi THEN
                from_v := hit + 1;
                EXIT;
            END IF;
        END LOOP;
    END IF;
    IF pinned IS NOT NULL THEN
        from_v := greatest(from_v, 2);
    END IF;

    SELECT coalesce(json_agg(cs_message_doc_v1(w, false) ORDER BY w.version), '[]'::json),
           coalesce(sum(w.token_count), 0), min(w.version), max(w.version), count(*)
    INTO data, token_count, from_version, to_version, hit
    FROM (
        SELECT * FROM cs_message_v1(ctx.ids, ctx.ends, ctx.id, ctx.view_version, 1) AS p
        WHERE pinned IS NOT NULL
        UNION ALL
        SELECT * FROM cs_range_v1(ctx.ids, ctx.ends, ctx.id, from_v, ctx.view_version)
    ) AS w;
    truncated := hit < ctx.view_version;
    RETURN NEXT;
END
$$;

-- ---------------------------------------------------------------- lineage functions, version 2 (0007)

-- As their _v1 namesakes, with the conversation's root as the first argument and
-- in every probe of contexts and messages: on Citus each function is distributed
-- by that argument (colocated with messages), so a call runs on the shard that
-- holds the whole lineage. cs_segments_v1 and cs_message_doc_v1 read no table
-- and serve both versions.

-- The message at one version of a view (no row when the version is not in it).
CREATE FUNCTION cs_message_v2(root uuid, ids uuid[], ends bigint[], self uuid, upto bigint, v bigint)
RETURNS SETOF messages
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT m.*
    FROM cs_segments_v1(ids, ends, self, upto) AS s
    JOIN messages AS m ON m.root_id = root AND m.context_id = s.context_id AND m.version = v
    WHERE v BETWEEN s.lo AND s.hi
$$;

-- Running token total of a view at version v (0 at version 0).
CREATE FUNCTION cs_cum_tokens_v2(root uuid, ids uuid[], ends bigint[], self uuid, v bigint)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce((SELECT m.cum_tokens FROM cs_message_v2(root, ids, ends, self, v, v) AS m), 0)
$$;

-- Latest version <= upto created at or before ts (0 when none); see cs_version_at_v1.
CREATE FUNCTION cs_version_at_v2(root uuid, ids uuid[], ends bigint[], self uuid, upto bigint, ts timestamptz)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(max(x.version), 0)
    FROM cs_segments_v1(ids, ends, self, upto) AS s
    CROSS JOIN LATERAL (
        SELECT m.version
        FROM messages AS m
        WHERE m.root_id = root
          AND m.context_id = s.context_id
          AND m.version <= s.hi
          AND m.created_at <= least(ts, (SELECT e.created_at FROM messages AS e
                                         WHERE e.root_id = root AND e.context_id = s.context_id
                                           AND e.version = s.hi))
        ORDER BY m.created_at DESC, m.version DESC
        LIMIT 1
    ) AS x
$$;

-- Messages from_v..to_v of a view, in any order (callers sort by version); see cs_range_v1.
CREATE FUNCTION cs_range_v2(root uuid, ids uuid[], ends bigint[], self uuid, from_v bigint, to_v bigint)
RETURNS SETOF messages
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT m.*
    FROM cs_segments_v1(ids, ends, self, to_v) AS s
    CROSS JOIN LATERAL (
        SELECT * FROM messages AS r
        WHERE r.root_id = root AND r.context_id = s.context_id
          AND r.version BETWEEN greatest(s.lo, from_v) AND s.hi
        -- OFFSET 0: a per-segment index range scan, as in cs_range_v1.
        OFFSET 0
    ) AS m
$$;

-- A live context's lineage, head and token total, and the version a read sees,
-- as cs_view_v1: one row, always, with status 'ok', 'missing' or 'past_head'. A
-- context that is not under p_root is 'missing'.
CREATE FUNCTION cs_view_v2(p_root uuid, p_context uuid, p_tenant text, p_as_of_version bigint,
                           p_as_of timestamptz)
RETURNS TABLE (status text, id uuid, ids uuid[], ends bigint[], head_version bigint,
               total_tokens bigint, view_version bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN c.id IS NULL THEN 'missing'
                WHEN p_as_of_version > c.head_version THEN 'past_head'
                ELSE 'ok' END,
           c.id, c.ancestor_ids, c.ancestor_ends, c.head_version, c.total_tokens,
           CASE WHEN p_as_of IS NOT NULL
                THEN cs_version_at_v2(p_root, c.ancestor_ids, c.ancestor_ends, c.id, c.head_version, p_as_of)
                ELSE least(coalesce(p_as_of_version, c.head_version), c.head_version) END
    FROM (SELECT) AS one
    LEFT JOIN contexts AS c
      ON c.root_id = p_root AND c.id = p_context AND c.tenant = p_tenant AND c.deleted_at IS NULL
$$;

-- The token window of a live context's view, as cs_window_v1.
CREATE FUNCTION cs_window_v2(p_root uuid, p_context uuid, p_tenant text, p_as_of_version bigint,
                             p_as_of timestamptz, p_max_tokens bigint, p_pin_system boolean)
RETURNS TABLE (status text, view_version bigint, data json, token_count bigint,
               from_version bigint, to_version bigint, truncated boolean)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    ctx record;
    seg record;
    total bigint;
    pinned integer;
    reach bigint;
    from_v bigint := 1;
    hit bigint;
BEGIN
    SELECT * INTO ctx FROM cs_view_v2(p_root, p_context, p_tenant, p_as_of_version, p_as_of);
    status := ctx.status;
    view_version := ctx.view_version;
    IF ctx.status <> 'ok' THEN
        RETURN NEXT;
        RETURN;
    END IF;
    IF ctx.view_version = ctx.head_version THEN
        total := ctx.total_tokens;
    ELSE
        total := cs_cum_tokens_v2(p_root, ctx.ids, ctx.ends, ctx.id, ctx.view_version);
    END IF;
    IF p_pin_system AND ctx.view_version >= 1 THEN
        SELECT m.token_count INTO pinned
        FROM cs_message_v2(p_root, ctx.ids, ctx.ends, ctx.id, ctx.view_version, 1) AS m
        WHERE m.role = 'system' AND m.token_count <= p_max_tokens;
    END IF;
    reach := total - (p_max_tokens - coalesce(pinned, 0));
    IF reach > 0 THEN
        FOR seg IN SELECT * FROM cs_segments_v1(ctx.ids, ctx.ends, ctx.id, ctx.view_version) AS s
                   ORDER BY s.lo LOOP
            SELECT m.version INTO hit
            FROM messages AS m
            WHERE m.root_id = p_root AND m.context_id = seg.context_id AND m.cum_tokens >= reach
            ORDER BY m.cum_tokens, m.version
            LIMIT 1;
            -- cum_tokens never decreases along the lineage: the first hit in a
            -- segment's context is its answer, unless it lies past the segment.
            IF hit IS NOT NULL AND hit <= seg.hi THEN
                from_v := hit + 1;
                EXIT;
            END IF;
        END LOOP;
    END IF;
    IF pinned IS NOT NULL THEN
        from_v := greatest(from_v, 2);
    END IF;

    SELECT coalesce(json_agg(cs_message_doc_v1(w, false) ORDER BY w.version), '[]'::json),
           coalesce(sum(w.token_count), 0), min(w.version), max(w.version), count(*)
    INTO data, token_count, from_version, to_version, hit
    FROM (
        SELECT * FROM cs_message_v2(p_root, ctx.ids, ctx.ends, ctx.id, ctx.view_version, 1) AS p
        WHERE pinned IS NOT NULL
        UNION ALL
        SELECT * FROM cs_range_v2(p_root, ctx.ids, ctx.ends, ctx.id, from_v, ctx.view_version)
    ) AS w;
    truncated := hit < ctx.view_version;
    RETURN NEXT;
END
$$;

-- ---------------------------------------------------------------- the first release's functions

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

-- Lineage-aware reads. A context's view is the list of segments on its row
-- (ancestor_ids / ancestor_ends) followed by its own messages; every function here
-- takes that list and probes each segment through an index, so its cost depends
-- on the depth of the lineage and the size of the answer, never on the length of
-- the conversation.

-- The segments of a view up to version upto: which context holds versions lo..hi.
CREATE FUNCTION cs_segments(ids uuid[], ends bigint[], self uuid, upto bigint)
RETURNS TABLE (context_id uuid, lo bigint, hi bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT s.cid, coalesce(ends[s.ord - 1], 0) + 1, least(s.end_v, upto)
    FROM unnest(ids || self, ends || upto) WITH ORDINALITY AS s (cid, end_v, ord)
    WHERE coalesce(ends[s.ord - 1], 0) + 1 <= least(s.end_v, upto)
$$;

-- The message at one version of a view (no row when the version is not in it).
CREATE FUNCTION cs_message(ids uuid[], ends bigint[], self uuid, upto bigint, v bigint)
RETURNS SETOF messages
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT m.*
    FROM cs_segments(ids, ends, self, upto) AS s
    JOIN messages AS m ON m.context_id = s.context_id AND m.version = v
    WHERE v BETWEEN s.lo AND s.hi
$$;

-- Running token total of a view at version v (0 at version 0).
CREATE FUNCTION cs_cum_tokens(ids uuid[], ends bigint[], self uuid, v bigint)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce((SELECT m.cum_tokens FROM cs_message(ids, ends, self, v, v) AS m), 0)
$$;

-- Latest version <= upto created at or before ts (0 when none). created_at never
-- decreases as versions grow; each segment is searched below the creation time of
-- its last version, so later rows of an ancestor are never scanned.
CREATE FUNCTION cs_version_at(ids uuid[], ends bigint[], self uuid, upto bigint, ts timestamptz)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(max(x.version), 0)
    FROM cs_segments(ids, ends, self, upto) AS s
    CROSS JOIN LATERAL (
        SELECT m.version
        FROM messages AS m
        WHERE m.context_id = s.context_id
          AND m.version <= s.hi
          AND m.created_at <= least(ts, (SELECT e.created_at FROM messages AS e
                                         WHERE e.context_id = s.context_id AND e.version = s.hi))
        ORDER BY m.created_at DESC, m.version DESC
        LIMIT 1
    ) AS x
$$;

-- Messages from_v..to_v of a view, in any order (callers sort by version). Versions
-- of a view have no gaps, so a keyset page is such a range too: its cost is the
-- rows returned plus one index probe per segment it touches.
CREATE FUNCTION cs_range(ids uuid[], ends bigint[], self uuid, from_v bigint, to_v bigint)
RETURNS SETOF messages
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT m.*
    FROM cs_segments(ids, ends, self, to_v) AS s
    CROSS JOIN LATERAL (
        SELECT * FROM messages AS r
        WHERE r.context_id = s.context_id AND r.version BETWEEN greatest(s.lo, from_v) AND s.hi
        -- OFFSET 0 keeps this a per-segment index range scan: pulled up into the
        -- caller, the planner may hash-join a whole-table scan when one
        -- conversation holds most of the table (52 ms against 0.3 ms, measured).
        OFFSET 0
    ) AS m
$$;

-- The version a read sees: as of a time, as of a version, or the head. Callers
-- compare it with the head to reject a version past it.
CREATE FUNCTION cs_view_version(ids uuid[], ends bigint[], self uuid, head bigint,
                                as_of_version bigint, as_of timestamptz)
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN as_of IS NOT NULL THEN cs_version_at(ids, ends, self, head, as_of)
                ELSE coalesce(as_of_version, head) END
$$;

-- A live context's lineage, head and token total, with the version a read sees
-- (view_version, before capping at the head). No row when the context is missing,
-- deleted or another tenant's. Inlined by the planner into its callers.
CREATE FUNCTION cs_view(context_id uuid, tenant text, as_of_version bigint, as_of timestamptz)
RETURNS TABLE (id uuid, ids uuid[], ends bigint[], head_version bigint, total_tokens bigint,
               view_version bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT c.id, c.ancestor_ids, c.ancestor_ends, c.head_version, c.total_tokens,
           cs_view_version(c.ancestor_ids, c.ancestor_ends, c.id, c.head_version, as_of_version, as_of)
    FROM contexts AS c
    WHERE c.id = cs_view.context_id AND c.tenant = cs_view.tenant AND c.deleted_at IS NULL
$$;

-- The token window of a live context's view, as rows: one per message in version
-- order, or one row with null message columns when the window is empty; none when
-- the context is missing. The window is the longest run of most recent messages
-- whose token counts fit max_tokens: the run starts after the first version whose
-- running total reaches (total - budget), found by one index probe per lineage
-- segment on cum_tokens. With pin_system, message 1 is kept when it is a system
-- message that fits, and counts against the budget.
--
-- plpgsql rather than one SQL statement: its small statements keep cached generic
-- plans, where the single statement cost more to plan (about 3 ms) than to run.
CREATE FUNCTION cs_window(p_context uuid, p_tenant text, p_as_of_version bigint,
                          p_as_of timestamptz, p_max_tokens bigint, p_pin_system boolean)
RETURNS TABLE (head_version bigint, view_version bigint, context_id uuid, version bigint,
               role text, content text, token_count integer, metadata jsonb,
               created_at timestamptz)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    ctx record;
    seg record;
    v bigint;
    wanted bigint;
    total bigint;
    pinned integer;
    reach bigint;
    first_free bigint := 1;
    from_v bigint := 1;
    hit bigint;
    emitted boolean := false;
BEGIN
    SELECT c.id, c.ancestor_ids, c.ancestor_ends, c.head_version, c.total_tokens INTO ctx
    FROM contexts AS c
    WHERE c.id = p_context AND c.tenant = p_tenant AND c.deleted_at IS NULL;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    wanted := cs_view_version(ctx.ancestor_ids, ctx.ancestor_ends, ctx.id, ctx.head_version,
                              p_as_of_version, p_as_of);
    v := least(wanted, ctx.head_version);
    IF v = ctx.head_version THEN
        total := ctx.total_tokens;
    ELSE
        total := cs_cum_tokens(ctx.ancestor_ids, ctx.ancestor_ends, ctx.id, v);
    END IF;
    IF p_pin_system AND v >= 1 THEN
        SELECT m.token_count INTO pinned
        FROM cs_message(ctx.ancestor_ids, ctx.ancestor_ends, ctx.id, v, 1) AS m
        WHERE m.role = 'system' AND m.token_count <= p_max_tokens;
        IF pinned IS NOT NULL THEN
            first_free := 2;
        END IF;
    END IF;
    reach := total - (p_max_tokens - coalesce(pinned, 0));
    IF reach > 0 THEN
        FOR seg IN SELECT * FROM cs_segments(ctx.ancestor_ids, ctx.ancestor_ends, ctx.id, v) AS s
                   ORDER BY s.lo LOOP
            SELECT m.version INTO hit
            FROM messages AS m
            WHERE m.context_id = seg.context_id AND m.cum_tokens >= reach
            ORDER BY m.cum_tokens, m.version
            LIMIT 1;
            -- cum_tokens never decreases along the lineage: the first hit in a
            -- segment's context is its answer, unless it lies past the segment.
            IF hit IS NOT NULL AND hit <= seg.hi THEN
                from_v := hit + 1;
                EXIT;
            END IF;
        END LOOP;
    END IF;
    from_v := greatest(from_v, first_free);

    IF pinned IS NOT NULL THEN
        RETURN QUERY
            SELECT ctx.head_version, wanted, m.context_id, m.version, m.role, m.content,
                   m.token_count, m.metadata, m.created_at
            FROM cs_message(ctx.ancestor_ids, ctx.ancestor_ends, ctx.id, v, 1) AS m;
        emitted := true;
    END IF;
    FOR seg IN SELECT * FROM cs_segments(ctx.ancestor_ids, ctx.ancestor_ends, ctx.id, v) AS s
               ORDER BY s.lo LOOP
        CONTINUE WHEN seg.hi < from_v;
        RETURN QUERY
            SELECT ctx.head_version, wanted, m.context_id, m.version, m.role, m.content,
                   m.token_count, m.metadata, m.created_at
            FROM messages AS m
            WHERE m.context_id = seg.context_id AND m.version BETWEEN greatest(seg.lo, from_v) AND seg.hi
            ORDER BY m.version;
        emitted := emitted OR FOUND;
    END LOOP;
    IF NOT emitted THEN
        head_version := ctx.head_version;
        view_version := wanted;
        context_id := NULL; version := NULL; role := NULL; content := NULL;
        token_count := NULL; metadata := NULL; created_at := NULL;
        RETURN NEXT;
    END IF;
END
$$;
