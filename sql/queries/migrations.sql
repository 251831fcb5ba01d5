-- name: bound_migration_transaction$
-- First in a runner's transaction: wait for the runners' lock no longer than
-- lock_timeout (never hang), and let no statement timeout meant for requests
-- (the role's own behind a transaction pooler) cut a migration short.
SELECT set_config('lock_timeout', %(lock_timeout)s, true) || set_config('statement_timeout', '0', true);

-- name: lock_migrations$
-- Waits for the transaction-level advisory lock that serializes migration
-- runners; released at commit or rollback, so it holds behind a transaction
-- pooler and never outlives its runner.
SELECT pg_advisory_xact_lock(%(key)s::bigint) IS NOT NULL;

-- name: unbound_lock_timeout$
-- Once the lock is held: the migration's own statements wait for locks as the
-- session would (lock_timeout as the role and database set it).
SELECT set_config('lock_timeout', reset_val, true) FROM pg_settings WHERE name = 'lock_timeout';

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
