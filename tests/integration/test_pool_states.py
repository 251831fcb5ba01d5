"""The Database's down/up state machine in the states its races leave, and the
failures around the pool a real server produces (connections terminated, a
database that refuses connections, an idle-session time-out).

A race between threads cannot be produced on demand; each such test builds the
state the other thread leaves behind and calls the method that meets it.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from support import small_database, terminate_pool_connections
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import PoolTimeout

from service.db import Database, RedactingFilter, is_connection_error
from service.errors import Unavailable
from service.sql import QUERIES


def _ping(database: Database, timeout: float | None = None) -> None:
    with database.connection(timeout) as conn:
        QUERIES.ping.run(conn)


# --- what counts as a connection failure ------------------------------------------


def test_a_closed_cursor_or_connection_counts_as_a_connection_failure(conninfo):
    with psycopg.connect(conninfo) as conn:
        cursor = conn.cursor()
        cursor.close()
        with pytest.raises(psycopg.InterfaceError) as info:
            cursor.execute("SELECT 1")
    assert is_connection_error(info.value)
    assert not is_connection_error(ValueError("not a database error"))


def test_a_record_whose_message_cannot_be_formatted_is_passed_on_untouched():
    record = logging.LogRecord("psycopg", logging.WARNING, __file__, 1, "%s and %s", ("one",), None)
    assert RedactingFilter().filter(record) is True
    assert (record.msg, record.args) == ("%s and %s", ("one",))


def test_a_connect_failure_that_is_no_outage_leaves_the_database_up(settings, caplog):
    # An unknown connection option: psycopg refuses before any network traffic.
    database = small_database(settings, conninfo=settings.database_url + " no_such_option=1", wait=False, pool_timeout=0.2)
    try:
        with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
            deadline = time.monotonic() + 5
            while not any("no_such_option" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the pool made no connection attempt"
                time.sleep(0.02)
        assert database.availability.up
        with pytest.raises(Unavailable, match="no connection within the pool time-out"):
            _ping(database)
        assert database.availability.up
    finally:
        database.close()


# --- the pool check ----------------------------------------------------------------


def test_with_the_check_off_even_a_long_idle_connection_is_lent_unchecked(settings, direct_conninfo):
    # Directly: a pooler in between would hide the server's ending of the session.
    database = small_database(settings, conninfo=direct_conninfo, pool_check=False, pool_check_idle=0.0)
    try:
        _ping(database)
        assert terminate_pool_connections(direct_conninfo) == 1
        with pytest.raises(Unavailable, match="connection failed"):  # no check: the request meets it
            _ping(database)
    finally:
        database.close()


def test_a_dead_idle_connection_while_the_server_refuses_new_ones_fails_fast_and_goes_down(
    settings, direct_conninfo
):
    dbname = conninfo_to_dict(direct_conninfo)["dbname"]
    maintenance = make_conninfo(direct_conninfo, dbname="postgres")
    database = small_database(settings, conninfo=direct_conninfo, pool_check_idle=0.0, probe_interval_ms=60_000)
    try:
        _ping(database)
        with psycopg.connect(maintenance, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        try:
            assert terminate_pool_connections(maintenance) >= 1
            # The check finds the connection dead; the probe is refused: no retry.
            with pytest.raises(Unavailable, match="connection failed") as info:
                _ping(database)
            assert is_connection_error(info.value.__cause__)
            assert not database.availability.up
            with pytest.raises(Unavailable, match=r"^The database is unavailable\.$"):  # at once, no probe yet
                _ping(database)
        finally:
            with psycopg.connect(maintenance, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    finally:
        database.close()


# A role or database with idle_session_timeout set: the server ends an idle pooled
# session with FATAL 57P05, a connection failure like a shutdown: the checked path
# replaces the pool and retries, the unchecked one answers Unavailable.


def _idle_session_ended(settings, direct_conninfo, **changes) -> Database:
    # Directly: a pooler in between would absorb the server's ending of the session.
    impatient = make_conninfo(direct_conninfo, options="-c idle_session_timeout=100")
    database = small_database(settings, conninfo=impatient, **changes)
    time.sleep(0.3)  # the server ends the idle session
    return database


def test_a_connection_ended_by_the_idle_session_timeout_is_replaced_before_a_request_sees_it(settings, direct_conninfo):
    database = _idle_session_ended(settings, direct_conninfo, pool_check_idle=0.0)
    try:
        _ping(database)
    finally:
        database.close()


def test_a_request_meeting_a_connection_ended_by_the_idle_session_timeout_is_unavailable(settings, direct_conninfo):
    database = _idle_session_ended(settings, direct_conninfo, pool_check=False)
    try:
        with pytest.raises(Unavailable, match="connection failed"):
            _ping(database)
    finally:
        database.close()


# --- pool time-outs ----------------------------------------------------------------


def test_a_request_that_waits_out_the_pool_time_out_is_unavailable(settings):
    database = small_database(settings)
    try:
        with database.connection():  # the only connection
            with pytest.raises(Unavailable, match="no connection within the pool time-out") as info:
                _ping(database, timeout=0.1)
        assert isinstance(info.value.__cause__, PoolTimeout)
    finally:
        database.close()


def test_a_pool_time_out_after_the_database_went_down_says_only_unavailable(settings):
    database = small_database(settings)
    try:
        with database.connection(), ThreadPoolExecutor(max_workers=1) as executor:
            waiting = executor.submit(_ping, database, 0.5)
            deadline = time.monotonic() + 5
            while database.pool.get_stats().get("requests_waiting", 0) < 1:
                assert time.monotonic() < deadline and not waiting.done(), "the request did not wait"
                time.sleep(0.01)
            # Another request found the database down while this one waited.
            with database._lock:
                database._down_since = time.monotonic()
            with pytest.raises(Unavailable, match=r"^The database is unavailable\.$") as info:
                waiting.result(timeout=10)
        assert isinstance(info.value.__cause__, PoolTimeout)
    finally:
        database.close()


# --- races: the state another thread leaves ---------------------------------------


def test_a_failure_in_a_pool_already_replaced_does_not_take_the_database_down(settings):
    database = small_database(settings)
    try:
        retired = database.pool
        fresh = database._replace_pool()
        # The retired pool's last connection attempt fails after the replacement.
        database._went_down(psycopg.OperationalError("server closed the connection"), retired)
        assert database.availability.up
        assert database.pool is fresh
        _ping(database)
    finally:
        database.close()


def test_a_request_recovering_a_pool_another_request_already_replaced_retries_without_a_probe(settings):
    database = small_database(settings)
    try:
        failed = database.pool
        fresh = database._replace_pool()
        assert database._recover(failed) is True
        assert database.pool is fresh  # not replaced a second time
        # Replaced, then down again: the late request must not retry.
        database._went_down(psycopg.OperationalError("connection refused"))
        assert database._recover(failed) is False
        assert database.pool is fresh
    finally:
        database.close()


def test_after_close_a_recovery_neither_probes_nor_replaces(settings):
    database = small_database(settings)
    pool = database.pool
    database.close()
    assert database._recover(pool) is False
    assert database.pool is pool
    database._went_down(psycopg.OperationalError("server closed the connection"), pool)
    assert database.availability.up  # a closed Database is not "down"


def test_a_request_after_close_is_told_the_service_is_shutting_down(settings):
    database = small_database(settings)
    database.close()
    with pytest.raises(Unavailable, match="shutting down"):
        _ping(database)


def test_a_pool_replaced_while_close_ran_is_closed_and_not_installed(settings, direct_conninfo):
    # Directly: a pooler keeps server connections of its own open.
    database = small_database(settings, conninfo=direct_conninfo)
    pool = database.pool
    database.close()
    with pytest.raises(Unavailable, match="shutting down"):
        database._replace_pool()
    assert database.pool is pool
    with psycopg.connect(direct_conninfo, autocommit=True) as admin:
        left = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'context-store' "
            "AND datname = current_database()"
        ).fetchone()[0]
    assert left == 0


class _ProbeLockTakenJustAfterAnotherProbe:
    """The probe lock, acquired the moment after another request's probe brought
    the database back (replaced the pool and released the lock)."""

    def __init__(self, database: Database) -> None:
        self._lock = threading.Lock()
        self._database = database
        self.replaced_by_other = None

    def acquire(self, blocking: bool = True) -> bool:
        if self.replaced_by_other is None:
            self.replaced_by_other = self._database._replace_pool()
        return self._lock.acquire(blocking)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def test_a_request_whose_turn_to_probe_comes_after_a_probe_succeeded_uses_that_pool(settings):
    database = small_database(settings, probe_interval_ms=10)
    try:
        database._went_down(psycopg.OperationalError("connection refused"))
        with database._lock:
            database._next_probe = 0.0  # this request's turn to probe
        lock = database._probe_lock = _ProbeLockTakenJustAfterAnotherProbe(database)
        _ping(database)
        assert lock.replaced_by_other is not None
        assert database.pool is lock.replaced_by_other  # no second probe, no second replacement
        assert database.availability.up
    finally:
        database.close()
