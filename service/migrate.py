"""Forward-only SQL migrations (golang-migrate / dbmate style).

Files `sql/migrations/NNNN_name.sql` are applied in order, each in its own
transaction, recorded with a SHA-256 checksum in `schema_migrations`, under a
transaction-level PostgreSQL advisory lock so that concurrent runners are safe,
directly or through a transaction-mode pooler: each waits its turn (at most
LOCK_TIMEOUT_MS), then applies the first file still pending, so every file is
applied once and in order. A recorded file whose text changed is refused.

A schema already up to date is found so by reading `schema_migrations` alone: no
lock is taken and nothing created, so a runtime role without DDL rights can run
`migrate` (and MIGRATE_ON_START) against a current schema.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from .paths import sql_dir
from .sql import QUERIES

log = logging.getLogger("context_store")

_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
# Arbitrary constant shared by every runner: pg_advisory_xact_lock(key).
LOCK_KEY = 0x636F6E74657874  # "context"


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree."""


class CannotMigrate(MigrationError):
    """The database cannot take the pending migrations as things stand (a missing
    privilege or extension); the message is one line saying what to do."""


# SQLSTATEs: PostgreSQL's documented error codes, never its message text.
_INSUFFICIENT_PRIVILEGE = "42501"
_EXTENSION_UNAVAILABLE = {"0A000", "58P01"}  # feature_not_supported (PG 15+), undefined_file (before)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def discover(folder: Path | None = None) -> list[Migration]:
    """The migration files, in order; raise MigrationError on a misnamed or duplicate one."""
    folder = folder or sql_dir() / "migrations"
    migrations: dict[int, Migration] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql")
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(f"two migration files have version {version:04d}")
        migrations[version] = Migration(version, path.stem, path.read_text(encoding="utf-8"))
    return [migrations[v] for v in sorted(migrations)]


@dataclass(frozen=True)
class SchemaState:
    """The schema's migrations as recorded against those on disk.

    applied: the highest version recorded in schema_migrations (0 when the table
    does not exist); latest: the highest version on disk; pending: the names of
    the files on disk not recorded, in order.
    """

    applied: int
    latest: int
    pending: tuple[str, ...]

    @property
    def current(self) -> bool:
        return not self.pending


def _recorded(conn: psycopg.Connection) -> dict[int, dict[str, Any]]:
    if not QUERIES.migrations_table_exists.run(conn):
        return {}
    return {row["version"]: row for row in QUERIES.list_migrations.run(conn)}


def _check_checksums(migrations: list[Migration], recorded: dict[int, dict[str, Any]]) -> None:
    for migration in migrations:
        row = recorded.get(migration.version)
        if row is not None and row["checksum"] != migration.checksum:
            raise MigrationError(
                f"migration {migration.name} was edited after it was applied "
                f"(recorded checksum {row['checksum'][:12]}, file {migration.checksum[:12]}); "
                "add a new migration instead"
            )


def _state(migrations: list[Migration], recorded: dict[int, dict[str, Any]]) -> SchemaState:
    return SchemaState(
        applied=max(recorded, default=0),
        latest=max((m.version for m in migrations), default=0),
        pending=tuple(m.name for m in migrations if m.version not in recorded),
    )


def schema_state(
    conn: str | psycopg.Connection, folder: Path | None = None, *, migrations: list[Migration] | None = None
) -> SchemaState:
    """Where the schema stands: two read-only statements, no lock, nothing created,
    so any role that may SELECT from schema_migrations can ask (the web process at
    start, /health). conn is a conninfo (a direct connection is opened and closed)
    or an open connection (left open, in autocommit or inside the caller's
    transaction). Checksums are not compared here: `migrate` does that. Database
    errors (psycopg.Error) propagate; a misnamed migration file raises MigrationError.
    migrations: the files already discovered (a caller asking often reads them once)."""
    if migrations is None:
        migrations = discover(folder)
    if isinstance(conn, str):
        with psycopg.connect(conn, autocommit=True, prepare_threshold=None) as direct:
            return _state(migrations, _recorded(direct))
    return _state(migrations, _recorded(conn))


def _prepare(conn: psycopg.Connection) -> None:
    """Create schema_migrations and the vector extension, each alone, so that a
    refusal (by SQLSTATE) says which privilege or package is missing."""
    # Each in a savepoint: the caller's transaction must still answer whoami.
    try:
        with conn.transaction():
            QUERIES.create_migrations_table.run(conn)
    except psycopg.Error as exc:
        if exc.sqlstate != _INSUFFICIENT_PRIVILEGE:
            raise
        who = QUERIES.whoami.run(conn)
        raise CannotMigrate(
            f"role {who['role']} may not create tables in schema {who['schema']} of database {who['database']}: "
            f"GRANT CREATE ON SCHEMA {who['schema']} TO {who['role']} (as the schema's owner), "
            "or run `context-store migrate` as the schema's owner"
        ) from exc
    try:
        with conn.transaction():
            QUERIES.create_vector_extension.run(conn)
    except psycopg.Error as exc:
        who = QUERIES.whoami.run(conn)
        if exc.sqlstate == _INSUFFICIENT_PRIVILEGE:
            raise CannotMigrate(
                f"role {who['role']} may not create the vector extension in database {who['database']} "
                "(it takes a superuser): have a superuser run `CREATE EXTENSION vector;` in that database, "
                "or run `context-store migrate` as a superuser"
            ) from exc
        if exc.sqlstate in _EXTENSION_UNAVAILABLE:
            raise CannotMigrate(
                f"pgvector is not installed on the server of database {who['database']}: install it "
                "(https://github.com/pgvector/pgvector#installation, or your provider's pgvector option), "
                "then run `context-store migrate` again"
            ) from exc
        raise


# How long a runner waits for another to finish its file before it gives up
# (cleanly: nothing of its own applied, the exit code says try again).
LOCK_TIMEOUT_MS = 60_000
_LOCK_NOT_AVAILABLE = "55P03"


def _apply_next(
    conn: psycopg.Connection, migrations: list[Migration], lock_timeout_ms: int, first: bool
) -> Migration | None:
    """In one transaction, under the runners' lock: prepare the database when
    first, then apply the first file not recorded; None when none is left."""
    with conn.transaction():
        QUERIES.bound_migration_transaction.run(conn, lock_timeout=f"{lock_timeout_ms}ms")
        try:
            QUERIES.lock_migrations.run(conn, key=LOCK_KEY)
        except psycopg.Error as exc:
            if exc.sqlstate != _LOCK_NOT_AVAILABLE:
                raise
            raise CannotMigrate(
                f"another `context-store migrate` held the migration lock for over {lock_timeout_ms / 1000:g} s "
                "(a long migration, or a stuck session holding it): run `context-store migrate` again once it ends"
            ) from exc
        QUERIES.unbound_lock_timeout.run(conn)
        if first:
            _prepare(conn)
        # Read under the lock: another runner may have applied some meanwhile.
        recorded = _recorded(conn)
        _check_checksums(migrations, recorded)
        migration = next((m for m in migrations if m.version not in recorded), None)
        if migration is None:
            return None
        try:
            conn.execute(migration.text)
            QUERIES.record_migration.run(
                conn, version=migration.version, name=migration.name, checksum=migration.checksum
            )
        except psycopg.Error as exc:
            if exc.sqlstate == _INSUFFICIENT_PRIVILEGE:
                # The transaction is aborted: ask who we are outside it.
                raise _PrivilegeMissing(migration, exc) from exc
            raise
    return migration


class _PrivilegeMissing(Exception):
    def __init__(self, migration: Migration, exc: psycopg.Error) -> None:
        super().__init__(migration.name)
        self.migration = migration
        self.sqlstate = exc.sqlstate


def migrate(conninfo: str, folder: Path | None = None, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> list[str]:
    """Apply every pending migration; return the names this runner applied (empty
    when none; concurrent runners share the files out, each applied once, in order).

    When nothing is pending this only reads schema_migrations: no lock, no DDL.
    Each file is applied in its own transaction under a transaction-level lock,
    so that runners are serialized through a transaction-mode pooler too; a
    runner that waits longer than lock_timeout_ms for it raises CannotMigrate."""
    migrations = discover(folder)
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        recorded = _recorded(conn)
        _check_checksums(migrations, recorded)
        if _state(migrations, recorded).current:
            return []
        while True:
            try:
                migration = _apply_next(conn, migrations, lock_timeout_ms, first=not applied_now)
            except _PrivilegeMissing as exc:
                who = QUERIES.whoami.run(conn)
                raise CannotMigrate(
                    f"role {who['role']} lacks a privilege that migration {exc.migration.name} needs "
                    f"(SQLSTATE {exc.sqlstate}): run `context-store migrate` as the owner of database "
                    f"{who['database']} or a superuser"
                ) from exc.__cause__
            if migration is None:
                return applied_now
            log.info("applied migration %s", migration.name)
            applied_now.append(migration.name)
