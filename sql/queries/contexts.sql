-- name: insert_context^
-- Creates a root context (its own root) and returns it; records its root in
-- context_roots in the same statement.
WITH made AS (
    INSERT INTO contexts (id, tenant, root_id, metadata, created_at, updated_at)
    SELECT %(id)s, %(tenant)s, %(id)s, %(metadata)s, t.at, t.at
    FROM (SELECT clock_timestamp() AS at) AS t
    RETURNING id, metadata, parent_id, fork_version, head_version, total_tokens,
              created_at, updated_at
), rooted AS (
    INSERT INTO context_roots (id, root_id) SELECT made.id, made.id FROM made
)
SELECT * FROM made;

-- name: get_root^
-- The root of a context, by its id alone (context_roots: one shard on Citus);
-- no row when it is not recorded there.
SELECT root_id FROM context_roots WHERE id = %(id)s;

-- name: get_context^
-- A live context under a root as of a version or a time. One row, always, with
-- status as in cs_view_v2 (view_version, capped at the head, is the head when 'past_head');
-- when 'ok', head_version and total_tokens are those of the viewed version (the
-- head when neither as_of_version nor as_of is given).
SELECT v.status, v.view_version, c.id, c.metadata, c.parent_id, c.fork_version,
       v.view_version AS head_version,
       CASE WHEN v.view_version >= v.head_version THEN v.total_tokens
            ELSE cs_cum_tokens_v2(%(root_id)s, v.ids, v.ends, v.id, v.view_version) END AS total_tokens,
       c.created_at, c.updated_at
FROM cs_view_v2(%(root_id)s, %(id)s, %(tenant)s, %(as_of_version)s::bigint, %(as_of)s::timestamptz) AS v
LEFT JOIN contexts AS c ON c.root_id = %(root_id)s AND c.id = v.id;

-- name: list_contexts
-- A page of the tenant's live contexts, newest first, strictly after a keyset
-- position (created_at, id); pass 'infinity' and the greatest uuid for the first page.
SELECT id, metadata, parent_id, fork_version, head_version, total_tokens,
       created_at, updated_at
FROM contexts
WHERE tenant = %(tenant)s AND deleted_at IS NULL
  AND (created_at, id) < (%(after_created_at)s::timestamptz, %(after_id)s::uuid)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: list_contexts_by_metadata
-- The same page as list_contexts, restricted to contexts whose metadata contains
-- the given JSON object (jsonb @>). A statement of its own rather than an optional
-- filter: prepared statements keep generic plans, and a generic plan of
-- "filter IS NULL OR metadata @> filter" cannot use the metadata index.
SELECT id, metadata, parent_id, fork_version, head_version, total_tokens,
       created_at, updated_at
FROM contexts
WHERE tenant = %(tenant)s AND deleted_at IS NULL
  AND metadata @> %(metadata)s::jsonb
  AND (created_at, id) < (%(after_created_at)s::timestamptz, %(after_id)s::uuid)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: patch_context_metadata^
-- Applies an RFC 7396 merge patch to a live context's metadata and returns the
-- context, with the merged metadata as text too (metadata_text) for the caller to
-- size before it commits. The patch runs in the database, under the row's lock, so
-- concurrent patches never lose keys. A patch that is not an object (null) empties
-- the metadata. No row when the context is missing.
UPDATE contexts
SET metadata = CASE WHEN jsonb_typeof(%(patch)s::jsonb) = 'object'
                    THEN cs_merge_patch_v1(metadata, %(patch)s::jsonb) ELSE '{}'::jsonb END,
    updated_at = greatest(clock_timestamp(), updated_at)
WHERE root_id = %(root_id)s AND id = %(id)s AND tenant = %(tenant)s AND deleted_at IS NULL
RETURNING id, metadata, metadata::text AS metadata_text, parent_id, fork_version,
          head_version, total_tokens, created_at, updated_at;

-- name: delete_context!
-- Soft-deletes a live context; returns the number of rows deleted (0 or 1).
UPDATE contexts
SET deleted_at = clock_timestamp()
WHERE root_id = %(root_id)s AND id = %(id)s AND tenant = %(tenant)s AND deleted_at IS NULL;

-- name: insert_fork^
-- Forks a live context at a version (its head when at_version is null) without
-- copying a message: one row holding the parent's lineage cut at that version.
-- One row, always, saying how it went from the statement's one snapshot: status
-- 'ok' with the new fork, 'missing' (no such live parent), 'past_head' (at_version
-- beyond the parent's head, given as head_version) or 'too_deep' (the fork would
-- read through more than max_segments ancestor segments: every read of a fork
-- costs one index probe per segment). Nothing is written unless 'ok'. The fork
-- shares the parent's root (root_id), and its root is recorded in context_roots.
-- Deliberately no lock on the parent: under READ COMMITTED a row lock waited for
-- re-reads the parent but not its messages, so head and token total could come
-- from two moments. Everything here is read from the statement's one snapshot;
-- an append racing the fork is simply not in it.
WITH parent AS (
    SELECT p.*, coalesce(%(at_version)s::bigint, p.head_version) AS at_v
    FROM contexts AS p
    WHERE p.root_id = %(root_id)s AND p.id = %(parent_id)s AND p.tenant = %(tenant)s AND p.deleted_at IS NULL
), lineage AS (
    SELECT coalesce(array_agg(s.context_id ORDER BY s.lo), '{}') AS ids,
           coalesce(array_agg(s.hi ORDER BY s.lo), '{}') AS ends
    FROM parent, cs_segments_v1(parent.ancestor_ids, parent.ancestor_ends, parent.id,
                                least(parent.at_v, parent.head_version)) AS s
), fork AS (
    INSERT INTO contexts (id, tenant, root_id, parent_id, fork_version, ancestor_ids, ancestor_ends,
                          head_version, total_tokens, metadata, created_at, updated_at)
    SELECT %(id)s, p.tenant, p.root_id, p.id, p.at_v, l.ids, l.ends, p.at_v,
           CASE WHEN p.at_v = p.head_version THEN p.total_tokens
                ELSE cs_cum_tokens_v2(p.root_id, p.ancestor_ids, p.ancestor_ends, p.id, p.at_v) END,
           coalesce(%(metadata)s::jsonb, p.metadata), t.at, t.at
    FROM parent AS p, lineage AS l,
         LATERAL (SELECT greatest(clock_timestamp(), p.updated_at) AS at) AS t
    WHERE p.at_v <= p.head_version AND cardinality(l.ids) <= %(max_segments)s
    RETURNING id, root_id, metadata, parent_id, fork_version, head_version, total_tokens,
              created_at, updated_at
), rooted AS (
    INSERT INTO context_roots (id, root_id) SELECT fork.id, fork.root_id FROM fork
)
SELECT CASE WHEN f.id IS NOT NULL THEN 'ok'
            WHEN p.id IS NULL THEN 'missing'
            WHEN p.at_v > p.head_version THEN 'past_head'
            ELSE 'too_deep' END AS status,
       coalesce(f.head_version, p.head_version) AS head_version,
       f.id, f.metadata, f.parent_id, f.fork_version, f.total_tokens, f.created_at, f.updated_at
FROM (SELECT) AS one
LEFT JOIN parent AS p ON true
LEFT JOIN fork AS f ON true;
