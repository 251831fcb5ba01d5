-- Idempotency keys: the first successful response to a POST that carried an
-- Idempotency-Key, kept for a retry of the same request. The row commits in the
-- same transaction as the write it describes, so a worker that dies mid-request
-- leaves neither. Rows past expires_at are ignored and removed in small batches
-- by the service itself.
CREATE TABLE idempotency_keys (
    tenant        text        NOT NULL,
    key           text        NOT NULL,
    method        text        NOT NULL,
    path          text        NOT NULL,
    request_hash  bytea       NOT NULL,
    status        smallint    NOT NULL,
    headers       jsonb       NOT NULL,
    body          bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at    timestamptz NOT NULL,
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (tenant, key, method, path),
    CONSTRAINT idempotency_keys_key_check CHECK (key ~ '^[!-~]{1,255}$'),
    CONSTRAINT idempotency_keys_status_check CHECK (status BETWEEN 200 AND 299)
);

-- The service's clean-up takes the oldest expired rows first.
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

-- Claims a key for one request, in the caller's transaction: 'in_use' when another
-- transaction holds it (a request with that key is still running), else the lock
-- is held until the caller commits and the stored response, if any, is returned
-- with status 'stored' ('new' when there is none). plpgsql so that the lookup runs
-- in a snapshot taken after the lock: a first request that committed while this
-- one waited for nothing is seen, never repeated.
CREATE FUNCTION cs_claim_idempotency_v1(p_tenant text, p_key text, p_method text, p_path text)
RETURNS TABLE (status text, request_hash bytea, response_status smallint, headers jsonb, body bytea)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(
        hashtextextended(p_tenant || chr(10) || p_key || chr(10) || p_method || chr(10) || p_path, 0)
    ) THEN
        status := 'in_use';
        RETURN NEXT;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT CASE WHEN k.tenant IS NULL THEN 'new' ELSE 'stored' END,
               k.request_hash, k.status, k.headers, k.body
        FROM (SELECT) AS one
        LEFT JOIN idempotency_keys AS k
          ON k.tenant = p_tenant AND k.key = p_key AND k.method = p_method AND k.path = p_path
         AND k.expires_at > clock_timestamp();
END
$$;
