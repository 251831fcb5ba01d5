-- name: get_search_view^
-- The view a per-context search covers, under its root: status as in
-- cs_view_v2, the viewed version, and the view's segments as three parallel arrays (holder, first
-- version, last version), oldest first. A holder appears once in a lineage, and
-- holds nothing below its segment's first version.
SELECT v.status, v.view_version, s.ids, s.los, s.his
FROM cs_view_v2(%(root_id)s, %(context_id)s, %(tenant)s, %(as_of_version)s::bigint, %(as_of)s::timestamptz) AS v
LEFT JOIN LATERAL (
    SELECT array_agg(g.context_id ORDER BY g.lo) AS ids, array_agg(g.lo ORDER BY g.lo) AS los,
           array_agg(g.hi ORDER BY g.lo) AS his
    FROM cs_segments_v1(v.ids, v.ends, v.id, v.view_version) AS g
) AS s ON v.status = 'ok';

-- name: get_search_reach^
-- What a tenant-wide search covers: every message in the view of a live context
-- of the tenant (whose metadata contains `metadata`, when given), once, under the
-- context that holds it. A holder is reachable up to the highest version any such
-- view reads from it: all of it when it is itself a live match, up to the fork
-- point otherwise (a deleted context, or one the filter left out, whose messages a
-- matching fork inherited). ids/los/his: every holder with its reachable range;
-- cut_ids/cut_his: the holders that are not themselves live matches (their bound
-- matters); roots: each holder's root (a fork's ancestors share its root); size:
-- the number of messages covered. Every shard on Citus: a tenant's contexts are
-- spread over all of them.
WITH live AS (
    SELECT c.id, c.root_id, c.head_version, c.ancestor_ids, c.ancestor_ends
    FROM contexts AS c
    WHERE c.tenant = %(tenant)s AND c.deleted_at IS NULL
      AND (%(metadata)s::jsonb IS NULL OR c.metadata @> %(metadata)s::jsonb)
), reach AS (
    SELECT x.root_id, x.holder, max(x.hi) AS hi, bool_or(x.own) AS own
    FROM (
        SELECT l.root_id, l.id AS holder, l.head_version AS hi, true AS own FROM live AS l
        UNION ALL
        SELECT l.root_id, a.holder, a.hi, false
        FROM live AS l, unnest(l.ancestor_ids, l.ancestor_ends) AS a (holder, hi)
    ) AS x
    GROUP BY x.root_id, x.holder
), held AS (
    SELECT r.root_id, r.holder, coalesce(h.fork_version, 0) + 1 AS lo, r.hi, r.own
    FROM reach AS r
    JOIN contexts AS h ON h.root_id = r.root_id AND h.id = r.holder
    WHERE r.hi > coalesce(h.fork_version, 0)
)
SELECT coalesce(array_agg(root_id), '{}') AS roots,
       coalesce(array_agg(holder), '{}') AS ids, coalesce(array_agg(lo), '{}') AS los,
       coalesce(array_agg(hi), '{}') AS his,
       coalesce(array_agg(holder) FILTER (WHERE NOT own), '{}') AS cut_ids,
       coalesce(array_agg(hi) FILTER (WHERE NOT own), '{}') AS cut_his,
       coalesce(sum(hi - lo + 1), 0) AS size
FROM held;

-- name: search_semantic_exact
-- The k messages of the segments (ids, los, his) of a view under one root
-- (root_id) nearest to an embedding by cosine distance, by an exact scan of each
-- segment's primary key range: recall 1.0, cost proportional to the segments'
-- length. Messages of another dimension are skipped. Rows: the message document,
-- its holder and version, and the score (1 - cosine distance), best first.
WITH hits AS MATERIALIZED (
    SELECT m.context_id, m.version, m.distance
    FROM unnest(%(ids)s::uuid[], %(los)s::bigint[], %(his)s::bigint[]) AS s (holder, lo, hi)
    CROSS JOIN LATERAL (
        SELECT r.context_id, r.version, r.embedding <=> %(embedding)s::vector AS distance
        FROM messages AS r
        WHERE r.root_id = %(root_id)s AND r.context_id = s.holder AND r.version BETWEEN s.lo AND s.hi
          AND vector_dims(r.embedding) = {dim}
          AND (%(roles)s::text[] IS NULL OR r.role = ANY (%(roles)s::text[]))
        OFFSET 0
    ) AS m
    WHERE m.distance <> 'NaN'  -- a zero or overflowing stored vector: no direction, no score
    ORDER BY m.distance, m.context_id, m.version
    LIMIT %(k)s
)
SELECT cs_message_doc_v1(m, false) AS doc, h.context_id, h.version, 1 - h.distance AS score
FROM hits AS h
JOIN messages AS m ON m.root_id = %(root_id)s AND m.context_id = h.context_id AND m.version = h.version
ORDER BY h.distance, h.context_id, h.version;

-- name: search_semantic_exact_tenant
-- The same ranking as search_semantic_exact over the segments (roots, ids, los,
-- his) of a tenant-wide search (get_search_reach): many roots, each segment
-- probed under its own. A statement of its own, so that the per-context one pins
-- a single root (one shard on Citus) and this one is the cross-shard exception.
WITH hits AS MATERIALIZED (
    SELECT m.root_id, m.context_id, m.version, m.distance
    FROM unnest(%(roots)s::uuid[], %(ids)s::uuid[], %(los)s::bigint[], %(his)s::bigint[]) AS s (root, holder, lo, hi)
    CROSS JOIN LATERAL (
        SELECT r.root_id, r.context_id, r.version, r.embedding <=> %(embedding)s::vector AS distance
        FROM messages AS r
        WHERE r.root_id = s.root AND r.context_id = s.holder AND r.version BETWEEN s.lo AND s.hi
          AND vector_dims(r.embedding) = {dim}
          AND (%(roles)s::text[] IS NULL OR r.role = ANY (%(roles)s::text[]))
        OFFSET 0
    ) AS m
    WHERE m.distance <> 'NaN'  -- a zero or overflowing stored vector: no direction, no score
    ORDER BY m.distance, m.context_id, m.version
    LIMIT %(k)s
)
SELECT cs_message_doc_v1(m, false) AS doc, h.context_id, h.version, 1 - h.distance AS score
FROM hits AS h
JOIN messages AS m ON m.root_id = h.root_id AND m.context_id = h.context_id AND m.version = h.version
ORDER BY h.distance, h.context_id, h.version;

-- name: search_semantic_view
-- The k messages of a view under one root (root_id) nearest to an embedding,
-- through the HNSW index with an iterative scan (the caller sets hnsw.* for its
-- transaction): the index walk keeps going until k rows pass the view filter or
-- hnsw.max_scan_tuples is reached. relaxed_order may yield rows slightly out of order, so the walk
-- fetches `fetch` rows (more than k) and the best k of them are kept, sorted by
-- their exact distance. Same rows as search_semantic_exact.
WITH hits AS MATERIALIZED (
    SELECT m.context_id, m.version, m.embedding::vector({dim}) <=> %(embedding)s::vector({dim}) AS distance
    FROM messages AS m
    WHERE vector_dims(m.embedding) = {dim}
      AND m.root_id = %(root_id)s
      AND m.context_id = ANY (%(ids)s::uuid[])
      AND m.version <= (%(his)s::bigint[])[array_position(%(ids)s::uuid[], m.context_id)]
      AND (%(roles)s::text[] IS NULL OR m.role = ANY (%(roles)s::text[]))
    ORDER BY m.embedding::vector({dim}) <=> %(embedding)s::vector({dim})
    LIMIT %(fetch)s
)
SELECT cs_message_doc_v1(m, false) AS doc, h.context_id, h.version, 1 - h.distance AS score
FROM hits AS h
JOIN messages AS m ON m.root_id = %(root_id)s AND m.context_id = h.context_id AND m.version = h.version
WHERE h.distance <> 'NaN'  -- a stored vector without direction (see search_semantic_exact)
ORDER BY h.distance, h.context_id, h.version
LIMIT %(k)s;

-- name: search_semantic_tenant
-- The k messages a tenant-wide search covers (get_search_reach) nearest to an
-- embedding, through the HNSW index with an iterative scan: a row passes when
-- its holder is a live match, or when it lies within the reach of a holder that
-- is not (cut_ids / cut_his). Same rows as search_semantic_exact.
WITH hits AS MATERIALIZED (
    SELECT m.root_id, m.context_id, m.version, m.embedding::vector({dim}) <=> %(embedding)s::vector({dim}) AS distance
    FROM messages AS m
    WHERE vector_dims(m.embedding) = {dim}
      AND (EXISTS (SELECT 1 FROM contexts AS c
                   WHERE c.root_id = m.root_id AND c.id = m.context_id
                     AND c.tenant = %(tenant)s AND c.deleted_at IS NULL
                     AND (%(metadata)s::jsonb IS NULL OR c.metadata @> %(metadata)s::jsonb))
           OR m.version <= (%(cut_his)s::bigint[])[array_position(%(cut_ids)s::uuid[], m.context_id)])
      AND (%(roles)s::text[] IS NULL OR m.role = ANY (%(roles)s::text[]))
    ORDER BY m.embedding::vector({dim}) <=> %(embedding)s::vector({dim})
    LIMIT %(fetch)s
)
SELECT cs_message_doc_v1(m, false) AS doc, h.context_id, h.version, 1 - h.distance AS score
FROM hits AS h
JOIN messages AS m ON m.root_id = h.root_id AND m.context_id = h.context_id AND m.version = h.version
WHERE h.distance <> 'NaN'  -- a stored vector without direction (see search_semantic_exact)
ORDER BY h.distance, h.context_id, h.version
LIMIT %(k)s;

-- name: search_text_view
-- The k messages of the segments (ids, los, his) of a view under one root
-- (root_id) that match a websearch_to_tsquery query, best first: score is
-- ts_rank with normalization 32 (rank / (rank + 1), so 0 < score < 1), ties
-- newest first. Only the `candidates` most recent matches are ranked: a word in
-- every message of a long view costs a bounded walk down the primary key, a rare
-- one a bitmap of the GIN index and the key range (the planner picks from the
-- word's frequency: the query is written out, not bound once in a CTE, so that
-- the planner sees its words).
WITH matches AS MATERIALIZED (
    SELECT m.context_id, m.version, m.content_tsv
    FROM unnest(%(ids)s::uuid[], %(los)s::bigint[], %(his)s::bigint[]) AS s (holder, lo, hi)
    CROSS JOIN LATERAL (
        SELECT r.context_id, r.version, r.content_tsv
        FROM messages AS r
        WHERE r.root_id = %(root_id)s AND r.context_id = s.holder AND r.version BETWEEN s.lo AND s.hi
          AND r.content_tsv @@ websearch_to_tsquery(%(config)s::regconfig, %(query)s)
          AND (%(roles)s::text[] IS NULL OR r.role = ANY (%(roles)s::text[]))
        ORDER BY r.version DESC
        LIMIT %(candidates)s
    ) AS m
    ORDER BY m.version DESC
    LIMIT %(candidates)s
), hits AS MATERIALIZED (
    SELECT x.context_id, x.version, ts_rank(x.content_tsv, websearch_to_tsquery(%(config)s::regconfig, %(query)s), 32) AS score
    FROM matches AS x
    ORDER BY 3 DESC, x.version DESC, x.context_id
    LIMIT %(k)s
)
SELECT cs_message_doc_v1(m, false) AS doc, h.context_id, h.version, h.score
FROM hits AS h
JOIN messages AS m ON m.root_id = %(root_id)s AND m.context_id = h.context_id AND m.version = h.version
ORDER BY h.score DESC, h.version DESC, h.context_id;

-- name: search_text_tenant
-- The k messages a tenant-wide search covers (get_search_reach) that match a
-- websearch_to_tsquery query, best first, scored as in search_text_view (the
-- `candidates` most recent matches are ranked). Matches come from the GIN index;
-- each is kept when its holder is a live match or it lies within the reach of a
-- holder that is not.
WITH matches AS MATERIALIZED (
    SELECT m.root_id, m.context_id, m.version, m.content_tsv
    FROM messages AS m
    WHERE m.content_tsv @@ websearch_to_tsquery(%(config)s::regconfig, %(query)s)
      AND (EXISTS (SELECT 1 FROM contexts AS c
                   WHERE c.root_id = m.root_id AND c.id = m.context_id
                     AND c.tenant = %(tenant)s AND c.deleted_at IS NULL
                     AND (%(metadata)s::jsonb IS NULL OR c.metadata @> %(metadata)s::jsonb))
           OR m.version <= (%(cut_his)s::bigint[])[array_position(%(cut_ids)s::uuid[], m.context_id)])
      AND (%(roles)s::text[] IS NULL OR m.role = ANY (%(roles)s::text[]))
    ORDER BY m.created_at DESC, m.version DESC
    LIMIT %(candidates)s
), hits AS MATERIALIZED (
    SELECT x.root_id, x.context_id, x.version, ts_rank(x.content_tsv, websearch_to_tsquery(%(config)s::regconfig, %(query)s), 32) AS score
    FROM matches AS x
    ORDER BY 3 DESC, x.version DESC, x.context_id
    LIMIT %(k)s
)
SELECT cs_message_doc_v1(m, false) AS doc, h.context_id, h.version, h.score
FROM hits AS h
JOIN messages AS m ON m.root_id = h.root_id AND m.context_id = h.context_id AND m.version = h.version
ORDER BY h.score DESC, h.version DESC, h.context_id;

-- name: set_search_knobs^
-- Settings for the current search transaction only (SET LOCAL semantics: nothing
-- outlives it, so a pooled connection, or PgBouncer, carries no state). Searches
-- are planned for their values (the pool's sessions force generic plans, which
-- cannot know how common a word is or how long a view is), and pgvector's index
-- scans walk on until k rows pass the filter.
SELECT set_config('plan_cache_mode', 'force_custom_plan', true) AS plan_cache_mode,
       set_config('hnsw.iterative_scan', 'relaxed_order', true) AS iterative_scan,
       set_config('hnsw.ef_search', %(ef_search)s, true) AS ef_search,
       set_config('hnsw.max_scan_tuples', %(max_scan_tuples)s, true) AS max_scan_tuples;

-- name: get_text_search_config$
-- The text search configuration content_tsv is computed with (parsed by the
-- caller from the column's generation expression), or null without the column.
SELECT pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute AS a
JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = 'messages'::regclass AND a.attname = 'content_tsv' AND NOT a.attisdropped;

