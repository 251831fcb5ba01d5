"""Reads from a real streaming standby: which server answers a read, and why
(service/replicas.py). The standby is made from the embedded server's binaries."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import errors as pg_errors

from service.db import Database
from service.errors import Unavailable
from service.queries import Store
from service.replicas import format_lsn, parse_lsn, wanted


def in_recovery(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]


def served_by(db: Database) -> str:
    return "replica" if db.read(in_recovery) else "primary"


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def wait_fresh(db: Database) -> Database:
    """db once its monitor has found its (first) standby fresh."""
    member = db.replicas.members[0]
    wait_until(lambda: member.fresh_at > float("-inf"))
    return db


@contextmanager
def reading_from(settings, replica: str) -> Iterator[Database]:
    """An open Database reading from `replica`, fresh; closed after."""
    db = Database(settings, settings.database_url, replica_urls=(replica,))
    db.open(wait=True)
    try:
        yield wait_fresh(db)
    finally:
        db.close()


@pytest.fixture
def fresh(replicated_db):
    return wait_fresh(replicated_db)


@pytest.fixture
def token():
    """Set the request's consistency token (as the middleware does); unset after."""
    def use(position):
        wanted.set(position if position is None or isinstance(position, int) else parse_lsn(position))

    yield use
    wanted.set(None)


@pytest.mark.parametrize("text", ["0/0", "0/16B3748", "16/B374D848", "FFFFFFFF/FFFFFFFF"])
def test_positions_read_and_print_as_postgresql_does(text):
    assert format_lsn(parse_lsn(text)) == text
    assert parse_lsn(text.lower()) == parse_lsn(text)


@pytest.mark.parametrize("text", ["", "0", "0/", "/0", "1/2/3", "G/0", "123456789/0", " 0/1", "0/1\n"])
def test_what_is_not_a_position_is_none(text):
    assert parse_lsn(text) is None


def test_a_read_without_token_goes_to_a_fresh_replica(fresh):
    assert served_by(fresh) == "replica"


def test_a_read_with_a_token_sees_the_write_it_names(fresh, replica_settings, tokenizer, token):
    store = Store.build(replica_settings, fresh, tokenizer)
    for _ in range(50):
        context = store.contexts.create("default", {})
        appended = store.messages.append("default", context["id"], [{"role": "user", "content": "hi"}])
        token(fresh.replicas.write_position())
        assert store.messages.get("default", context["id"], appended.head_version).version == 1
        assert served_by(fresh) == "replica"
        token(None)


def test_a_token_the_replica_has_not_replayed_is_served_by_the_primary_after_the_wait(
    fresh, standby, replica_settings, tokenizer, token, direct_conninfo
):
    store = Store.build(replica_settings, fresh, tokenizer)
    context = store.contexts.create("default", {})
    standby.catch_up(direct_conninfo)  # the context exists on the standby; its message will not
    standby.pause_replay()
    try:
        store.messages.append("default", context["id"], [{"role": "user", "content": "hi"}])
        token(fresh.replicas.write_position())
        started = time.monotonic()
        page = store.messages.list("default", context["id"], limit=10)
        waited = time.monotonic() - started
        assert page.view_version == 1  # the write is seen: the primary answered
        assert served_by(fresh) == "primary"
        assert waited >= replica_settings.replica_wait_ms / 1000  # it gave the replica its chance first
        token(None)
        # Without the token the paused replica still counts as fresh (within
        # REPLICA_MAX_LAG_MS of its last check) and answers: the lag clients accept.
        assert store.messages.list("default", context["id"], limit=10).view_version == 0
    finally:
        standby.resume_replay()


def test_past_the_lag_bound_reads_without_token_go_to_the_primary(replica_settings, replica_conninfo, standby):
    settings = dataclasses.replace(replica_settings, replica_max_lag_ms=100)
    with reading_from(settings, replica_conninfo) as db:
        assert served_by(db) == "replica"
        standby.pause_replay()
        try:
            with db.connection() as conn:  # a commit the paused replica cannot replay
                conn.execute("SELECT pg_logical_emit_message(false, 'test', 'x')")
            time.sleep(0.3)
            assert served_by(db) == "primary"
        finally:
            standby.resume_replay()
        wait_until(lambda: served_by(db) == "replica")


def test_a_killed_replica_leaves_every_read_to_the_primary_and_is_used_again_once_back(
    replica_settings, postgresql, direct_conninfo, pg_server, caplog
):
    from standby import Standby

    own = Standby.create(str(pg_server.host), pg_server.port, pg_server.user, "cs_tests_standby_kill")
    try:
        own.catch_up(direct_conninfo)
        with reading_from(replica_settings, own.conninfo(postgresql.info.dbname)) as db:
            member = db.replicas.members[0]
            assert served_by(db) == "replica"
            own.kill()
            with caplog.at_level(logging.WARNING, logger="context_store"):
                answers = [served_by(db) for _ in range(20)]
            assert answers == ["primary"] * 20  # no read failed
            assert "replica 1 unavailable" in caplog.text and "reading from the primary" in caplog.text
            assert not member.live()
            own.start()
            wait_until(lambda: served_by(db) == "replica", timeout=15)
    finally:
        own.destroy(direct_conninfo)


def test_a_server_not_in_recovery_serves_no_replica_reads(replica_settings, direct_conninfo, caplog):
    with caplog.at_level(logging.ERROR, logger="context_store"):
        db = Database(replica_settings, replica_settings.database_url, replica_urls=(direct_conninfo,))
        db.open(wait=True)
        try:
            member = db.replicas.members[0]
            wait_until(lambda: not member.standby)
            # The "replica" is the primary itself: a read would look the same, so
            # ask which pool it came from.
            picked, why = db.replicas._choose(None)
            assert picked is None and why == "down"
            db.replicas.check()  # found so again: said once
            assert not member.standby
            # A read with a token that meets it (before a check noticed) goes to the primary.
            member.standby = True
            with member.db.connection() as conn:
                assert db.replicas._catch_up(conn, member, 1) is False
            assert not member.standby
        finally:
            db.close()
    assert caplog.text.count("replica 1 is not in recovery") == 1


def test_a_recovery_conflict_runs_the_read_again_on_the_primary(fresh):
    def conflicted(conn):
        if in_recovery(conn):
            raise pg_errors.SerializationFailure("canceling statement due to conflict with recovery")
        return "primary"

    assert fresh.read(conflicted) == "primary"


def test_a_statement_timeout_on_the_replica_is_not_run_again_on_the_primary(fresh):
    ran_on = []

    def slow(conn):
        ran_on.append(in_recovery(conn))
        conn.execute("SET statement_timeout = '50ms'")
        conn.execute("SELECT pg_sleep(1)")

    with pytest.raises(Unavailable):
        fresh.read(slow)
    assert ran_on == [True]


def test_inside_a_transaction_reads_use_its_connection(fresh):
    with fresh.transaction():
        assert served_by(fresh) == "primary"


def test_no_token_when_the_primary_cannot_say(replicated_db):
    replicated_db.pool.close()
    assert replicated_db.replicas.write_position() is None


def test_an_outage_of_the_primary_leaves_the_replicas_freshness_as_it_was(fresh):
    member = fresh.replicas.members[0]
    fresh.replicas._stop.set()  # no monitor check in between
    fresh.replicas._monitor.join(5)
    before = member.fresh_at
    fresh.pool.close()
    fresh.replicas.check()
    assert member.fresh_at == before


def test_replicas_never_opened_close_cleanly(replica_settings, replica_conninfo):
    db = Database(replica_settings, replica_settings.database_url, replica_urls=(replica_conninfo,))
    db.close()
    assert db.replicas._monitor is None
