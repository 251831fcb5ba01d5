-- name: claim_idempotency_key^
-- Claims an idempotency key for this transaction (cs_claim_idempotency_v1):
-- status 'in_use', 'new', or 'stored' with the first response.
SELECT status, request_hash, response_status, headers::text AS headers, body
FROM cs_claim_idempotency_v1(%(tenant)s, %(key)s, %(method)s, %(path)s);

-- name: record_idempotency_key!
-- Keeps a successful response for retries of its request, in the transaction of
-- the write it describes. An expired row of the same key (not yet removed) is
-- replaced.
INSERT INTO idempotency_keys (tenant, key, method, path, request_hash, status, headers, body, expires_at)
VALUES (%(tenant)s, %(key)s, %(method)s, %(path)s, %(request_hash)s, %(status)s, %(headers)s, %(body)s,
        clock_timestamp() + make_interval(secs => %(ttl_seconds)s))
ON CONFLICT (tenant, key, method, path) DO UPDATE
SET request_hash = excluded.request_hash, status = excluded.status, headers = excluded.headers,
    body = excluded.body, created_at = excluded.created_at, expires_at = excluded.expires_at
WHERE idempotency_keys.expires_at <= clock_timestamp();

-- name: delete_expired_idempotency_keys!
-- Removes at most `batch` expired keys, oldest first, skipping rows another
-- session holds: a short statement, never a long transaction.
DELETE FROM idempotency_keys
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM idempotency_keys
    WHERE expires_at <= clock_timestamp()
    ORDER BY expires_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
));
