-- name: insert_messages^
-- Appends a batch to a live context in one statement and says how it went:
-- status 'ok' with the new head, the token total and the messages written (a JSON
-- array in version order), or 'missing' (no such live context) or 'stale' (its
-- head, given as head_version, is not in if_match) with no message written.
-- The UPDATE takes the context's row lock and sees the row as the last committed
-- append left it, so If-Match is checked against the current head and a 'stale'
-- head is the current one. It is one UPDATE, not a locking read then an update: two
-- row locks taken in one statement deadlock between concurrent appends. A stale
-- append therefore still rewrites the row with its own values (a no-op version of
-- it), which is the price of reporting the true head in the same round trip.
-- Versions are gapless (head+1..), cum_tokens runs on from the head's total, and
-- every message of the batch is stamped with one time taken after the lock and
-- never before the context's last change, so created_at never decreases. Every
-- message carries the context's root (root_id), the shard key.
WITH head AS (
    UPDATE contexts AS c
    SET head_version = c.head_version + CASE WHEN c.head_version = ANY (w.versions) OR w.versions IS NULL
                                             THEN %(count)s ELSE 0 END,
        total_tokens = c.total_tokens + CASE WHEN c.head_version = ANY (w.versions) OR w.versions IS NULL
                                             THEN %(batch_tokens)s ELSE 0 END,
        updated_at = CASE WHEN c.head_version = ANY (w.versions) OR w.versions IS NULL
                          THEN greatest(clock_timestamp(), c.updated_at) ELSE c.updated_at END
    FROM (SELECT %(if_match)s::bigint[] AS versions) AS w
    WHERE c.root_id = %(root_id)s AND c.id = %(context_id)s AND c.tenant = %(tenant)s AND c.deleted_at IS NULL
    RETURNING c.id, new.head_version, new.total_tokens, new.updated_at,
              new.head_version <> old.head_version AS ok
), inserted AS (
    INSERT INTO messages (root_id, context_id, version, role, content, token_count, cum_tokens,
                          embedding, metadata, created_at)
    SELECT %(root_id)s::uuid, head.id, head.head_version - %(count)s + b.ord, b.role, b.content, b.token_count,
           head.total_tokens - %(batch_tokens)s + sum(b.token_count) OVER (ORDER BY b.ord),
           b.embedding::vector, b.metadata::jsonb, head.updated_at
    FROM head,
         unnest(%(roles)s::text[], %(contents)s::text[], %(token_counts)s::integer[],
                %(embeddings)s::text[], %(metadata)s::text[])
             WITH ORDINALITY AS b (role, content, token_count, embedding, metadata, ord)
    WHERE head.ok
    RETURNING *
)
SELECT CASE WHEN h.id IS NULL THEN 'missing' WHEN h.ok THEN 'ok' ELSE 'stale' END AS status,
       h.head_version, h.total_tokens,
       (SELECT json_agg(cs_message_doc_v1(i, false) ORDER BY i.version) FROM inserted AS i) AS data
FROM (SELECT) AS one
LEFT JOIN head AS h ON true;

-- name: get_message^
-- One message of a live context's view by version, as the API's JSON document.
-- One row, always: status 'ok', 'missing' (no such live context) or 'no_version'
-- (the version is past the head; head_version says where the head is).
SELECT CASE WHEN v.status <> 'ok' THEN v.status
            WHEN m.version IS NULL THEN 'no_version' ELSE 'ok' END AS status,
       v.head_version, cs_message_doc_v1(m, %(include_embedding)s::boolean) AS doc
FROM cs_view_v2(%(root_id)s, %(context_id)s, %(tenant)s, NULL, NULL) AS v
LEFT JOIN LATERAL cs_message_v2(%(root_id)s, v.ids, v.ends, v.id, v.head_version, %(version)s::bigint) AS m ON true;

-- name: list_messages_asc^
-- A keyset page of a live context's view in ascending version order, as of a
-- version or a time: the messages after version `after` and before version
-- `before`, at most `limit` of them, as a JSON array. Versions have no gaps, so the
-- page is the range after+1 .. min(view, before-1, after+limit), and whether more
-- follow is arithmetic on the same numbers. One row, always, with status as in
-- cs_view_v2; last_version is the page's last version (null when it is empty).
SELECT v.status, v.view_version,
       coalesce((SELECT json_agg(cs_message_doc_v1(m, %(include_embedding)s::boolean) ORDER BY m.version)
                 FROM cs_range_v2(%(root_id)s, v.ids, v.ends, v.id, p.first, p.last) AS m), '[]'::json) AS data,
       p.last < p.bound AS has_more,
       CASE WHEN p.last >= p.first THEN p.last END AS last_version
FROM cs_view_v2(%(root_id)s, %(context_id)s, %(tenant)s, %(as_of_version)s::bigint, %(as_of)s::timestamptz) AS v
CROSS JOIN LATERAL (
    SELECT %(after)s::bigint + 1 AS first,
           least(v.view_version, %(before)s::bigint - 1) AS bound,
           least(v.view_version, %(before)s::bigint - 1, %(after)s::bigint + %(limit)s::integer) AS last
) AS p;

-- name: list_messages_desc^
-- The same page as list_messages_asc in descending version order: at most `limit`
-- messages before version `before` (and after version `after`), newest first;
-- last_version is the oldest version returned.
SELECT v.status, v.view_version,
       coalesce((SELECT json_agg(cs_message_doc_v1(m, %(include_embedding)s::boolean) ORDER BY m.version DESC)
                 FROM cs_range_v2(%(root_id)s, v.ids, v.ends, v.id, p.first, p.top) AS m), '[]'::json) AS data,
       p.first > p.bound AS has_more,
       CASE WHEN p.top >= p.first THEN p.first END AS last_version
FROM cs_view_v2(%(root_id)s, %(context_id)s, %(tenant)s, %(as_of_version)s::bigint, %(as_of)s::timestamptz) AS v
CROSS JOIN LATERAL (
    SELECT %(after)s::bigint + 1 AS bound,
           least(v.view_version, %(before)s::bigint - 1) AS top,
           greatest(%(after)s::bigint + 1,
                    least(v.view_version, %(before)s::bigint - 1) - %(limit)s::integer + 1) AS first
) AS p;

-- name: get_window^
-- The token window of a live context's view (cs_window_v2): one row with status,
-- the viewed version, the messages as a JSON array and the window's summary.
SELECT status, view_version, data, token_count, from_version, to_version, truncated
FROM cs_window_v2(%(root_id)s, %(context_id)s, %(tenant)s, %(as_of_version)s::bigint, %(as_of)s::timestamptz,
                  %(max_tokens)s::bigint, %(pin_system)s::boolean);
