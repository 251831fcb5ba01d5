-- The lineage root as a shard key: a conversation and all its forks can live on
-- one shard of a Citus cluster, distributed by root_id (docs/SHARDING.md has the
-- distribution DDL and the reasons). Citus accepts a distributed table only when
-- its primary key and foreign keys include the distribution column, and routes a
-- statement to one shard when its WHERE pins that column; so messages carry the
-- root of the context that holds them, both tables are keyed with it, and the
-- _v2 functions below put it in every probe. Never edit this file once released.
--
-- Rolling deploy: workers of the previous release keep running against this
-- schema. They call the _v1 functions (kept), look contexts up by id alone (the
-- keys below lead with the id, so that stays one index probe), insert messages
-- without a root and contexts without a context_roots row (two triggers fill them
-- in).

-- ---------------------------------------------------------------- messages.root_id

-- Adding the column is a catalog change; the backfill rewrites every row once.
ALTER TABLE messages ADD COLUMN root_id uuid;
UPDATE messages AS m SET root_id = c.root_id FROM contexts AS c WHERE c.id = m.context_id;
ALTER TABLE messages ALTER COLUMN root_id SET NOT NULL;

-- ---------------------------------------------------------------- keys

-- The keys lead with the id, not the root: a lookup by id alone (the previous
-- release's statements) stays a prefix probe of the
-- primary key, and a probe that pins both is as cheap. Citus takes the
-- distribution column anywhere in the key. No index is added for it: the extra
-- 16 bytes are in the heap and in the primary key alone; the other indexes of
-- messages are never unique and every probe through them already names the
-- context, whose rows all share one root.
ALTER TABLE messages DROP CONSTRAINT messages_context_id_fkey;
ALTER TABLE contexts DROP CONSTRAINT contexts_parent_id_fkey;
ALTER TABLE contexts DROP CONSTRAINT contexts_pkey;
ALTER TABLE contexts ADD CONSTRAINT contexts_pkey PRIMARY KEY (id, root_id);
-- A fork shares its parent's root, so the parent is found on the fork's shard.
ALTER TABLE contexts ADD CONSTRAINT contexts_parent_fkey
    FOREIGN KEY (parent_id, root_id) REFERENCES contexts (id, root_id);
ALTER TABLE messages DROP CONSTRAINT messages_pkey;
ALTER TABLE messages ADD CONSTRAINT messages_pkey PRIMARY KEY (context_id, root_id, version);
ALTER TABLE messages ADD CONSTRAINT messages_context_fkey
    FOREIGN KEY (context_id, root_id) REFERENCES contexts (id, root_id);

-- ---------------------------------------------------------------- context_roots

-- Which root a context belongs to, for a request that names only the context.
-- Never changes once written, so workers cache it. A table of its own, keyed by
-- the context id: on Citus it is distributed by id, and the lookup routes to one
-- shard (contexts, distributed by root, cannot answer "which root" without
-- asking every shard). Its primary key also keeps context ids unique across
-- roots, which the (id, root_id) key of contexts alone no longer does.
CREATE TABLE context_roots (
    id       uuid NOT NULL,
    root_id  uuid NOT NULL,
    CONSTRAINT context_roots_pkey PRIMARY KEY (id)
);
INSERT INTO context_roots (id, root_id) SELECT id, root_id FROM contexts;

-- ---------------------------------------------------------------- the previous release's inserts

-- Fills messages.root_id from the context when an insert left it out: only the
-- previous release's statements do, while a deploy rolls (the WHEN clause keeps
-- the trigger from being called for any other row). A later migration drops it,
-- before the tables are distributed (Citus runs no such trigger across shards).
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

-- ---------------------------------------------------------------- lineage functions, version 2

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
