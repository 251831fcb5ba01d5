-- name: insert_context^
-- Creates a root context and returns it.
INSERT INTO contexts (id, tenant, root_id, metadata, created_at, updated_at)
SELECT %(id)s, %(tenant)s, %(id)s, %(metadata)s, t.at, t.at
FROM (SELECT clock_timestamp() AS at) AS t
RETURNING id, metadata, parent_id, fork_version, head_version, total_tokens,
          created_at, updated_at;

-- name: get_context^
-- Returns a live context, with its head and token total as of a version or a time
-- (view_version, view_tokens; the head when neither is given). No row when the
-- context is missing, deleted or another tenant's.
SELECT c.id, c.metadata, c.parent_id, c.fork_version, c.head_version, c.total_tokens,
       c.created_at, c.updated_at, r.v AS view_version,
       CASE WHEN r.v >= c.head_version THEN c.total_tokens
            ELSE cs_cum_tokens(c.ancestor_ids, c.ancestor_ends, c.id, r.v) END AS view_tokens
FROM contexts AS c
CROSS JOIN LATERAL (
    SELECT cs_view_version(c.ancestor_ids, c.ancestor_ends, c.id, c.head_version,
                           %(as_of_version)s::bigint, %(as_of)s::timestamptz) AS v
) AS r
WHERE c.id = %(id)s AND c.tenant = %(tenant)s AND c.deleted_at IS NULL;

-- name: get_head^
-- The head version of a live context (no row when missing, deleted or another
-- tenant's): tells why a conditional write wrote nothing (404, 412 or 422).
SELECT head_version FROM contexts
WHERE id = %(id)s AND tenant = %(tenant)s AND deleted_at IS NULL;

-- name: list_contexts*
-- A page of the tenant's live contexts, newest first, strictly after a keyset
-- position (created_at, id); pass 'infinity' and the greatest uuid for the first page.
SELECT id, metadata, parent_id, fork_version, head_version, total_tokens,
       created_at, updated_at
FROM contexts
WHERE tenant = %(tenant)s AND deleted_at IS NULL
  AND (created_at, id) < (%(after_created_at)s::timestamptz, %(after_id)s::uuid)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: list_contexts_by_metadata*
-- The same page as list_contexts, restricted to contexts whose metadata contains
-- the given JSON object (jsonb @>).
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
                    THEN cs_merge_patch(metadata, %(patch)s::jsonb) ELSE '{}'::jsonb END,
    updated_at = greatest(clock_timestamp(), updated_at)
WHERE id = %(id)s AND tenant = %(tenant)s AND deleted_at IS NULL
RETURNING id, metadata, metadata::text AS metadata_text, parent_id, fork_version,
          head_version, total_tokens, created_at, updated_at;

-- name: delete_context!
-- Soft-deletes a live context; returns the number of rows deleted (0 or 1).
UPDATE contexts
SET deleted_at = clock_timestamp()
WHERE id = %(id)s AND tenant = %(tenant)s AND deleted_at IS NULL;

-- name: insert_fork^
-- Forks a live context at a version (its head when at_version is null) without
-- copying a message: one row holding the parent's lineage cut at that version.
-- No row when the parent is missing or deleted, the version is past its head, or
-- the fork would read through more than max_segments ancestor segments (every read
-- of a fork costs one index probe per segment).
-- Deliberately no lock on the parent: under READ COMMITTED a row lock waited for
-- re-reads the parent but not its messages, so head and token total could come
-- from two moments. Everything here is read from the statement's one snapshot;
-- an append racing the fork is simply not in it.
WITH parent AS (
    SELECT p.*, coalesce(%(at_version)s::bigint, p.head_version) AS at_v
    FROM contexts AS p
    WHERE p.id = %(parent_id)s AND p.tenant = %(tenant)s AND p.deleted_at IS NULL
), lineage AS (
    SELECT coalesce(array_agg(s.context_id ORDER BY s.lo), '{}') AS ids,
           coalesce(array_agg(s.hi ORDER BY s.lo), '{}') AS ends
    FROM parent, cs_segments(parent.ancestor_ids, parent.ancestor_ends, parent.id, parent.at_v) AS s
)
INSERT INTO contexts (id, tenant, root_id, parent_id, fork_version, ancestor_ids, ancestor_ends,
                      head_version, total_tokens, metadata, created_at, updated_at)
SELECT %(id)s, p.tenant, p.root_id, p.id, p.at_v, l.ids, l.ends, p.at_v,
       CASE WHEN p.at_v = p.head_version THEN p.total_tokens
            ELSE cs_cum_tokens(p.ancestor_ids, p.ancestor_ends, p.id, p.at_v) END,
       coalesce(%(metadata)s::jsonb, p.metadata), t.at, t.at
FROM parent AS p, lineage AS l,
     LATERAL (SELECT greatest(clock_timestamp(), p.updated_at) AS at) AS t
WHERE p.at_v <= p.head_version AND cardinality(l.ids) <= %(max_segments)s
RETURNING id, metadata, parent_id, fork_version, head_version, total_tokens,
          created_at, updated_at;
