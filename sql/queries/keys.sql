-- name: insert_key^
-- Stores a new key's hash for a tenant; returns its row (never the key).
INSERT INTO api_keys (id, tenant, name, secret_hash, prefix)
VALUES (%(id)s, %(tenant)s, %(name)s, %(secret_hash)s, %(prefix)s)
RETURNING id, tenant, name, prefix, created_at, last_used_at, revoked_at;

-- name: list_keys
-- Every key, or a tenant's keys, oldest first, revoked ones included.
SELECT id, tenant, name, prefix, created_at, last_used_at, revoked_at
FROM api_keys
WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s::text
ORDER BY tenant, created_at, id;

-- name: revoke_key^
-- Revokes a key; returns its row with was_revoked (true when it already was: its
-- first revocation time stays), no row when the id is unknown.
WITH before AS (
    SELECT id, revoked_at FROM api_keys WHERE id = %(id)s FOR UPDATE
)
UPDATE api_keys AS k
SET revoked_at = coalesce(before.revoked_at, clock_timestamp())
FROM before
WHERE k.id = before.id
RETURNING k.id, k.tenant, k.name, k.prefix, k.created_at, k.last_used_at, k.revoked_at,
          before.revoked_at IS NOT NULL AS was_revoked;

-- name: use_key^
-- Returns the tenant and hash of the live key with this hash (no row when it is
-- unknown or revoked), and notes its use at most once a minute: the write rides on
-- the lookup, so authenticating costs no extra round trip, and a busy key's row is
-- rewritten once a minute, not once a request.
WITH found AS (
    SELECT id, tenant, secret_hash, last_used_at
    FROM api_keys
    WHERE secret_hash = %(secret_hash)s AND revoked_at IS NULL
), touched AS (
    UPDATE api_keys AS k
    SET last_used_at = now()
    FROM found
    WHERE k.id = found.id
      AND (found.last_used_at IS NULL OR found.last_used_at < now() - interval '1 minute')
    RETURNING k.id
)
SELECT tenant, secret_hash FROM found;

-- name: any_live_key$
-- Whether at least one key is not revoked (without one the service runs open).
SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL);

-- name: keys_table_exists$
-- Whether migration 0004 made the api_keys table (the CLI asks before anything else).
SELECT to_regclass('api_keys') IS NOT NULL;
