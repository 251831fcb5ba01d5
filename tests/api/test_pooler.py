"""The service behind a transaction-mode pooler (DB_POOLER=pgbouncer-transaction).

These tests run in both passes of CI: directly against PostgreSQL, and with
TEST_PGBOUNCER=1 through a real PgBouncer in transaction mode, where what they
check (no session state, statement timeouts, migrations serialized) is what the
pooler would break.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import webtest
from psycopg import errors as pg_errors
from psycopg import sql as pgsql
from support import problem

from service.app import create_app
from service.db import Database, DatabaseMisconfigured
from service.migrate import LOCK_KEY, CannotMigrate, discover, migrate
from service.queries import Store
from service.runtime import StartupError, check_pooler_session

NAMES = [m.name for m in discover()]


def _set_for_role_in_database(direct: str, **values: str) -> None:
    """ALTER ROLE current_user IN DATABASE current_database() SET name = value."""
    with psycopg.connect(direct, autocommit=True) as conn:
        role, database = conn.execute("SELECT current_user, current_database()").fetchone()
        for name, value in values.items():
            conn.execute(
                pgsql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
                    pgsql.Identifier(role), pgsql.Identifier(database), pgsql.Identifier(name), pgsql.Literal(value)
                )
            )


def _pooled(settings, **changes):
    return dataclasses.replace(
        settings, db_pooler="pgbouncer-transaction", prepare_threshold=None, **changes
    )


# --- no session state ------------------------------------------------------------


def test_behind_the_pooler_the_service_sets_nothing_on_the_session(settings, direct_conninfo):
    _set_for_role_in_database(
        direct_conninfo, statement_timeout="10s", plan_cache_mode="force_generic_plan", TimeZone="UTC"
    )
    database = Database(_pooled(settings), settings.database_url)
    database.open(wait=True)
    try:
        with database.connection() as conn:
            sources = dict(
                conn.execute(
                    "SELECT name, source FROM pg_settings"
                    " WHERE name IN ('statement_timeout', 'plan_cache_mode', 'TimeZone')"
                ).fetchall()
            )
            assert conn.prepare_threshold is None
    finally:
        database.close()
    # From the role (or role-in-database) setting, never from a SET on the connection.
    assert sources == dict.fromkeys(("statement_timeout", "plan_cache_mode", "TimeZone"), "database user")


def test_directly_the_service_sets_its_session(settings, direct_conninfo):
    direct = dataclasses.replace(settings, db_pooler="none", prepare_threshold=5, database_url=direct_conninfo)
    database = Database(direct, direct_conninfo)
    database.open(wait=True)
    try:
        with database.connection() as conn:
            source = conn.execute("SELECT source FROM pg_settings WHERE name = 'statement_timeout'").fetchone()
    finally:
        database.close()
    assert source == ("session",)


# --- the statement timeout ---------------------------------------------------------


def test_an_append_stuck_behind_a_row_lock_gets_its_503_at_the_statement_timeout(
    settings, conninfo, direct_conninfo, pgbouncer, tokenizer
):
    timeout_ms = 400
    # Behind the pooler the role carries the timeout (set before any connection
    # to this database exists, so every server connection PgBouncer opens has it).
    _set_for_role_in_database(
        direct_conninfo, statement_timeout=f"{timeout_ms}ms", plan_cache_mode="force_generic_plan", TimeZone="UTC"
    )
    settings = dataclasses.replace(settings, statement_timeout_ms=timeout_ms)
    if pgbouncer is not None:
        check_pooler_session(settings, conninfo)  # what the service checks at start holds
    database = Database(settings, conninfo)
    database.open(wait=True)
    try:
        client = webtest.TestApp(create_app(settings, Store.build(settings, database, tokenizer)))
        cid = client.post_json("/v1/contexts", {}, status=201).json["id"]
        body = {"messages": [{"role": "user", "content": "hi"}]}
        with psycopg.connect(direct_conninfo) as holder:
            holder.execute("SELECT 1 FROM contexts WHERE id = %s FOR UPDATE", [cid])
            started = time.monotonic()
            resp = client.post_json(f"/v1/contexts/{cid}/messages", body, expect_errors=True)
            waited = time.monotonic() - started
            holder.rollback()
        doc = problem(resp, 503)
        assert "statement timeout" in doc["detail"]
        assert resp.headers["Retry-After"]
        # At the statement timeout: not before it, and not at some later bound
        # (the pool time-out is 5 s, PgBouncer's query_wait_timeout 5 s).
        assert timeout_ms / 1000 <= waited < 3.0, waited
        # The connection is fine afterwards and nothing was written.
        resp = client.post_json(f"/v1/contexts/{cid}/messages", body, status=201)
        assert [m["version"] for m in resp.json["data"]] == [1]
    finally:
        database.close()


# --- start-up checks ----------------------------------------------------------------


def test_start_refuses_a_role_without_the_session_settings_in_one_line(settings, direct_conninfo):
    _set_for_role_in_database(direct_conninfo, statement_timeout="10s", plan_cache_mode="auto", TimeZone="Europe/Paris")
    with pytest.raises(StartupError) as caught:
        check_pooler_session(_pooled(settings), direct_conninfo)
    message = str(caught.value)
    assert "\n" not in message
    assert "plan_cache_mode, timezone differ" in message
    assert "SET plan_cache_mode = force_generic_plan" in message
    assert "SET timezone = 'UTC'" in message
    assert "statement_timeout" not in message


def test_start_accepts_a_role_with_the_session_settings_through_the_pooler(settings, conninfo, direct_conninfo):
    _set_for_role_in_database(
        direct_conninfo, statement_timeout="10s", plan_cache_mode="force_generic_plan", TimeZone="UTC"
    )
    check_pooler_session(_pooled(settings), conninfo)
    check_pooler_session(dataclasses.replace(settings, db_pooler="none"), "host=/nonexistent")  # not asked


def test_start_says_so_in_one_line_when_the_pooler_cannot_be_read(settings, tmp_path):
    with pytest.raises(StartupError) as caught:
        check_pooler_session(_pooled(settings, connect_timeout=2), f"host={tmp_path} port=1 user=nobody dbname=none")
    assert "while reading the role's settings" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_start_refuses_a_pooler_without_a_database_url(settings):
    with pytest.raises(StartupError, match="needs DATABASE_URL"):
        check_pooler_session(_pooled(settings, database_url=None), "unused")


# --- migrations ------------------------------------------------------------------------


@pytest.fixture
def empty_url(empty_database, pg_server, pgbouncer) -> str:
    """The empty database, through PgBouncer when TEST_PGBOUNCER=1."""
    if pgbouncer is None:
        return empty_database.url
    return pgbouncer.conninfo(pg_server.user, empty_database.name, pg_server.password)


def test_four_concurrent_migrate_runs_apply_each_file_once(empty_url, empty_database):
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: migrate(empty_url), range(4)))
    assert sorted(name for names in results for name in names) == NAMES
    for names in results:
        assert names == sorted(names)
    with psycopg.connect(empty_database.url, autocommit=True) as conn:
        counts = conn.execute("SELECT count(*), count(DISTINCT version) FROM schema_migrations").fetchone()
        # Transaction-level locks: none outlives its runner (a session lock would
        # stay on a server connection PgBouncer lends to others).
        held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
    assert counts == (len(NAMES), len(NAMES))
    assert held == (0,)
    assert migrate(empty_url) == []


def test_a_runner_waiting_past_the_lock_timeout_fails_cleanly_having_applied_nothing(empty_url, empty_database):
    with psycopg.connect(empty_database.url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s::bigint)", [LOCK_KEY])
        started = time.monotonic()
        with pytest.raises(CannotMigrate, match="held the migration lock for over 0.3 s"):
            migrate(empty_url, lock_timeout_ms=300)
        assert time.monotonic() - started < 5
        assert holder.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
    assert migrate(empty_url) == NAMES


# --- a protocol violation ----------------------------------------------------------------


def _protocol_violation(conn: psycopg.Connection) -> None:
    """Make the server itself answer 08P01: bind one parameter to a statement of two
    (what a transaction pooler causes by lending another client's statement)."""
    name = f"s{uuid.uuid4().hex[:8]}".encode()
    pgconn = conn.pgconn
    pgconn.prepare(name, b"SELECT $1::int + $2::int")
    result = pgconn.exec_prepared(name, [b"1"])
    raise pg_errors.error_from_result(result, encoding="utf-8")


def test_a_protocol_violation_is_a_misconfiguration_logged_in_one_line_not_an_outage(db, caplog):
    caplog.set_level(logging.ERROR, logger="context_store")
    with pytest.raises(DatabaseMisconfigured) as caught:
        with db.connection() as conn:
            _protocol_violation(conn)
    assert isinstance(caught.value.__cause__, pg_errors.ProtocolViolation)
    assert conn.closed  # not lent again
    assert db.availability.up
    (record,) = [r for r in caplog.records if "08P01" in r.getMessage()]
    assert "DB_POOLER=pgbouncer-transaction" in record.getMessage()
    assert "\n" not in record.getMessage()
    with db.connection() as conn:  # the next request is served
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_protocol_violation_answers_500_not_503(settings, db, tokenizer, caplog):
    caplog.set_level(logging.ERROR)
    store = Store.build(settings, db, tokenizer)

    class Violating:
        """The contexts family, its create meeting a real 08P01 from the server."""

        def __getattr__(self, name):
            return getattr(store.contexts, name)

        def create(self, *args, **kwargs):
            with db.connection() as conn:
                _protocol_violation(conn)

    client = webtest.TestApp(create_app(settings, dataclasses.replace(store, contexts=Violating())))
    resp = client.post_json("/v1/contexts", {}, expect_errors=True)
    doc = problem(resp, 500)
    assert doc["type"] == "/problems/server-misconfigured"
    assert "Retry-After" not in resp.headers
    # One line where it is found, no traceback from the error handler.
    assert not [r for r in caplog.records if r.exc_info and r.name == "context_store"]


def test_waiting_in_the_pooler_is_bounded_by_its_query_wait_timeout_and_is_a_503(
    settings, db, store, conninfo, pgbouncer
):
    if pgbouncer is None:
        pytest.skip("needs TEST_PGBOUNCER=1: only a pooler queues a connected client")
    # Every server connection of this database's pool is held in a transaction,
    # so the service's next statement queues in PgBouncer (tests/pgbouncer.ini:
    # default_pool_size, query_wait_timeout).
    holders = [psycopg.connect(conninfo, prepare_threshold=None) for _ in range(pgbouncer.pool_size)]
    try:
        for holder in holders:
            holder.execute("SELECT 1")
        client = webtest.TestApp(create_app(settings, store))
        started = time.monotonic()
        resp = client.post_json("/v1/contexts", {}, expect_errors=True)
        waited = time.monotonic() - started
    finally:
        for holder in holders:
            holder.close()
    problem(resp, 503)
    assert pgbouncer.query_wait_timeout <= waited < pgbouncer.query_wait_timeout + 3, waited
    client.post_json("/v1/contexts", {}, status=201)  # served again once the pool frees up
