-- name: lock_migrations$
-- Waits for the session-level advisory lock that serializes migration runners.
SELECT pg_advisory_lock(%(key)s::bigint) IS NOT NULL;

-- name: unlock_migrations$
-- Releases the migration runners' advisory lock.
SELECT pg_advisory_unlock(%(key)s::bigint);

-- name: create_migrations_table!
-- Creates the table recording applied migrations, when missing.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: list_migrations
-- Every applied migration with its checksum, in order.
SELECT version, name, checksum FROM schema_migrations ORDER BY version;

-- name: record_migration!
-- Records one migration as applied.
INSERT INTO schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);
