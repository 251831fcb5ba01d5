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
