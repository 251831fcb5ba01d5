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

-- name: migrations_table_exists$
-- Whether schema_migrations exists (read-only: a role without DDL rights can ask).
SELECT to_regclass('schema_migrations') IS NOT NULL;

-- name: create_vector_extension!
-- Installs pgvector in this database, when missing (before the first migration,
-- so that a refusal is told apart from the migration's own statements).
CREATE EXTENSION IF NOT EXISTS vector;

-- name: whoami^
-- The role and database the migration runs as and in, for error messages.
SELECT current_user AS role, current_database() AS database, coalesce(current_schema(), 'public') AS schema;
