"""The pool's check of idle connections, against connections the server really
terminated (as a database restart does). Those tests connect directly: a pooler
in between would hide the server's ending of a session."""

from __future__ import annotations

import dataclasses
import logging

import psycopg
import pytest
from support import small_database, terminate_pool_connections

from service.db import Database
from service.errors import Unavailable
from service.sql import QUERIES


def test_an_idle_connection_is_checked_and_replaced_before_a_request_sees_it(settings, direct_conninfo):
    database = small_database(settings, direct_conninfo, pool_check_idle=0.0)
    try:
        with database.connection() as conn:
            QUERIES.ping.run(conn)
        assert terminate_pool_connections(direct_conninfo) == 1
        with database.connection() as conn:  # the check finds it dead; the pool lends a new one
            QUERIES.ping.run(conn)
    finally:
        database.close()


def test_a_connection_returned_a_moment_ago_is_lent_without_a_check(settings, direct_conninfo):
    database = small_database(settings, direct_conninfo, pool_check_idle=3600.0)
    try:
        with database.connection() as conn:
            QUERIES.ping.run(conn)
        assert terminate_pool_connections(direct_conninfo) == 1
        with pytest.raises(Unavailable):  # no check: the request meets the broken connection
            with database.connection() as conn:
                QUERIES.ping.run(conn)
        with database.connection() as conn:  # the pool replaced it
            QUERIES.ping.run(conn)
    finally:
        database.close()


def test_connections_run_each_statement_in_its_own_transaction(db):
    with db.connection() as conn:
        assert conn.autocommit
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_database_error_that_a_retry_cannot_cure_is_not_reported_as_unavailable(db):
    # 54001 statement_too_complex is an OperationalError, but not the database's fault.
    with pytest.raises(psycopg.errors.StatementTooComplex):
        with db.connection() as conn:
            conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'too complex' USING ERRCODE = 'statement_too_complex'; END $$"
            )


def test_connection_failures_are_logged_without_the_address_or_credentials(settings, tmp_path, caplog):
    socket_dir = tmp_path / "secret-socket-dir"
    conninfo = f"host={socket_dir} port=5432 dbname=cs user=someone password=hunter2"
    database = Database(dataclasses.replace(settings, pool_min_size=1, pool_max_size=1), conninfo)
    with caplog.at_level(logging.INFO):
        database.open()
        try:
            with pytest.raises(Unavailable):
                with database.connection() as conn:
                    QUERIES.ping.run(conn)
        finally:
            database.close()
    logged = [(r.name, r.getMessage()) for r in caplog.records]
    # The pool's own warning about the refused attempt is among them, redacted.
    assert any(name == "psycopg.pool" and "error connecting" in message for name, message in logged), logged
    for _name, message in logged:
        assert str(socket_dir) not in message and "secret-socket-dir" not in message
        assert "hunter2" not in message


def test_availability_is_up_until_a_connection_fails_and_up_again_after_the_probe(settings, direct_conninfo):
    database = small_database(settings, direct_conninfo, pool_check_idle=3600.0, probe_interval_ms=10)
    try:
        with database.connection() as conn:
            QUERIES.ping.run(conn)
        assert database.availability.up and database.availability.down_for is None
        assert terminate_pool_connections(direct_conninfo) == 1
        with pytest.raises(Unavailable):  # this request's connection broke mid-way
            with database.connection() as conn:
                QUERIES.ping.run(conn)
        # The server answered the probe: the pool was replaced, nothing is down.
        assert database.availability.up
        with database.connection() as conn:
            QUERIES.ping.run(conn)
    finally:
        database.close()
