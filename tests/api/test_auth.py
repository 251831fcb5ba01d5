"""The Authenticator middleware through webtest: 401 shapes, open mode, tenants,
and its per-worker cache on a fake clock; then the access log against forged lines."""

from __future__ import annotations

import dataclasses

import logging
import threading

import falcon
import pytest
import webtest
from support import problem

from service import problems
from service.app import create_app
from service.auth import Authenticator
from service.config import Settings
from service.db import Database
from service.logs import printable
from service.middleware import RequestContext
from service.queries.keys import Keys, new_key

TTL = 2.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingKeys(Keys):
    """The real Keys, counting its round trips."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.lookups = 0
        self.checks = 0

    def lookup(self, secret_hash: bytes) -> str | None:
        self.lookups += 1
        return super().lookup(secret_hash)

    def any_active(self) -> bool:
        self.checks += 1
        return super().any_active()


class WhoAmI:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"tenant": req.context.tenant}


def _tiny_app(authenticator: Authenticator) -> webtest.TestApp:
    app = falcon.App(middleware=[RequestContext(1 << 20), authenticator])
    problems.install(app, 2)
    app.add_route("/v1", WhoAmI())
    app.add_route("/v1/whoami", WhoAmI())
    app.add_route("/health", WhoAmI())
    app.add_route("/openapi.json", WhoAmI())
    return webtest.TestApp(app)


@pytest.fixture
def keys(db) -> CountingKeys:
    return CountingKeys(db)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(keys, clock) -> Authenticator:
    return Authenticator(keys, TTL, clock=clock)


@pytest.fixture
def tiny(auth) -> webtest.TestApp:
    return _tiny_app(auth)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def refused(resp) -> dict:
    doc = problem(resp, 401)
    assert doc["type"] == "/problems/unauthorized"
    assert doc["title"] == "Unauthorized"
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert resp.headers["X-Request-Id"]
    return doc


# --- open mode ----------------------------------------------------------------


def test_with_no_keys_v1_is_open_as_the_default_tenant(tiny):
    assert tiny.get("/v1/whoami").json == {"tenant": "default"}


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "Bearer"])
def test_open_mode_ignores_another_schemes_credential_from_a_proxy(tiny, header):
    assert tiny.get("/v1/whoami", headers={"Authorization": header}).json == {"tenant": "default"}


def test_open_mode_still_refuses_a_key_it_does_not_know(tiny):
    refused(tiny.get("/v1/whoami", headers=bearer(new_key()), status=401))


def test_open_mode_asks_the_database_once_per_ttl(tiny, keys, clock):
    for _ in range(5):
        tiny.get("/v1/whoami")
    assert keys.checks == 1
    clock.advance(TTL)
    tiny.get("/v1/whoami")
    assert keys.checks == 2


# --- keyed mode ---------------------------------------------------------------


def test_a_key_sets_its_tenant(tiny, keys):
    acme = keys.create("acme")
    globex = keys.create("globex")
    assert tiny.get("/v1/whoami", headers=bearer(acme.key)).json == {"tenant": "acme"}
    assert tiny.get("/v1/whoami", headers=bearer(globex.key)).json == {"tenant": "globex"}
    assert tiny.get("/v1", headers={"Authorization": f"bearer  {acme.key} "}).json == {"tenant": "acme"}


def test_a_request_without_a_key_is_401_once_keys_exist(tiny, keys):
    keys.create("acme")
    doc = refused(tiny.get("/v1/whoami", status=401))
    assert "Authorization: Bearer" in doc["detail"]
    refused(tiny.get("/v1", status=401))
    # Falcon routes `//v1/whoami` to `/v1/whoami`: it must not slip past.
    refused(tiny.get("//v1/whoami", status=401))


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-key", "Bearer csk_short", "Token csk_" + "a" * 43],
)
def test_a_malformed_credential_is_401_without_a_lookup(tiny, keys, header):
    keys.create("acme")
    refused(tiny.get("/v1/whoami", headers={"Authorization": header}, status=401))
    assert keys.lookups == 0


def test_an_unknown_key_is_401_and_never_echoed(tiny, keys):
    keys.create("acme")
    stranger = new_key()
    resp = tiny.get("/v1/whoami", headers=bearer(stranger), status=401)
    doc = refused(resp)
    assert "unknown or was revoked" in doc["detail"]
    assert stranger not in resp.text and stranger[4:] not in resp.text


def test_health_and_openapi_need_no_key(tiny, keys):
    keys.create("acme")
    assert tiny.get("/health").json == {"tenant": "default"}
    assert tiny.get("/openapi.json").json == {"tenant": "default"}
    assert keys.checks == 0 and keys.lookups == 0


# --- the cache ----------------------------------------------------------------


def test_a_key_costs_one_lookup_per_ttl_not_per_request(tiny, keys, clock):
    acme = keys.create("acme")
    for _ in range(10):
        tiny.get("/v1/whoami", headers=bearer(acme.key))
    assert keys.lookups == 1
    assert keys.checks == 0  # a key that checks out proves keys exist
    clock.advance(TTL - 0.01)
    tiny.get("/v1/whoami", headers=bearer(acme.key))
    assert keys.lookups == 1
    clock.advance(0.01)
    tiny.get("/v1/whoami", headers=bearer(acme.key))
    assert keys.lookups == 2


def test_a_revoked_key_is_refused_once_its_ttl_runs_out(tiny, keys, clock):
    acme = keys.create("acme")
    keys.create("acme", "the other one")  # keys still exist after the revocation
    tiny.get("/v1/whoami", headers=bearer(acme.key), status=200)
    keys.revoke(acme.id)
    # Within the TTL this worker may still take it; the contract allows 5 s.
    clock.advance(TTL / 2)
    tiny.get("/v1/whoami", headers=bearer(acme.key), status=200)
    clock.advance(TTL / 2)
    refused(tiny.get("/v1/whoami", headers=bearer(acme.key), status=401))


def test_a_first_key_closes_open_mode_once_the_ttl_runs_out(tiny, keys, clock):
    tiny.get("/v1/whoami", status=200)
    acme = keys.create("acme")
    tiny.get("/v1/whoami", status=200)  # the cached "no keys" answer, for now
    # ...but the new key is honoured at once: its holder never lands in "default".
    assert tiny.get("/v1/whoami", headers=bearer(acme.key)).json == {"tenant": "acme"}
    clock.advance(TTL)
    refused(tiny.get("/v1/whoami", status=401))


def test_revoking_the_last_key_reopens_once_the_ttl_runs_out(tiny, keys, clock):
    acme = keys.create("acme")
    refused(tiny.get("/v1/whoami", status=401))
    keys.revoke(acme.id)
    clock.advance(TTL)
    assert tiny.get("/v1/whoami").json == {"tenant": "default"}


def test_a_zero_ttl_asks_every_time(keys, clock):
    tiny = _tiny_app(Authenticator(keys, 0, clock=clock))
    acme = keys.create("acme")
    for _ in range(3):
        tiny.get("/v1/whoami", headers=bearer(acme.key))
    assert keys.lookups == 3


def test_a_full_cache_starts_over_instead_of_growing(keys, clock):
    tiny = _tiny_app(Authenticator(keys, TTL, clock=clock, max_entries=2))
    made = [keys.create("acme"), keys.create("globex"), keys.create("initech")]
    for created in made:
        assert tiny.get("/v1/whoami", headers=bearer(created.key)).json == {"tenant": created.tenant}
    assert keys.lookups == 3
    tiny.get("/v1/whoami", headers=bearer(made[2].key))  # kept
    assert keys.lookups == 3
    tiny.get("/v1/whoami", headers=bearer(made[0].key))  # dropped when the third came in
    assert keys.lookups == 4


def test_expired_entries_make_room_first(keys, clock):
    tiny = _tiny_app(Authenticator(keys, TTL, clock=clock, max_entries=2))
    a, b, c = keys.create("a"), keys.create("b"), keys.create("c")
    tiny.get("/v1/whoami", headers=bearer(a.key))
    clock.advance(TTL)
    tiny.get("/v1/whoami", headers=bearer(b.key))
    tiny.get("/v1/whoami", headers=bearer(c.key))  # evicts the expired a, keeps b
    assert keys.lookups == 3
    tiny.get("/v1/whoami", headers=bearer(b.key))
    assert keys.lookups == 3


def test_threads_sharing_one_authenticator_each_get_their_own_tenant(auth, keys):
    made = [keys.create(f"t{i}") for i in range(4)]
    failures: list[str] = []

    def worker(n: int) -> None:
        for i in range(50):
            created = made[(n + i) % len(made)]
            got = auth.tenant_for(created.key)
            if got != created.tenant:
                failures.append(f"{created.tenant} -> {got}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_an_unreachable_database_is_503_not_401_or_500(tmp_path):
    settings = Settings(pool_min_size=1, pool_max_size=1, pool_timeout=0.5, connect_timeout=1)
    database = Database(settings, f"host={tmp_path / 'none'} port=1 dbname=x user=x connect_timeout=1")
    database.open()
    try:
        tiny = _tiny_app(Authenticator(Keys(database), TTL))
        resp = tiny.get("/v1/whoami", status=503)
        assert problem(resp, 503)["type"] == "/problems/service-unavailable"
        assert resp.headers["Retry-After"] == "2"  # what _tiny_app installs
        assert tiny.get("/health").json == {"tenant": "default"}
    finally:
        database.close()


# --- the real app -------------------------------------------------------------


@pytest.fixture
def keyed(settings, store):
    return webtest.TestApp(create_app(dataclasses.replace(settings, auth_cache_ttl=TTL), store))


def test_the_real_app_keeps_each_tenant_to_its_own_contexts(keyed, db):
    acme, globex = Keys(db).create("acme"), Keys(db).create("globex")
    refused(keyed.get("/v1/contexts", status=401))
    refused(keyed.post_json("/v1/contexts", {}, status=401))
    made = keyed.post_json("/v1/contexts", {"metadata": {"a": 1}}, headers=bearer(acme.key), status=201).json
    keyed.get(f"/v1/contexts/{made['id']}", headers=bearer(acme.key), status=200)
    problem(keyed.get(f"/v1/contexts/{made['id']}", headers=bearer(globex.key), status=404), 404)
    assert keyed.get("/v1/contexts", headers=bearer(globex.key)).json["data"] == []
    assert [c["id"] for c in keyed.get("/v1/contexts", headers=bearer(acme.key)).json["data"]] == [made["id"]]
    assert keyed.get("/health").json["status"] == "ok"
    assert keyed.get("/openapi.json").json["openapi"].startswith("3.")


# --- the access log -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/v1/contexts", "/v1/contexts"),
        ("/a\nb", "/a\\x0ab"),
        ("/a\r\nb", "/a\\x0d\\x0ab"),
        ("/\x1b[31mred", "/\\x1b[31mred"),
        ("/\x00\x7f\x9b", "/\\x00\\x7f\\x9b"),
        ("/a\\x0ab", "/a\\\\x0ab"),
        ("/\u2028\u202e", "/\\u2028\\u202e"),
        ("/café/😀", "/café/😀"),
    ],
)
def test_printable_escapes_what_could_forge_a_line_or_drive_a_terminal(raw, expected):
    assert printable(raw) == expected


def test_the_access_log_escapes_the_decoded_path_and_method(app, caplog):
    # Without webtest's lint, which (like gunicorn) turns away such a method itself.
    client = webtest.TestApp(app, lint=False)
    with caplog.at_level(logging.INFO, logger="context_store.access"):
        client.get("/v1/contexts%0a2026-11-27 00:00:00 INFO forged%0d%1b[2J", status=404)
        client.request("/health", method="GET\x1b", status="*", expect_errors=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "context_store.access"]
    assert len(lines) == 2
    for line in lines:
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in line), repr(line)
    assert lines[0].startswith("GET /v1/contexts\\x0a2026-11-27 00:00:00 INFO forged\\x0d\\x1b[2J 404 ")
    assert lines[1].startswith("GET\\x1b /health ")
