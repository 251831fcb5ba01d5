"""service.migrate against a real PostgreSQL, and the schema's constraints."""

from __future__ import annotations

import hashlib
import re
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import errors as pg_errors

from service.ids import uuid7
from service.migrate import LOCK_KEY, CannotMigrate, MigrationError, discover, migrate, schema_state
from service.paths import sql_dir

NAMES = ["0001_init", "0002_lineage", "0003_versioned_reads", "0004_api_keys", "0005_search", "0006_idempotency",
         "0007_shard_key", "0008_context_root_statistics"]
VERSIONS = [int(name[:4]) for name in NAMES]


def _recorded(url: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version").fetchall()


def _exists(url: str, relation: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [relation]).fetchone()[0]


# --- applying -----------------------------------------------------------------


def test_migrate_applies_every_migration_to_an_empty_database_in_order(empty_database):
    assert not _exists(empty_database.url, "schema_migrations")
    assert migrate(empty_database.url) == NAMES
    assert _exists(empty_database.url, "contexts")
    assert _exists(empty_database.url, "messages")
    with psycopg.connect(empty_database.url) as conn:
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone() == ("vector",)
        functions = {r[0] for r in conn.execute("SELECT proname FROM pg_proc WHERE proname LIKE 'cs\\_%'")}
    assert {"cs_merge_patch", "cs_segments", "cs_range", "cs_view_version"} <= functions


def test_migrate_a_second_time_applies_nothing(empty_database):
    migrate(empty_database.url)
    before = _recorded(empty_database.url)
    assert migrate(empty_database.url) == []
    assert _recorded(empty_database.url) == before


def test_schema_migrations_records_each_file_with_its_sha256(empty_database):
    migrate(empty_database.url)
    folder = sql_dir() / "migrations"
    expected = []
    for version, name in zip(VERSIONS, NAMES):
        text = (folder / f"{name}.sql").read_text(encoding="utf-8")
        expected.append((version, name, hashlib.sha256(text.encode("utf-8")).hexdigest()))
    assert _recorded(empty_database.url) == expected
    with psycopg.connect(empty_database.url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations WHERE applied_at IS NULL").fetchone() == (0,)


def _shared_out(results: list[list[str]]) -> None:
    """Concurrent runners took turns file by file: each file applied by exactly
    one of them, each runner's files in order."""
    assert sorted(name for names in results for name in names) == NAMES
    for names in results:
        assert names == sorted(names)


def test_concurrent_runners_both_succeed_and_apply_each_file_once(empty_database):
    url = empty_database.url
    # Hold the runners' lock so that both are provably waiting on it together.
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s::bigint)", [LOCK_KEY])
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(migrate, url) for _ in range(2)]
            deadline = time.monotonic() + 20
            while True:
                waiting = holder.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                    " WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
                ).fetchone()[0]
                if waiting == 2:
                    break
                assert time.monotonic() < deadline, f"only {waiting} runner(s) waited on the lock"
                assert not any(f.done() for f in futures), "a runner did not wait for the lock"
                time.sleep(0.05)
            holder.execute("SELECT pg_advisory_unlock(%s::bigint)", [LOCK_KEY])
            results = [f.result(timeout=60) for f in futures]
    _shared_out(results)
    with psycopg.connect(url) as conn:
        counts = conn.execute(
            "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version"
        ).fetchall()
    assert counts == [(version, 1) for version in VERSIONS]


def test_concurrent_runners_without_coordination_both_succeed(empty_database):
    url = empty_database.url
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: migrate(url), range(2)))
    _shared_out(results)
    assert [row[:2] for row in _recorded(url)] == list(zip(VERSIONS, NAMES))


def test_migrate_releases_its_lock_when_done(empty_database):
    migrate(empty_database.url)
    with psycopg.connect(empty_database.url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_try_advisory_lock(%s::bigint)", [LOCK_KEY]).fetchone() == (True,)


# --- what is pending, read-only -------------------------------------------------


def test_schema_state_reports_applied_and_latest_versions_without_creating_anything(empty_database):
    state = schema_state(empty_database.url)
    assert (state.applied, state.latest, state.pending, state.current) == (0, VERSIONS[-1], tuple(NAMES), False)
    assert not _exists(empty_database.url, "schema_migrations")  # asked, nothing created
    migrate(empty_database.url)
    with psycopg.connect(empty_database.url, autocommit=True) as conn:  # an open connection works too
        state = schema_state(conn)
        assert not conn.closed
    assert (state.applied, state.latest, state.pending, state.current) == (VERSIONS[-1], VERSIONS[-1], (), True)


def test_schema_state_counts_a_new_file_as_pending(empty_database, migrations_copy):
    migrate(empty_database.url, folder=migrations_copy)
    (migrations_copy / "0099_extra.sql").write_text("CREATE TABLE extra (id int);\n", encoding="utf-8")
    state = schema_state(empty_database.url, folder=migrations_copy)
    assert (state.applied, state.latest, state.pending, state.current) == (VERSIONS[-1], 99, ("0099_extra",), False)


def test_migrate_on_a_current_schema_neither_locks_nor_creates(empty_database):
    migrate(empty_database.url)
    # Another session holds the runners' lock: a runner that asked for it would
    # fail on the lock_timeout instead of returning.
    impatient = psycopg.conninfo.make_conninfo(empty_database.url, options="-c lock_timeout=500")
    with psycopg.connect(empty_database.url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s::bigint)", [LOCK_KEY])
        assert migrate(impatient) == []


def test_a_role_without_ddl_rights_migrates_a_current_schema_and_is_refused_a_pending_one(
    empty_database, migrations_copy
):
    migrate(empty_database.url, folder=migrations_copy)
    role = f"cs_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(empty_database.url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        conn.execute(f"GRANT SELECT ON schema_migrations TO {role}")
    try:
        reader = psycopg.conninfo.make_conninfo(empty_database.url, user=role)
        assert migrate(reader, folder=migrations_copy) == []
        (migrations_copy / "0099_extra.sql").write_text("CREATE TABLE extra (id int);\n", encoding="utf-8")
        with pytest.raises(CannotMigrate, match=f"GRANT CREATE ON SCHEMA public TO {role}"):
            migrate(reader, folder=migrations_copy)
        assert not _exists(empty_database.url, "extra")
    finally:
        with psycopg.connect(empty_database.url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


# --- refusing -----------------------------------------------------------------


@pytest.fixture
def migrations_copy(tmp_path):
    folder = tmp_path / "migrations"
    shutil.copytree(sql_dir() / "migrations", folder)
    return folder


def test_a_migration_edited_after_it_was_applied_is_refused_by_name(empty_database, migrations_copy):
    assert migrate(empty_database.url, folder=migrations_copy) == NAMES
    path = migrations_copy / "0001_init.sql"
    path.write_text(path.read_text(encoding="utf-8") + "\n-- an afterthought\n", encoding="utf-8")
    (migrations_copy / "0099_later.sql").write_text("CREATE TABLE later (id int);\n", encoding="utf-8")
    with pytest.raises(MigrationError, match=r"0001_init.*edited") as info:
        migrate(empty_database.url, folder=migrations_copy)
    assert "0002_lineage" not in str(info.value)
    # Nothing after the refusal was applied.
    assert not _exists(empty_database.url, "later")
    assert [row[0] for row in _recorded(empty_database.url)] == VERSIONS


def test_a_new_migration_file_is_applied_on_the_next_run(empty_database, migrations_copy):
    migrate(empty_database.url, folder=migrations_copy)
    (migrations_copy / "0099_extra.sql").write_text("CREATE TABLE extra (id int);\n", encoding="utf-8")
    assert migrate(empty_database.url, folder=migrations_copy) == ["0099_extra"]
    assert _exists(empty_database.url, "extra")
    assert [row[1] for row in _recorded(empty_database.url)] == [*NAMES, "0099_extra"]


def test_a_failing_migration_is_rolled_back_and_not_recorded(empty_database, migrations_copy):
    (migrations_copy / "0099_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_column FROM half_done;\n", encoding="utf-8"
    )
    with pytest.raises(psycopg.Error):
        migrate(empty_database.url, folder=migrations_copy)
    assert not _exists(empty_database.url, "half_done")
    # The earlier files, each in its own transaction, stay applied.
    assert [row[1] for row in _recorded(empty_database.url)] == NAMES


@pytest.mark.parametrize("filename", ["init.sql", "001_init.sql", "0001-init.sql", "0001_Init.sql", "00001_init.sql"])
def test_a_misnamed_migration_file_is_refused_by_name(empty_database, tmp_path, filename):
    (tmp_path / filename).write_text("SELECT 1;\n", encoding="utf-8")
    with pytest.raises(MigrationError, match=re.escape(f"{filename} is not named NNNN_name.sql")):
        migrate(empty_database.url, folder=tmp_path)
    assert not _exists(empty_database.url, "schema_migrations")


def test_two_files_with_one_version_are_refused(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;\n", encoding="utf-8")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;\n", encoding="utf-8")
    with pytest.raises(MigrationError, match="0001"):
        discover(tmp_path)


def test_discover_ignores_files_that_are_not_sql(migrations_copy):
    (migrations_copy / "README.md").write_text("notes\n", encoding="utf-8")
    assert [m.name for m in discover(migrations_copy)] == NAMES
    assert [m.version for m in discover(migrations_copy)] == VERSIONS


# --- constraints --------------------------------------------------------------


def _context(conn, head_version: int = 0) -> uuid.UUID:
    context_id = uuid7()
    conn.execute(
        "INSERT INTO contexts (id, root_id, head_version) VALUES (%s, %s, %s)",
        [context_id, context_id, head_version],
    )
    return context_id


def _message(conn, context_id, version=1, role="user", token_count=1, cum_tokens=None):
    conn.execute(
        "INSERT INTO messages (context_id, version, role, content, token_count, cum_tokens, created_at)"
        " VALUES (%s, %s, %s, 'hi', %s, %s, now())",
        [context_id, version, role, token_count, token_count if cum_tokens is None else cum_tokens],
    )


def test_a_valid_message_is_accepted(postgresql):
    context_id = _context(postgresql, head_version=1)
    _message(postgresql, context_id)
    count = postgresql.execute("SELECT count(*) FROM messages WHERE context_id = %s", [context_id]).fetchone()
    assert count == (1,)


def test_a_message_at_version_zero_is_refused(postgresql):
    context_id = _context(postgresql)
    with pytest.raises(pg_errors.CheckViolation) as info:
        _message(postgresql, context_id, version=0)
    assert info.value.diag.constraint_name == "messages_version_check"


def test_a_message_with_negative_token_count_is_refused(postgresql):
    context_id = _context(postgresql)
    with pytest.raises(pg_errors.CheckViolation) as info:
        _message(postgresql, context_id, token_count=-1, cum_tokens=0)
    assert info.value.diag.constraint_name == "messages_token_count_check"


@pytest.mark.parametrize("role", ["wizard", "User", ""])
def test_a_message_with_an_unknown_role_is_refused(postgresql, role):
    context_id = _context(postgresql)
    with pytest.raises(pg_errors.CheckViolation) as info:
        _message(postgresql, context_id, role=role)
    assert info.value.diag.constraint_name == "messages_role_check"


@pytest.mark.parametrize("role", ["system", "user", "assistant", "tool"])
def test_each_known_role_is_accepted(postgresql, role):
    _message(postgresql, _context(postgresql), role=role)


def test_a_second_message_at_the_same_version_is_refused(postgresql):
    context_id = _context(postgresql)
    _message(postgresql, context_id, version=1)
    with pytest.raises(pg_errors.UniqueViolation) as info:
        _message(postgresql, context_id, version=1)
    assert info.value.diag.constraint_name == "messages_pkey"


def test_the_same_version_in_two_contexts_is_accepted(postgresql):
    _message(postgresql, _context(postgresql), version=1)
    _message(postgresql, _context(postgresql), version=1)


def test_a_message_of_an_unknown_context_is_refused(postgresql):
    with pytest.raises(pg_errors.ForeignKeyViolation):
        _message(postgresql, uuid7())


def test_a_context_with_negative_head_version_is_refused(postgresql):
    with pytest.raises(pg_errors.CheckViolation) as info:
        _context(postgresql, head_version=-1)
    assert info.value.diag.constraint_name == "contexts_head_version_check"
