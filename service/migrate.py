"""Forward-only SQL migrations (golang-migrate / dbmate style).

Files `sql/migrations/NNNN_name.sql` are applied in order, each in its own
transaction, recorded with a SHA-256 checksum in `schema_migrations`, under a
PostgreSQL advisory lock so that concurrent runners are safe: the second waits,
then finds nothing left to do. A recorded file whose text changed is refused.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .paths import sql_dir
from .sql import QUERIES

log = logging.getLogger("context_store")

_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
# Arbitrary constant shared by every runner: pg_advisory_lock(key).
LOCK_KEY = 0x636F6E74657874  # "context"


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree."""


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


def migrate(conninfo: str, folder: Path | None = None) -> list[str]:
    """Apply every pending migration; return the names applied (empty when none)."""
    migrations = discover(folder)
    applied_now: list[str] = []
    # Advisory locks are per session: a direct connection, never a pooled one.
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        QUERIES.lock_migrations.run(conn, key=LOCK_KEY)
        try:
            QUERIES.create_migrations_table.run(conn)
            recorded = {row["version"]: row for row in QUERIES.list_migrations.run(conn)}
            for migration in migrations:
                row = recorded.get(migration.version)
                if row is not None:
                    if row["checksum"] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.name} was edited after it was applied "
                            f"(recorded checksum {row['checksum'][:12]}, file {migration.checksum[:12]}); "
                            "add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.text)
                    QUERIES.record_migration.run(
                        conn, version=migration.version, name=migration.name, checksum=migration.checksum
                    )
                log.info("applied migration %s", migration.name)
                applied_now.append(migration.name)
        finally:
            QUERIES.unlock_migrations.run(conn, key=LOCK_KEY)
    return applied_now
