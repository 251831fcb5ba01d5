"""API key format and hash, Authorization parsing, and which listeners count as
reachable from this machine only (no database)."""

from __future__ import annotations

import base64
import hashlib
import socket

import pytest

from service.auth import Authenticator, bearer_credential, describe, guarded, is_local
from service.errors import Invalid
from service.queries.keys import KEY_PREFIX, check_tenant, hash_key, is_well_formed, new_key

# --- key format and hash ------------------------------------------------------


def test_a_new_key_is_the_prefix_and_256_random_bits_in_url_safe_base64():
    key = new_key()
    assert key.startswith("csk_") and KEY_PREFIX == "csk_"
    body = key[len("csk_") :]
    assert len(body) == 43
    assert len(base64.urlsafe_b64decode(body + "=")) == 32
    assert is_well_formed(key)


def test_new_keys_differ():
    assert len({new_key() for _ in range(1000)}) == 1000


def test_the_hash_is_sha256_of_the_whole_key():
    key = new_key()
    assert hash_key(key) == hashlib.sha256(key.encode()).digest()
    assert len(hash_key(key)) == 32
    assert hash_key(key) != hash_key(key[:-1] + ("A" if key[-1] != "A" else "B"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "csk_",
        "csk_" + "a" * 42,
        "csk_" + "a" * 44,
        "CSK_" + "a" * 43,
        "sk_" + "a" * 44,
        "csk_" + "a" * 42 + "+",
        "csk_" + "a" * 42 + "=",
        "csk_" + "a" * 42 + "\n",
        " csk_" + "a" * 43,
    ],
)
def test_anything_but_the_exact_key_shape_is_not_well_formed(text):
    assert not is_well_formed(text)


@pytest.mark.parametrize("tenant", ["a", "acme", "Acme-2.prod_eu", "0", "x" * 64, "default"])
def test_tenant_names_within_the_rules_are_accepted(tenant):
    assert check_tenant(tenant) == tenant


@pytest.mark.parametrize("tenant", ["", "x" * 65, "-acme", ".acme", "ac me", "acme\n", "ac/me", "é"])
def test_tenant_names_outside_the_rules_are_invalid_naming_the_tenant(tenant):
    with pytest.raises(Invalid) as info:
        check_tenant(tenant)
    assert info.value.errors[0]["parameter"] == "tenant"


# --- Authorization parsing and guarded paths -----------------------------------


@pytest.mark.parametrize(
    ("header", "credential"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc  ", "abc"),
        ("Bearerabc", None),
    ],
)
def test_bearer_credential_is_read_from_the_bearer_scheme_only(header, credential):
    assert bearer_credential(header) == credential


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/v1", True), ("/v1/", True), ("/v1/contexts", True), ("/v10", False), ("/health", False),
     ("/openapi.json", False), ("/", False), ("/v1x/contexts", False), ("//v1/contexts", True),
     ("///v1", True), ("//health", False)],
)
def test_only_v1_paths_are_guarded(path, expected):
    assert guarded(path) is expected


@pytest.mark.parametrize("ttl", [-0.1, 5.01, 60])
def test_a_cache_lifetime_beyond_five_seconds_is_refused(ttl):
    with pytest.raises(ValueError, match="ttl_seconds"):
        Authenticator(keys=None, ttl_seconds=ttl)  # type: ignore[arg-type]


# --- listeners ----------------------------------------------------------------


class Listener:
    """The part of a gunicorn listener the check reads: its socket and str()."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __str__(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"


@pytest.mark.parametrize(
    ("family", "host", "local"),
    [
        (socket.AF_INET, "127.0.0.1", True),
        (socket.AF_INET, "127.0.0.2", True),
        (socket.AF_INET, "0.0.0.0", False),
        (socket.AF_INET6, "::1", True),
        (socket.AF_INET6, "::", False),
    ],
)
def test_a_bound_socket_is_local_only_on_a_loopback_address(family, host, local):
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:  # pragma: no cover - a machine without IPv6
            pytest.skip(f"cannot bind {host}: {exc}")
        assert is_local(Listener(sock)) is local


def test_a_unix_socket_listener_is_local(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(tmp_path / "s"))
        assert is_local(Listener(sock)) is True


def test_a_listener_that_cannot_be_told_counts_as_reachable():
    assert is_local(object()) is False


@pytest.mark.parametrize(
    ("address", "local"),
    [
        (("127.0.0.1", 8000), True),
        (("localhost", 8000), True),
        (("::1", 8000), True),
        (("[::1]", 8000), True),
        (("::ffff:127.0.0.1", 8000), True),
        (("0.0.0.0", 8000), False),
        (("::", 8000), False),
        (("example.org", 8000), False),
        (("10.0.0.1", 8000), False),
        ("/run/context-store.sock", True),
        (3, False),
    ],
)
def test_configured_addresses_count_as_local_only_when_loopback_or_unix(address, local):
    assert is_local(address) is local


def test_configured_addresses_are_described_as_host_and_port():
    assert describe(("0.0.0.0", 80)) == "0.0.0.0:80"
    assert describe(("::", 80)) == "[::]:80"
    assert describe("/run/s.sock") == "/run/s.sock"


def test_the_open_access_check_names_no_address_when_the_database_cannot_be_asked(monkeypatch, caplog):
    import psycopg

    from service import auth
    from service.config import Settings

    def unreachable(conninfo, timeout):
        raise psycopg.OperationalError('connection to server at "10.1.2.3", port 5432 failed: timeout expired')

    monkeypatch.setattr(auth, "keys_exist", unreachable)
    refusal = auth.open_access_refusal(Settings(), "host=10.1.2.3", [("0.0.0.0", 8000)])
    assert refusal is not None and "10.1.2.3" not in refusal
    assert auth.open_access_refusal(Settings(), "host=10.1.2.3", [("127.0.0.1", 8000)]) is None
    assert "10.1.2.3" not in caplog.text
