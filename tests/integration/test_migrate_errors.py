"""How the migration runner reports database errors, by SQLSTATE: a missing
privilege becomes CannotMigrate naming the role and what to do; anything else
(a read-only server, an object in the way, a cancelled lock wait) propagates as
the database's own error, never disguised as a missing privilege."""

from __future__ import annotations

import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import errors as pg_errors

from service.migrate import LOCK_KEY, CannotMigrate, migrate
from service.paths import sql_dir


@pytest.fixture
def migrations_copy(tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(sql_dir() / "migrations", folder)
    return folder


def _exists(url: str, relation: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [relation]).fetchone()[0]


def test_a_read_only_database_is_reported_as_such_not_as_a_missing_privilege(empty_database):
    read_only = psycopg.conninfo.make_conninfo(empty_database.url, options="-c default_transaction_read_only=on")
    with pytest.raises(pg_errors.ReadOnlySqlTransaction):
        migrate(read_only)
    assert not _exists(empty_database.url, "schema_migrations")


def test_an_object_in_the_way_of_the_vector_extension_is_reported_as_such(empty_database):
    with psycopg.connect(empty_database.url, autocommit=True) as conn:
        conn.execute("CREATE TYPE vector AS ENUM ('in', 'the', 'way')")
    with pytest.raises(pg_errors.DuplicateObject, match="vector"):
        migrate(empty_database.url)
    # The preparation and the first file share one transaction: nothing is left.
    assert not _exists(empty_database.url, "schema_migrations")


def test_a_runner_whose_wait_for_the_lock_is_cancelled_raises_the_cancellation(empty_database):
    url = empty_database.url
    with psycopg.connect(url, autocommit=True) as holder, ThreadPoolExecutor(max_workers=1) as executor:
        holder.execute("SELECT pg_advisory_lock(%s::bigint)", [LOCK_KEY])
        runner = executor.submit(migrate, url)
        deadline = time.monotonic() + 20
        while True:
            row = holder.execute(
                "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
            ).fetchone()
            if row is not None:
                break
            assert time.monotonic() < deadline and not runner.done(), "the runner did not wait for the lock"
            time.sleep(0.02)
        holder.execute("SELECT pg_cancel_backend(%s)", [row[0]])
        with pytest.raises(pg_errors.QueryCanceled):
            runner.result(timeout=20)
    assert not _exists(url, "schema_migrations")


def test_a_migration_refused_for_a_missing_privilege_names_the_role_and_the_file(empty_database, migrations_copy):
    url = empty_database.url
    migrate(url, folder=migrations_copy)
    role = f"cs_migrator_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        # May create tables and record migrations, but does not own `contexts`.
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
        conn.execute(f"GRANT SELECT, INSERT ON schema_migrations TO {role}")
    (migrations_copy / "0099_extra.sql").write_text("ALTER TABLE contexts ADD COLUMN extra int;\n", encoding="utf-8")
    try:
        runner = psycopg.conninfo.make_conninfo(url, user=role)
        with pytest.raises(CannotMigrate) as info:
            migrate(runner, folder=migrations_copy)
        message = str(info.value)
        assert f"role {role} lacks a privilege that migration 0099_extra needs (SQLSTATE 42501)" in message
        assert f"owner of database {empty_database.name}" in message
        assert isinstance(info.value.__cause__, pg_errors.InsufficientPrivilege)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations WHERE version = 99").fetchone() == (0,)
            column = conn.execute(
                "SELECT count(*) FROM information_schema.columns"
                " WHERE table_name = 'contexts' AND column_name = 'extra'"
            ).fetchone()
            assert column == (0,)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
