"""Keys against the real database, the `context-store keys` commands as an
operator runs them, and the start-up refusal to serve open on a reachable address
(the check itself, and real gunicorn bound through GUNICORN_CMD_ARGS)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import psycopg
import pytest
from support import database_url

from service.auth import open_access_refusal
from service.config import Settings
from service.errors import Invalid, NotFound
from service.queries.keys import Keys, hash_key, is_well_formed, keys_exist


@pytest.fixture
def keys(db) -> Keys:
    return Keys(db)


def _row(postgresql, key_id):
    return postgresql.execute(
        "SELECT tenant, name, secret_hash, prefix, last_used_at, revoked_at FROM api_keys WHERE id = %s", [key_id]
    ).fetchone()


# --- Keys ---------------------------------------------------------------------


def test_create_stores_only_the_hash_of_the_key_it_returns(keys, postgresql):
    created = keys.create("acme", "ci runner")
    assert is_well_formed(created.key)
    assert (created.tenant, created.name) == ("acme", "ci runner")
    assert created.key.startswith(created.prefix) and len(created.prefix) < 16
    tenant, name, secret_hash, prefix, last_used_at, revoked_at = _row(postgresql, created.id)
    assert (tenant, name, prefix, last_used_at, revoked_at) == ("acme", "ci runner", created.prefix, None, None)
    assert bytes(secret_hash) == hashlib.sha256(created.key.encode()).digest()
    dump = str(postgresql.execute("SELECT array_agg(k::text) FROM api_keys AS k").fetchone()[0])
    assert created.key not in dump and created.key[len(created.prefix) :] not in dump


def test_create_refuses_a_bad_tenant_or_name_naming_it(keys, postgresql):
    with pytest.raises(Invalid) as info:
        keys.create("no spaces")
    assert info.value.errors[0]["parameter"] == "tenant"
    with pytest.raises(Invalid) as info:
        keys.create("acme", "line\nbreak")
    assert info.value.errors[0]["parameter"] == "name"
    with pytest.raises(Invalid):
        keys.create("acme", "")
    assert postgresql.execute("SELECT count(*) FROM api_keys").fetchone() == (0,)


def test_the_database_holds_tenants_to_the_same_rule(postgresql):
    with pytest.raises(psycopg.errors.CheckViolation):
        postgresql.execute(
            "INSERT INTO api_keys (id, tenant, secret_hash, prefix) VALUES (%s, 'a b', %s, 'csk_x')",
            [uuid.uuid4(), b"\0" * 32],
        )


def test_lookup_answers_the_tenant_of_a_live_key_only(keys):
    acme = keys.create("acme")
    globex = keys.create("globex")
    assert keys.lookup(hash_key(acme.key)) == "acme"
    assert keys.lookup(hash_key(globex.key)) == "globex"
    assert keys.lookup(hashlib.sha256(b"csk_unknown").digest()) is None
    keys.revoke(acme.id)
    assert keys.lookup(hash_key(acme.key)) is None
    assert keys.lookup(hash_key(globex.key)) == "globex"


def test_lookup_notes_the_use_at_most_once_a_minute(keys, postgresql):
    created = keys.create("acme")
    assert keys.lookup(hash_key(created.key)) == "acme"
    first = _row(postgresql, created.id)[4]
    assert first is not None
    keys.lookup(hash_key(created.key))
    assert _row(postgresql, created.id)[4] == first
    # Fifty-nine seconds on, still not rewritten; past the minute, it is.
    postgresql.execute("UPDATE api_keys SET last_used_at = now() - interval '59 seconds' WHERE id = %s", [created.id])
    postgresql.commit()
    before = _row(postgresql, created.id)[4]
    keys.lookup(hash_key(created.key))
    assert _row(postgresql, created.id)[4] == before
    postgresql.execute("UPDATE api_keys SET last_used_at = now() - interval '61 seconds' WHERE id = %s", [created.id])
    postgresql.commit()
    stale = _row(postgresql, created.id)[4]
    keys.lookup(hash_key(created.key))
    assert _row(postgresql, created.id)[4] > stale


def test_a_revoked_key_is_not_noted_as_used(keys, postgresql):
    created = keys.create("acme")
    keys.revoke(created.id)
    assert keys.lookup(hash_key(created.key)) is None
    assert _row(postgresql, created.id)[4] is None


def test_revoke_keeps_the_first_revocation_and_says_when_it_already_was(keys):
    created = keys.create("acme")
    first = keys.revoke(created.id)
    assert first["was_revoked"] is False and first["revoked_at"] is not None
    again = keys.revoke(created.id)
    assert again["was_revoked"] is True
    assert again["revoked_at"] == first["revoked_at"]


def test_revoking_an_unknown_id_is_not_found(keys):
    missing = uuid.uuid4()
    with pytest.raises(NotFound, match=str(missing)):
        keys.revoke(missing)


def test_list_shows_every_key_or_one_tenants_oldest_first(keys):
    a1 = keys.create("acme", "one")
    g1 = keys.create("globex")
    a2 = keys.create("acme", "two")
    keys.revoke(a1.id)
    rows = keys.list()
    assert [r["id"] for r in rows] == [a1.id, a2.id, g1.id]
    assert [r["id"] for r in keys.list("acme")] == [a1.id, a2.id]
    assert keys.list("nobody") == []
    with pytest.raises(Invalid):
        keys.list("not a tenant")
    first = rows[0]
    assert set(first) == {"id", "tenant", "name", "prefix", "created_at", "last_used_at", "revoked_at"}
    assert first["revoked_at"] is not None and rows[1]["revoked_at"] is None


def test_any_active_follows_creation_and_revocation(keys):
    assert keys.any_active() is False
    created = keys.create("acme")
    assert keys.any_active() is True
    keys.revoke(created.id)
    assert keys.any_active() is False


def test_keys_exist_reads_over_a_direct_connection(keys, conninfo):
    assert keys_exist(conninfo) is False
    keys.create("acme")
    assert keys_exist(conninfo) is True


def test_a_database_not_yet_migrated_has_no_keys(empty_database):
    assert keys_exist(empty_database.url) is False


# --- the start-up check of the listeners -------------------------------------


class Listener:
    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, 0))

    def __str__(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"


@pytest.fixture
def public():
    listener = Listener("0.0.0.0")
    yield listener
    listener.sock.close()


@pytest.fixture
def loopback():
    listener = Listener("127.0.0.1")
    yield listener
    listener.sock.close()


def test_without_keys_a_reachable_listener_is_refused_saying_how_to_go_on(conninfo, public, loopback):
    refusal = open_access_refusal(Settings(), conninfo, [loopback, public])
    assert refusal is not None and "\n" not in refusal
    assert str(public) in refusal and str(loopback) not in refusal
    assert "context-store keys create --tenant" in refusal
    assert "ALLOW_OPEN_ACCESS=true" in refusal


def test_without_keys_loopback_serves_open_with_a_warning_naming_the_listener(conninfo, loopback, caplog):
    with caplog.at_level(logging.INFO, logger="context_store"):
        assert open_access_refusal(Settings(), conninfo, [loopback]) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "authentication is disabled" in warnings[0] and str(loopback) in warnings[0]


def test_allow_open_access_lets_a_reachable_listener_serve_open(conninfo, public, caplog):
    with caplog.at_level(logging.INFO, logger="context_store"):
        assert open_access_refusal(Settings(allow_open_access=True), conninfo, [public]) is None
    assert any("authentication is disabled" in r.getMessage() and str(public) in r.getMessage() for r in caplog.records)


def test_with_a_key_any_listener_is_fine(keys, conninfo, public, caplog):
    keys.create("acme")
    with caplog.at_level(logging.INFO, logger="context_store"):
        assert open_access_refusal(Settings(), conninfo, [public]) is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("API keys are required" in r.getMessage() for r in caplog.records)


def test_configured_addresses_stand_in_for_listeners(conninfo):
    assert open_access_refusal(Settings(), conninfo, [("0.0.0.0", 8000)]) is not None
    assert open_access_refusal(Settings(), conninfo, [("127.0.0.1", 8000)]) is None


def test_an_unreachable_database_refuses_a_reachable_listener_but_not_loopback(tmp_path, public, loopback, caplog):
    nowhere = f"host={tmp_path / 'no-socket-here'} port=1 dbname=x user=x connect_timeout=1"
    refusal = open_access_refusal(Settings(connect_timeout=1), nowhere, [public])
    assert refusal is not None and "cannot tell whether API keys exist" in refusal and "\n" not in refusal
    with caplog.at_level(logging.WARNING, logger="context_store"):
        assert open_access_refusal(Settings(connect_timeout=1), nowhere, [loopback]) is None
    assert any("could not check for API keys" in r.getMessage() for r in caplog.records)


# --- the CLI, as a subprocess -------------------------------------------------


@pytest.fixture
def url(postgresql) -> str:
    info = postgresql.info
    return database_url(info.host, info.port, info.user, info.password, info.dbname)


def _cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "GUNICORN_", "HOST", "PORT"))}
    environ.update({"DATABASE_URL": url, "LOG_LEVEL": "warning", **env})
    return subprocess.run(
        [sys.executable, "-m", "service", *args], env=environ, capture_output=True, text=True, timeout=60
    )


def test_cli_creates_lists_and_revokes_keys(url, keys):
    made = _cli(url, "keys", "create", "--tenant", "acme", "--name", "ci runner")
    assert made.returncode == 0, made.stderr
    fields = dict(line.split(": ", 1) for line in made.stdout.splitlines())
    assert set(fields) == {"id", "tenant", "name", "key"}
    assert (fields["tenant"], fields["name"]) == ("acme", "ci runner")
    assert is_well_formed(fields["key"])
    assert "only this once" in made.stderr
    assert keys.lookup(hash_key(fields["key"])) == "acme"  # marks it used

    other = _cli(url, "keys", "create", "--tenant", "globex")
    assert other.returncode == 0, other.stderr

    # HOST as a platform sets it for every process, one-off ones included.
    listed = _cli(url, "keys", "list", HOST="0.0.0.0")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["ID", "TENANT", "NAME", "KEY", "CREATED", "LAST USED", "REVOKED"]
    assert len(lines) == 3
    acme = re.split(r"\s{2,}", lines[1])
    assert acme[:3] == [fields["id"], "acme", "ci runner"]
    assert acme[3].endswith("...") and fields["key"].startswith(acme[3][:-3]) and fields["key"] not in listed.stdout
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\dZ", acme[4]) and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\dZ", acme[5])
    assert acme[6] == "-"
    assert re.split(r"\s{2,}", lines[2])[1:6:4] == ["globex", "-"]  # never used

    only = _cli(url, "keys", "list", "--tenant", "globex")
    assert [re.split(r"\s{2,}", line)[1] for line in only.stdout.splitlines()[1:]] == ["globex"]

    revoked = _cli(url, "keys", "revoke", fields["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"{fields['id']} (tenant acme) revoked at ")
    assert keys.lookup(hash_key(fields["key"])) is None
    again = _cli(url, "keys", "revoke", fields["id"])
    assert again.returncode == 0 and "was already revoked" in again.stdout
    assert re.split(r"\s{2,}", _cli(url, "keys", "list", "--tenant", "acme").stdout.splitlines()[1])[6] != "-"


@pytest.mark.parametrize(
    ("args", "code", "names"),
    [
        (["keys", "create", "--tenant", "a b"], 2, "--tenant"),
        (["keys", "create", "--tenant", "acme", "--name", "x" * 201], 2, "--name"),
        (["keys", "list", "--tenant", "a/b"], 2, "--tenant"),
        (["keys", "revoke", "not-a-uuid"], 2, "KEY_ID"),
        (["keys", "revoke", "0190a5b4-0000-7000-8000-000000000000"], 1, "0190a5b4-0000-7000-8000-000000000000"),
    ],
)
def test_cli_errors_are_one_line_with_a_non_zero_exit(url, args, code, names):
    done = _cli(url, *args)
    assert done.returncode == code
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("context-store: ") and names in lines[0]


def test_cli_on_a_database_not_yet_migrated_says_to_migrate(empty_database):
    done = _cli(empty_database.url, "keys", "list")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "context-store: the database has no api_keys table yet: run `context-store migrate` first"
    ]


def test_cli_with_an_unreachable_database_fails_in_one_line(tmp_path):
    nowhere = f"postgresql://u:hunter2@/x?host={tmp_path / 'none'}&port=1"
    done = _cli(nowhere, "keys", "list", DB_POOL_TIMEOUT="1", DB_CONNECT_TIMEOUT="1")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "unavailable" in lines[0]
    assert "hunter2" not in done.stderr


# --- real gunicorn: the bind however given ----------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(url: str, port: int) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "GUNICORN_", "HOST", "PORT"))}
    environ.update(
        {
            "DATABASE_URL": url,
            "WEB_CONCURRENCY": "1",
            "GUNICORN_THREADS": "2",
            "MIGRATE_ON_START": "false",
            "LOG_LEVEL": "info",
            # HOST stays loopback: the public bind comes in behind its back.
            "GUNICORN_CMD_ARGS": f"--bind 0.0.0.0:{port}",
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "service", "serve"], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )


def test_serve_refuses_a_public_bind_from_gunicorn_cmd_args_without_keys(url):
    port = _free_port()
    proc = _serve(url, port)
    try:
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the refusal failed
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, err
    refusals = [line for line in err.splitlines() if "no API keys exist" in line]
    assert len(refusals) == 1, err
    assert f"0.0.0.0:{port}" in refusals[0] and "context-store keys create --tenant" in refusals[0]
    assert "Booting worker" not in err


def test_serve_accepts_a_public_bind_once_a_key_exists(url, keys):
    created = keys.create("acme")
    port = _free_port()
    proc = _serve(url, port)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    status = resp.status
                    break
            except OSError:
                time.sleep(0.2)
        assert status == 200, proc.poll()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert "API keys are required on /v1" in err and f"0.0.0.0:{port}" in err
    assert "no API keys exist" not in err
    assert created.key not in err
