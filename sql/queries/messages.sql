-- name: insert_messages^
-- Appends a batch to a live context in one statement: the UPDATE takes the
-- context's row lock and moves its head, then the batch is inserted with gapless
-- versions head+1.. and running cum_tokens. Every message of the batch is stamped
-- with one time taken after the lock and never before the context's last change,
-- so created_at never decreases as versions grow. if_match (a list of versions,
-- or null for any) makes it conditional. No row when the context is missing,
-- deleted, or its head is not in if_match: nothing is written then.
WITH head AS (
    UPDATE contexts
    SET head_version = head_version + %(count)s,
        total_tokens = total_tokens + %(batch_tokens)s,
        updated_at = greatest(clock_timestamp(), updated_at)
    WHERE id = %(context_id)s AND tenant = %(tenant)s AND deleted_at IS NULL
      AND (%(if_match)s::bigint[] IS NULL OR head_version = ANY (%(if_match)s::bigint[]))
    RETURNING id, head_version, total_tokens, updated_at
), inserted AS (
    INSERT INTO messages (context_id, version, role, content, token_count, cum_tokens,
                          embedding, metadata, created_at)
    SELECT head.id, head.head_version - %(count)s + b.ord, b.role, b.content, b.token_count,
           head.total_tokens - %(batch_tokens)s + sum(b.token_count) OVER (ORDER BY b.ord),
           b.embedding::vector, b.metadata::jsonb, head.updated_at
    FROM head,
         unnest(%(roles)s::text[], %(contents)s::text[], %(token_counts)s::integer[],
                %(embeddings)s::text[], %(metadata)s::text[])
             WITH ORDINALITY AS b (role, content, token_count, embedding, metadata, ord)
)
SELECT head_version, total_tokens, updated_at AS created_at FROM head;

-- name: get_message*
-- One message of a live context's view by version: one row per context found,
-- with message columns null when the version is not in the view.
SELECT c.head_version, m.context_id, m.version, m.role, m.content, m.token_count,
       m.metadata, m.created_at,
       CASE WHEN %(include_embedding)s::boolean THEN m.embedding::text END AS embedding
FROM contexts AS c
LEFT JOIN LATERAL cs_message(c.ancestor_ids, c.ancestor_ends, c.id, c.head_version,
                             %(version)s::bigint) AS m ON true
WHERE c.id = %(context_id)s AND c.tenant = %(tenant)s AND c.deleted_at IS NULL;

-- name: list_messages_asc*
-- A keyset page of a live context's view in ascending version order: up to limit
-- messages after version after, as of a version or time. Versions have no gaps,
-- so the page is the range after+1 .. after+limit, capped at the view's last.
-- One row per message, or one row with null message columns when the page is
-- empty; no row when the context is missing. view_version is the requested version, before capping at head.
SELECT ctx.head_version, ctx.view_version, m.context_id, m.version, m.role, m.content,
       m.token_count, m.metadata, m.created_at,
       CASE WHEN %(include_embedding)s::boolean THEN m.embedding::text END AS embedding
FROM cs_view(%(context_id)s, %(tenant)s, %(as_of_version)s::bigint, %(as_of)s::timestamptz) AS ctx
LEFT JOIN LATERAL cs_range(ctx.ids, ctx.ends, ctx.id, %(after)s::bigint + 1,
                           least(ctx.view_version, ctx.head_version, %(before)s::bigint - 1,
                                 %(after)s::bigint + %(limit)s::integer)) AS m ON true
ORDER BY m.version;

-- name: list_messages_desc*
-- The same page as list_messages_asc in descending version order: up to limit
-- messages before version before (and after version after).
SELECT ctx.head_version, ctx.view_version, m.context_id, m.version, m.role, m.content,
       m.token_count, m.metadata, m.created_at,
       CASE WHEN %(include_embedding)s::boolean THEN m.embedding::text END AS embedding
FROM cs_view(%(context_id)s, %(tenant)s, %(as_of_version)s::bigint, %(as_of)s::timestamptz) AS ctx
CROSS JOIN LATERAL (
    SELECT least(ctx.view_version, ctx.head_version, %(before)s::bigint - 1) AS last
) AS page
LEFT JOIN LATERAL cs_range(ctx.ids, ctx.ends, ctx.id,
                           greatest(%(after)s::bigint + 1, page.last - %(limit)s::integer + 1),
                           page.last) AS m ON true
ORDER BY m.version DESC;

-- name: get_window*
-- The token window of a live context's view (see cs_window in 0002_lineage.sql):
-- rows as in list_messages_asc, in version order.
SELECT w.head_version, w.view_version, w.context_id, w.version, w.role, w.content,
       w.token_count, w.metadata, w.created_at, NULL::text AS embedding
FROM cs_window(%(context_id)s, %(tenant)s, %(as_of_version)s::bigint, %(as_of)s::timestamptz,
               %(max_tokens)s::bigint, %(pin_system)s::boolean) AS w
ORDER BY w.version;
