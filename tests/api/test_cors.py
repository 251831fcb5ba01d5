"""Browser clients: CORS_ALLOW_ORIGINS (off by default) answers preflights with
the methods and headers the API takes, and exposes the headers it sends."""

from __future__ import annotations

from dataclasses import replace

import pytest
import webtest

from service.app import create_app
from service.config import ConfigError, Settings

ORIGIN = "https://app.example.com"


@pytest.fixture
def browser_app(settings, store):
    return webtest.TestApp(create_app(replace(settings, cors_allow_origins=(ORIGIN,)), store))


def test_cors_is_off_by_default(client):
    resp = client.get("/v1/contexts", headers={"Origin": ORIGIN}, status=200)
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_a_preflight_lists_the_methods_and_the_headers_clients_send(browser_app, store):
    store.keys.create("acme")  # keyed: a preflight still needs no key
    resp = browser_app.options(
        "/v1/contexts/00000000-0000-0000-0000-000000000001/messages",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, idempotency-key, if-match, content-type",
        },
        status=200,
    )
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert set(resp.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) >= {"GET", "POST"}
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "idempotency-key", "if-match", "if-none-match", "content-type"} <= allowed


def test_responses_to_an_allowed_origin_expose_the_api_headers(browser_app):
    resp = browser_app.post_json("/v1/contexts", {}, headers={"Origin": ORIGIN}, status=201)
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"ETag", "Location", "Link", "X-Request-Id", "Retry-After"} <= exposed


def test_another_origin_gets_no_cors_headers(browser_app):
    resp = browser_app.get("/v1/contexts", headers={"Origin": "https://evil.example"}, status=200)
    assert "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize(
    ("raw", "origins"),
    [("*", ("*",)), ("https://a.example, http://localhost:3000/", ("https://a.example", "http://localhost:3000"))],
)
def test_the_setting_reads_a_list_of_origins_or_a_wildcard(raw, origins):
    assert Settings.from_env({"CORS_ALLOW_ORIGINS": raw}).cors_allow_origins == origins


@pytest.mark.parametrize("raw", ["*, https://a.example", "app.example.com"])
def test_a_bad_origin_list_is_refused_naming_the_variable(raw):
    with pytest.raises(ConfigError, match="CORS_ALLOW_ORIGINS"):
        Settings.from_env({"CORS_ALLOW_ORIGINS": raw})
