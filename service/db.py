"""The connection pool of one process, and the boundary that turns database
failures into the service's own errors.

Create a Database closed, open it in the process that uses it (a gunicorn worker,
after fork), close it on exit. Every connection gets pgvector registered, the
statement timeout set and JSON loaded as raw orjson fragments (metadata goes back
to clients without being parsed and re-serialized).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import psycopg
from pgvector.psycopg import register_vector
from psycopg import errors as pg_errors
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from .config import Settings
from .errors import Unavailable
from .sql import QUERIES

log = logging.getLogger("context_store")


_SHUTDOWN = {"57P01", "57P02", "57P03"}


def _raw_json(data: bytes | str) -> orjson.Fragment:
    return orjson.Fragment(data)


class Database:
    """One psycopg_pool.ConnectionPool plus error translation."""

    def __init__(self, settings: Settings, conninfo: str) -> None:
        self.settings = settings
        self._returned: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()
        self.pool = ConnectionPool(
            conninfo,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.pool_timeout,
            open=False,
            check=self._check if settings.pool_check else None,
            configure=self._configure,
            reset=self._note_return,
            kwargs={
                # Every request runs one statement: autocommit spares the BEGIN and
                # COMMIT round trips. Requests that need more open a transaction.
                "autocommit": True,
                "prepare_threshold": settings.prepare_threshold,
                "connect_timeout": settings.connect_timeout,
                "application_name": "context-store",
            },
            name="context-store",
        )

    def _configure(self, conn: psycopg.Connection) -> None:
        register_vector(conn)
        set_json_loads(_raw_json, conn)
        QUERIES.configure_session.run(conn, statement_timeout=f"{self.settings.statement_timeout_ms}ms")
        self._note_return(conn)

    def _note_return(self, conn: psycopg.Connection) -> None:
        self._returned[conn] = time.monotonic()

    def _check(self, conn: psycopg.Connection) -> None:
        """Check a connection before lending it, but only one that sat idle: a busy
        connection proved itself a moment ago, and a check is a round trip. After
        a database restart, idle connections are replaced before any request
        sees them."""
        if time.monotonic() - self._returned.get(conn, 0.0) >= self.settings.pool_check_idle:
            ConnectionPool.check_connection(conn)

    def open(self) -> None:
        self.pool.open(wait=False)

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A pooled connection in autocommit mode (wrap several statements in
        `conn.transaction()` when they must commit together).

        Raise Unavailable when no connection comes within the pool time-out, the
        connection breaks, or a statement runs past the statement timeout.
        """
        try:
            with self.pool.connection(timeout=timeout) as conn:
                yield conn
        except PoolTimeout as exc:
            raise Unavailable("The database is unavailable: no connection within the pool time-out.") from exc
        except pg_errors.QueryCanceled as exc:
            raise Unavailable("The database did not answer within the statement timeout.") from exc
        except psycopg.InterfaceError as exc:
            raise Unavailable("The database connection failed.") from exc
        except psycopg.OperationalError as exc:
            # Only what a retry can cure: a lost or refused connection (no SQLSTATE,
            # class 08) or a server shutting down (57P01-57P03). Anything else
            # (say 54001, statement too complex) is the request's, not the database's.
            if exc.sqlstate is None or exc.sqlstate.startswith("08") or exc.sqlstate in _SHUTDOWN:
                raise Unavailable("The database connection failed.") from exc
            raise
