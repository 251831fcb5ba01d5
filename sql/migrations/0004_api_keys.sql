-- API keys: each belongs to one tenant. Only a SHA-256 of the key is stored; the
-- key itself is shown once, when it is created, and can never be read back.
CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    tenant       text        NOT NULL,
    name         text,
    secret_hash  bytea       NOT NULL,
    prefix       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_keys_secret_hash_key UNIQUE (secret_hash),
    CONSTRAINT api_keys_secret_hash_check CHECK (octet_length(secret_hash) = 32),
    -- The same rule as the CLI's: tenants appear in logs and tables unquoted.
    CONSTRAINT api_keys_tenant_check CHECK (tenant ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    CONSTRAINT api_keys_name_check CHECK (char_length(name) BETWEEN 1 AND 200),
    CONSTRAINT api_keys_prefix_check CHECK (char_length(prefix) BETWEEN 1 AND 16)
);

-- `keys list --tenant T`, oldest first; also answers "does any live key exist".
CREATE INDEX api_keys_tenant_created_idx ON api_keys (tenant, created_at, id);
-- Start-up and every worker ask whether any live key exists (open mode or not).
CREATE INDEX api_keys_live_idx ON api_keys (created_at) WHERE revoked_at IS NULL;
