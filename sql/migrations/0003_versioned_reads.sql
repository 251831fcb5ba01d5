-- Lineage functions, version 1 of their suffixed names, and the JSON documents the
-- API returns, built by PostgreSQL.
--
-- The unsuffixed functions of 0002 stay: workers of the previous release call them
-- while a deploy rolls. From here on a changed signature gets a new suffix (_v2)
-- beside the old one, and a later migration drops what no release calls any more.
-- Never edit this file once released.

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
