"""service.sql runs a statement on libpq (psycopg's pq layer) when its parameters
are plain scalars, and through psycopg's cursor otherwise: both ways give the
same rows and the same errors, and the libpq way follows the connection's
prepare_threshold under names of its own."""

from __future__ import annotations

import gc
import weakref
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import psycopg
import pytest
from psycopg import errors

from service import sql
from service.sql import parse

S = parse("""
-- name: one_row^
-- Every scalar kind the libpq way sends, back as columns.
SELECT %(id)s::bigint AS id, %(name)s::text AS name, %(flag)s::boolean AS flag,
       %(at)s::timestamptz AS at, %(ref)s::uuid AS ref, jsonb_build_object('name', %(name)s::text) AS doc,
       %(nothing)s::text AS nothing, 100 %% 7 AS modulo, %(id)s::bigint + 1 AS next

-- name: no_row^
-- No row.
SELECT 1 AS x WHERE %(id)s::bigint < 0

-- name: rows
-- Several rows.
SELECT g AS n, g::text AS label FROM generate_series(1, %(n)s::int) AS g

-- name: no_rows
-- No rows.
SELECT g AS n FROM generate_series(1, %(n)s::int) AS g WHERE false

-- name: a_value$
-- One value.
SELECT %(n)s::int * 2 AS doubled

-- name: no_value$
-- No value.
SELECT 1 AS x WHERE %(n)s::int < 0

-- name: bump!
-- Row count.
UPDATE runner_rows SET x = x + 1 WHERE id <= %(n)s::int

-- name: add_row!
-- Row count of an insert.
INSERT INTO runner_rows (id, x) VALUES (%(id)s::int, 0)

-- name: count_rows$
-- How many rows.
SELECT count(*) FROM runner_rows WHERE %(any)s::boolean

-- name: divide$
-- Fails on zero.
SELECT 1 / %(d)s::int

-- name: late_table$
-- Fails until its table exists.
SELECT count(*) FROM runner_late WHERE %(any)s::boolean

-- name: sum_array$
-- An array parameter: not a plain scalar.
SELECT sum(x) FROM unnest(%(xs)s::int[]) AS x

-- name: echo_text$
-- A text parameter.
SELECT %(value)s::text

-- name: echo_float$
-- A float parameter.
SELECT %(value)s::float8 * 2

-- name: echo_time$
-- A time parameter.
SELECT %(value)s::timestamptz

-- name: time_in_utc$
-- A time parameter, as PostgreSQL writes it in UTC.
SELECT (%(value)s::timestamptz AT TIME ZONE 'UTC')::text
""")

SAMPLE = {
    "id": 41, "name": "naïve ☃ 'quoted' \\ back", "flag": True, "at": datetime(2026, 11, 27, 6, 0, 1, 250, UTC),
    "ref": UUID("01a21bce-2bb6-7e73-ac26-f46d5defe91f"), "nothing": None,
}


@pytest.fixture
def connect(direct_conninfo):
    opened = []

    def open_(**kwargs):
        conn = psycopg.connect(direct_conninfo, **{"autocommit": True, **kwargs})
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        conn.close()


def ours(conn) -> set[str]:
    """The statements service.sql prepared on this connection (cs_ names)."""
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM pg_prepared_statements", prepare=False)
        return {name for (name,) in cur.fetchall() if name.startswith("cs_")}


def psycopgs(conn) -> set[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM pg_prepared_statements", prepare=False)
        return {name for (name,) in cur.fetchall() if name.startswith("_pg3_")}


@pytest.fixture
def rows_table(connect):
    conn = connect()
    conn.execute("CREATE TABLE runner_rows (id int PRIMARY KEY, x int NOT NULL)")
    conn.execute("INSERT INTO runner_rows SELECT g, 0 FROM generate_series(1, 5) AS g")
    return conn


def test_every_kind_gives_what_the_cursor_gives(connect, rows_table):
    conn = connect(prepare_threshold=0)
    cases = [
        (S["one_row"], SAMPLE),
        (S["no_row"], {"id": 3}),
        (S["rows"], {"n": 4}),
        (S["no_rows"], {"n": 4}),
        (S["a_value"], {"n": 21}),
        (S["no_value"], {"n": 21}),
        (S["bump"], {"n": 3}),
    ]
    for statement, params in cases:
        assert statement.run(conn, **params) == statement._run_on_cursor(conn, dict(params)), statement.name
    # every one of them went to libpq, prepared at once (threshold 0)
    assert ours(conn) == {f"cs_{statement.name}" for statement, _ in cases}

    row = S["one_row"].run(conn, **SAMPLE)
    assert row == {**SAMPLE, "doc": {"name": SAMPLE["name"]}, "modulo": 2, "next": 42}
    assert S["rows"].run(conn, n=3) == [{"n": 1, "label": "1"}, {"n": 2, "label": "2"}, {"n": 3, "label": "3"}]
    assert S["no_rows"].run(conn, n=3) == []
    assert S["no_row"].run(conn, id=1) is None
    assert S["a_value"].run(conn, n=4) == 8
    assert S["no_value"].run(conn, n=4) is None
    assert S["bump"].run(conn, n=2) == 2
    assert conn.execute("SELECT array_agg(x ORDER BY id) FROM runner_rows").fetchone()[0] == [3, 3, 2, 0, 0]


def test_prepared_after_the_connections_threshold_as_psycopg_does(connect):
    conn = connect(prepare_threshold=2)
    assert [S["a_value"].run(conn, n=n) for n in (1, 2)] == [2, 4]
    assert ours(conn) == set()
    assert S["a_value"].run(conn, n=3) == 6  # the third run prepares
    assert ours(conn) == {"cs_a_value"}
    assert S["a_value"].run(conn, n=4) == 8

    never = connect(prepare_threshold=None)  # behind a transaction pooler
    assert [S["a_value"].run(never, n=n) for n in range(10)] == [2 * n for n in range(10)]
    assert ours(never) == set()


def test_other_parameters_go_through_the_cursor(connect):
    conn = connect(prepare_threshold=0)
    naive = datetime(2026, 11, 27, 6, 0, 0)
    assert S["sum_array"].run(conn, xs=[1, 2, 3]) == 6
    assert S["echo_float"].run(conn, value=1.25) == 2.5
    conn.execute("SET TIME ZONE 'UTC'", prepare=False)
    assert S["echo_time"].run(conn, value=naive) == naive.replace(tzinfo=UTC)
    assert ours(conn) == set()
    assert len(psycopgs(conn)) == 3  # psycopg's own prepared statements

    # A NUL in a text value: psycopg's refusal, as before.
    with pytest.raises(psycopg.DataError, match="NUL"):
        S["echo_text"].run(conn, value="a\x00b")
    # A missing parameter: psycopg's error, not a KeyError of ours.
    with pytest.raises(psycopg.ProgrammingError):
        S["echo_text"].run(conn)
    assert ours(conn) == set()
    # An aware time and a plain string take the libpq way.
    aware = datetime(2026, 11, 27, 6, 0, 0, tzinfo=timezone(timedelta(hours=5)))
    assert S["echo_time"].run(conn, value=aware) == aware
    # Offsets PostgreSQL would not read (it stops at 15:59), sent in UTC...
    far = datetime(190, 4, 3, 23, 9, 47, 100000, tzinfo=timezone(-timedelta(hours=20, minutes=48)))
    assert S["echo_time"].run(conn, value=far) == far
    # ... unless UTC is past the last (or before the first) day Python has: the cursor's.
    edge = datetime(1, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=5)))
    assert S["time_in_utc"].run(conn, value=edge) == "0001-12-31 21:00:00 BC"
    assert "cs_time_in_utc" not in ours(conn)
    assert S["echo_text"].run(conn, value="plain") == "plain"
    assert ours(conn) == {"cs_echo_time", "cs_echo_text"}


def test_errors_are_psycopgs_and_leave_the_connection_usable(connect):
    conn = connect(prepare_threshold=0)
    with pytest.raises(errors.DivisionByZero):
        S["divide"].run(conn, d=0)
    assert S["divide"].run(conn, d=1) == 1

    # A statement that cannot be prepared yet is not taken for prepared.
    with pytest.raises(errors.UndefinedTable):
        S["late_table"].run(conn, any=True)
    assert ours(conn) == {"cs_divide"}
    conn.execute("CREATE TABLE runner_late (id int)")
    assert S["late_table"].run(conn, any=True) == 0
    assert ours(conn) == {"cs_divide", "cs_late_table"}

    never = connect(prepare_threshold=None)
    with pytest.raises(errors.DivisionByZero):
        S["divide"].run(never, d=0)
    assert S["divide"].run(never, d=2) == 0


def test_transactions_are_shared_with_psycopg(connect, rows_table):
    # Not in autocommit and idle: psycopg's cursor opens the transaction...
    conn = connect(autocommit=False, prepare_threshold=0)
    assert S["add_row"].run(conn, id=10) == 1
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert ours(conn) == set()
    assert len(psycopgs(conn)) == 1
    # ... then, inside it, libpq (unnamed: no statement prepared by either) sees
    # the row the transaction added.
    assert S["count_rows"].run(conn, any=True) == 6
    assert ours(conn) == set() and len(psycopgs(conn)) == 1
    conn.rollback()
    assert S["count_rows"].run(conn, any=True) == 5
    conn.rollback()

    # In autocommit, psycopg's transaction() block holds libpq's statements too.
    auto = connect(prepare_threshold=0)
    with pytest.raises(RuntimeError), auto.transaction():
        assert S["add_row"].run(auto, id=11) == 1
        assert S["count_rows"].run(auto, any=True) == 6
        raise RuntimeError("roll back")
    assert S["count_rows"].run(auto, any=True) == 5


def test_a_connection_not_in_utf8_takes_the_cursor(connect):
    conn = connect(prepare_threshold=0, client_encoding="LATIN1")
    assert S["echo_text"].run(conn, value="café") == "café"
    assert ours(conn) == set()


def test_a_closed_connection_fails_as_psycopg_says_and_its_session_lets_it_go(direct_conninfo):
    conn = psycopg.connect(direct_conninfo, autocommit=True)
    assert S["a_value"].run(conn, n=1) == 2
    assert conn in sql._sessions
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        S["a_value"].run(conn, n=1)
    gone = weakref.ref(conn)
    del conn
    gc.collect()
    assert gone() is None  # the session did not keep it alive


def test_prepared_again_after_psycopg_deallocates_everything(connect, rows_table):
    conn = connect(prepare_threshold=0)
    assert S["a_value"].run(conn, n=1) == 2
    assert S["bump"].run(conn, n=1) == 1
    assert S["sum_array"].run(conn, xs=[1]) == 1  # psycopg prepares one of its own
    assert ours(conn) == {"cs_a_value", "cs_bump"} and psycopgs(conn)
    # A rollback makes psycopg run DEALLOCATE ALL: ours go too.
    with pytest.raises(RuntimeError), conn.transaction():
        raise RuntimeError("roll back")
    assert ours(conn) == set() and not psycopgs(conn)

    # In a transaction, unnamed: a missing statement would abort it.
    with conn.transaction():
        assert S["a_value"].run(conn, n=2) == 4
        assert S["bump"].run(conn, n=2) == 2
    assert ours(conn) == set()
    # Outside one, the missing statement is prepared again and run once.
    assert S["bump"].run(conn, n=5) == 5
    assert ours(conn) == {"cs_bump"}
    assert conn.execute("SELECT array_agg(x ORDER BY id) FROM runner_rows").fetchone()[0] == [3, 2, 1, 1, 1]
    # Another one whose name the session forgot with the rest but that is still
    # prepared (only a DEALLOCATE of one name could do that) is taken as it is.
    conn.execute("PREPARE cs_a_value AS SELECT $1::int * 2", prepare=False)
    assert S["a_value"].run(conn, n=3) == 6
    assert ours(conn) == {"cs_a_value", "cs_bump"}
    assert S["a_value"].run(conn, n=4) == 8
