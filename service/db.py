"""The connection pool of one process, and the boundary that turns database
failures into the service's own errors.

Create a Database closed, open it in the process that uses it (a gunicorn worker,
after fork), close it on exit. Every connection gets pgvector registered, the
statement timeout set (behind a transaction pooler, DB_POOLER, the role's own
settings stand instead) and JSON loaded as raw orjson fragments (metadata goes
back to clients without being parsed and re-serialized).

Outages. psycopg_pool, left alone, makes every request of an outage wait the pool
time-out, and after a restart backs off 1, 2, 4 s between checks of the dead
connections it still holds. So once a connection fails here (a request's, a
check's, or one the pool tried to open) the Database probes the server with one
direct connection: if it answers, the pool is replaced by a fresh one and the
request retries on it (when nothing was sent yet); if not, the Database is *down*.
While down, requests fail at once, and at most one of them at a time, no more
often than every DB_PROBE_INTERVAL_MS, probes again; the first probe that
connects brings a fresh pool in, so no request meets a connection from before.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import psycopg
from pgvector.psycopg import register_vector
from psycopg import errors as pg_errors
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from .config import Settings
from .errors import Misconfigured, Unavailable
from .sql import QUERIES

if TYPE_CHECKING:
    from .replicas import Replicas

log = logging.getLogger("context_store")
T = TypeVar("T")


# The server ended the session: shutting down (57P01-57P03) or the session sat idle
# past idle_session_timeout (57P05). A new connection cures either.
_SHUTDOWN = {"57P01", "57P02", "57P03", "57P05"}
# Class 08, but on a connection still open it is no outage: the server got a
# message it cannot match, which a working connection only sends when something
# between (a transaction-mode pooler lending it another client's prepared
# statements) mixes sessions. PgBouncer also closes connections with 08P01 (its
# query_wait_timeout, a server it cannot reach): those are outages.
_PROTOCOL_VIOLATION = "08P01"


class DatabaseMisconfigured(Misconfigured):
    """The database answered, but the way the service reaches it is wrong (a
    transaction-mode pooler with DB_POOLER unset): a retry cannot cure it, so it
    is a server error (500), not an outage (503)."""


# libpq rounds any connect_timeout below 2 s up to 2 s. A local server that is
# down refuses at once; the bound only matters for an unreachable remote host.
_PROBE_CONNECT_TIMEOUT = 2


def _raw_json(data: bytes | str) -> orjson.Fragment:
    return orjson.Fragment(data)


def is_connection_error(exc: BaseException) -> bool:
    """Whether exc says the server or the connection to it is gone, which a retry
    on a new connection can cure: a lost or refused connection (no SQLSTATE,
    class 08), a server shutting down or starting (57P01-57P03), or a connection
    psycopg already knows to be closed."""
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        sqlstate = exc.sqlstate
        return sqlstate is None or sqlstate.startswith("08") or sqlstate in _SHUTDOWN
    return False


# Connection strings and socket paths in psycopg's messages: a server's address
# is the operator's business, not every log reader's.
_REDACTIONS = (
    (re.compile(r"postgres(?:ql)?://\S+"), "postgresql://[redacted]"),
    (re.compile(r'(socket|server at|server on socket) "[^"]*"'), r'\1 "[redacted]"'),
    (re.compile(r"\b(password|host|hostaddr|user|dbname|port)=\S+"), r"\1=[redacted]"),
    (re.compile(r"\(\d{1,3}(?:\.\d{1,3}){3}\)|\([0-9a-fA-F:]*:[0-9a-fA-F:]*\)"), "([redacted])"),
)


def redact(text: str) -> str:
    """text without connection strings, socket paths, host addresses or credentials."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message through redact(); installed on psycopg's loggers,
    whose pool warnings quote the failed connection attempt's address."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler to report
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction() -> None:
    """Redact psycopg's and psycopg_pool's log records (idempotent)."""
    # A logger's filters see only the records logged through it, not its children's.
    for name in ("psycopg", "psycopg.pool", "psycopg.transaction"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


@dataclass(frozen=True)
class Availability:
    """What this process last learned about its database.

    up: False from a failed connection until a probe connects again.
    down_for: seconds since it went down (None while up).
    """

    up: bool
    down_for: float | None


class Database:
    """One psycopg_pool.ConnectionPool (replaced after an outage) plus error translation."""

    def __init__(self, settings: Settings, conninfo: str, *, label: str = "database",
                 replica_urls: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.label = label  # what log lines call this server
        # What requests meet while it is down: a replica's reads go to the primary.
        self._while_down = "failing requests fast" if label == "database" else "reading from the primary"
        self._returned: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()  # guards the fields below
        self._probe_lock = threading.Lock()  # one probe at a time
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._closed = False
        self._retired: list[threading.Thread] = []
        # The connection of the transaction() a thread is in, if any.
        self._bound: contextvars.ContextVar[psycopg.Connection | None] = contextvars.ContextVar(
            f"transaction-{id(self)}", default=None
        )
        install_log_redaction()
        self.pool = self._new_pool()
        self.replicas: Replicas | None = None
        if replica_urls:
            from .replicas import Replicas  # it builds a Database per replica

            self.replicas = Replicas(settings, self, replica_urls)

    # --- the pool ---------------------------------------------------------------

    def _new_pool(self) -> ConnectionPool:
        database = self
        owner: list[ConnectionPool] = []

        class Connection(psycopg.Connection):  # type: ignore[type-arg]
            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> Any:
                # The pool's own attempts (filling, growing, replacing) run in its
                # worker threads; a refused one must put the requests on the fast path
                # instead of leaving them to wait the pool time-out.
                try:
                    return super().connect(*args, **kwargs)
                except Exception as exc:
                    if is_connection_error(exc) and owner:
                        database._went_down(exc, owner[0])
                    raise

        pool = ConnectionPool(
            self.conninfo,
            connection_class=Connection,
            min_size=self.settings.pool_min_size,
            max_size=self.settings.pool_max_size,
            timeout=self.settings.pool_timeout,
            open=False,
            # The check is done in _acquire, not by the pool: a failed check makes
            # the pool sleep 1, 2, 4 s before trying its next connection.
            check=None,
            configure=self._configure,
            # No reset callback: with one, psycopg_pool hands every returned
            # connection to one of its threads (a queue put and a wake-up per
            # request, measured 40-340 us); connection() notes the return itself.
            kwargs={
                # Every request runs one statement: autocommit spares the BEGIN and
                # COMMIT round trips. Requests that need more open a transaction.
                "autocommit": True,
                # Behind a transaction pooler a prepared statement would be looked
                # up on whichever server connection the next transaction is lent.
                "prepare_threshold": (
                    None if self.settings.behind_transaction_pooler else self.settings.prepare_threshold
                ),
                "connect_timeout": self.settings.connect_timeout,
                "application_name": "context-store",
            },
            name="context-store",
        )
        owner.append(pool)
        return pool

    def _configure(self, conn: psycopg.Connection) -> None:
        register_vector(conn)
        set_json_loads(_raw_json, conn)
        # Behind a transaction pooler a session setting would stay on the server
        # connection lent for this statement and reach other clients; there the
        # role's settings (checked at start, runtime.check_pooler_session) hold them.
        if not self.settings.behind_transaction_pooler:
            QUERIES.configure_session.run(conn, statement_timeout=f"{self.settings.statement_timeout_ms}ms")
        self._note_return(conn)

    def _note_return(self, conn: psycopg.Connection) -> None:
        self._returned[conn] = time.monotonic()

    def _needs_check(self, conn: psycopg.Connection) -> bool:
        """Only a connection that sat idle is checked: a busy one proved itself a
        moment ago, and a check is a round trip."""
        if not self.settings.pool_check:
            return False
        return time.monotonic() - self._returned.get(conn, 0.0) >= self.settings.pool_check_idle

    def _retire(self, pool: ConnectionPool) -> None:
        """Close pool in the background: closing waits for its worker threads, and
        the caller may be one of them. Connections still lent out are closed when
        given back."""
        thread = threading.Thread(target=pool.close, kwargs={"timeout": 2.0}, name="retire-pool", daemon=True)
        thread.start()
        with self._lock:
            self._retired = [t for t in self._retired if t.is_alive()] + [thread]

    def _replace_pool(self) -> ConnectionPool:
        """A fresh, opened pool in place of the current one (retired)."""
        fresh = self._new_pool()
        fresh.open(wait=False)
        with self._lock:
            closed = self._closed
            if not closed:
                old, self.pool = self.pool, fresh
                self._down_since = None
        if closed:  # close() ran meanwhile: the fresh pool must not outlive it
            fresh.close()
            raise Unavailable("The database is unavailable: the service is shutting down.")
        self._retire(old)
        return fresh

    # --- down and up ------------------------------------------------------------

    def _went_down(self, exc: BaseException, pool: ConnectionPool | None = None) -> None:
        """Enter (or stay in) the down state; retire the pool so that nothing waits
        on its backed-off reconnection attempts. A failure in `pool` counts only
        while it is the current one (a retired pool's last attempts do not)."""
        with self._lock:
            if self._closed or (pool is not None and pool is not self.pool):
                return
            now = time.monotonic()
            first = self._down_since is None
            if first:
                self._down_since = now
            self._next_probe = now + self.settings.probe_interval_ms / 1000
            pool = self.pool
        if first:
            log.warning("%s unavailable (%s); %s until it answers", self.label, _describe(exc), self._while_down)
            self._retire(pool)

    def _probe(self) -> BaseException | None:
        """One direct connection attempt: None when the server answered, else why not."""
        try:
            with psycopg.connect(self.conninfo, connect_timeout=_PROBE_CONNECT_TIMEOUT, autocommit=True):
                return None
        except psycopg.Error as exc:
            return exc

    def _recover(self, failed: ConnectionPool) -> bool:
        """After a connection from `failed` broke: probe; replace the pool when the
        server answers (True: retry on it), else go down (False)."""
        with self._probe_lock:
            with self._lock:
                if self._closed:
                    return False
                if self.pool is not failed:  # another request already replaced it
                    return self._down_since is None
            exc = self._probe()
            if exc is None:
                log.warning("%s connections were lost; replacing the pool", self.label)
                self._replace_pool()
                return True
        self._went_down(exc, failed)
        return False

    def _usable_pool(self) -> ConnectionPool:
        """The pool to take a connection from; raise Unavailable at once while down,
        except for the one request whose turn it is to probe."""
        with self._lock:
            if self._closed:
                raise Unavailable("The database is unavailable: the service is shutting down.")
            if self._down_since is None:
                return self.pool
            if time.monotonic() < self._next_probe:
                raise Unavailable("The database is unavailable.")
        if not self._probe_lock.acquire(blocking=False):
            raise Unavailable("The database is unavailable.")
        try:
            with self._lock:
                if self._down_since is None:  # a probe just succeeded
                    return self.pool
            exc = self._probe()
            if exc is None:
                log.warning("%s available again after %.1f s", self.label, self._down_for() or 0.0)
                return self._replace_pool()
        finally:
            self._probe_lock.release()
        self._went_down(exc)
        raise Unavailable("The database is unavailable.")

    def _down_for(self) -> float | None:
        since = self._down_since
        return None if since is None else time.monotonic() - since

    @property
    def availability(self) -> Availability:
        """This process's view of the database, without a round trip (for /health
        and metrics): down from a failed connection until a probe connects."""
        down_for = self._down_for()
        return Availability(up=down_for is None, down_for=down_for)

    # --- lifecycle ----------------------------------------------------------------

    def open(self, wait: bool = False) -> None:
        self.pool.open(wait=wait)
        if self.replicas is not None:
            self.replicas.open()

    def close(self) -> None:
        if self.replicas is not None:
            self.replicas.close()
        with self._lock:
            self._closed = True
            pool = self.pool
        pool.close()
        with self._lock:
            retired = list(self._retired)
        for thread in retired:
            thread.join(5.0)

    # --- requests -------------------------------------------------------------------

    def _acquire(self, timeout: float | None) -> tuple[ConnectionPool, psycopg.Connection]:
        # Twice at most: a dead idle connection found by the check costs one retry on
        # a fresh pool, since no statement of the request was sent on it.
        for attempt in range(2):
            pool = self._usable_pool()
            try:
                conn = pool.getconn(timeout=timeout)
            except PoolClosed as exc:  # retired between _usable_pool and here
                raise Unavailable("The database is unavailable.") from exc
            except PoolTimeout as exc:
                if self._down_since is not None:
                    raise Unavailable("The database is unavailable.") from exc
                raise Unavailable(
                    "The database is unavailable: no connection within the pool time-out."
                ) from exc
            if not self._needs_check(conn):
                return pool, conn
            try:
                ConnectionPool.check_connection(conn)
            except Exception as exc:  # a check is an empty query: what fails is the connection
                pool.putconn(conn)
                if attempt == 1 or not self._recover(pool):
                    raise Unavailable("The database connection failed.") from exc
                continue
            return pool, conn
        raise AssertionError("unreachable")  # pragma: no cover

    def _misconfigured(self, conn: psycopg.Connection, exc: psycopg.Error) -> None:
        """Log the protocol violation on a live connection as the configuration
        error it is and raise DatabaseMisconfigured; close the connection, whose
        prepared statements no longer match its server's, so it is not lent again."""
        conn.close()
        log.error(
            "the database rejected a message on a working connection (SQLSTATE 08P01: %s): a transaction-mode "
            "pooler such as PgBouncer between the service and PostgreSQL? set DB_POOLER=pgbouncer-transaction",
            _describe_message(exc),
        )
        raise DatabaseMisconfigured("the database rejected a message on a working connection (SQLSTATE 08P01)") from exc

    def read(self, statements: Callable[[psycopg.Connection], T]) -> T:
        """statements(conn) on a replica when the deployment has them and one is
        fresh enough for this request (service/replicas.py), else on the primary;
        inside `transaction()`, on that transaction's connection. Only reads: a
        replica refuses writes, and a replica's failure runs them again on the
        primary."""
        if self.replicas is not None and self._bound.get() is None:
            return self.replicas.run(statements)
        with self.connection() as conn:
            return statements(conn)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A connection in a transaction that every `connection()` of this thread
        (or task) joins until the block ends: store methods called inside commit
        together, or not at all when the block raises."""
        with self.connection() as conn, conn.transaction():
            token = self._bound.set(conn)
            try:
                yield conn
            finally:
                self._bound.reset(token)

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A pooled connection in autocommit mode (wrap several statements in
        `conn.transaction()` when they must commit together); inside
        `transaction()`, that transaction's connection.

        Raise Unavailable when no connection comes within the pool time-out, the
        connection breaks, or a statement runs past the statement timeout; and at
        once, without waiting, while the database is known to be down.
        """
        bound = self._bound.get()
        if bound is not None:
            yield bound
            return
        pool, conn = self._acquire(timeout)
        try:
            with conn:
                yield conn
        except pg_errors.QueryCanceled as exc:
            raise Unavailable("The database did not answer within the statement timeout.") from exc
        except (psycopg.InterfaceError, psycopg.OperationalError) as exc:
            if exc.sqlstate == _PROTOCOL_VIOLATION and not conn.broken:
                self._misconfigured(conn, exc)
            # Only what a retry can cure; anything else (say 54001, statement too
            # complex) is the request's, not the database's.
            if not is_connection_error(exc):
                raise
            # The request itself is not retried: a write may have committed.
            self._recover(pool)
            raise Unavailable("The database connection failed.") from exc
        finally:
            self._note_return(conn)
            pool.putconn(conn)


def _describe_message(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0]) if text else type(exc).__name__


def _describe(exc: BaseException) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(f"{sqlstate}: {first_line}" if sqlstate else first_line)


def failure_reason(exc: psycopg.Error) -> str:
    """libpq's reason, first line, without the address it already named (display
    only: connection failures carry no SQLSTATE to decide anything by)."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    first = first.rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
    return redact(" ".join(first.split()))
