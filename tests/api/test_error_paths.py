"""Failure paths a real database does not produce on demand: a genuine bug (500)
and bodies without a Content-Length."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import webtest

from service.app import create_app
from service.queries import contexts
from service.schemas import Schemas, _flatten


def test_an_unexpected_error_is_a_500_problem_without_a_trace_and_is_logged(client, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(contexts, "create_context", broken)
    with caplog.at_level(logging.ERROR, logger="context_store"):
        resp = client.post_json("/v1/contexts", {}, status=500, headers={"X-Request-Id": "bug-1"})
    assert resp.content_type == "application/problem+json"
    assert resp.json["type"] == "/problems/internal-error"
    assert resp.json["status"] == 500
    assert "secret internals" not in resp.text and "Traceback" not in resp.text
    assert resp.headers["X-Request-Id"] == "bug-1"
    assert any("bug-1" in record.getMessage() for record in caplog.records)


def _chunked(app, body: bytes, status: int):
    req = webtest.TestRequest.blank("/v1/contexts", method="POST", body=body, content_type="application/json")
    del req.environ["CONTENT_LENGTH"]  # as a server passes a chunked body on
    req.environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    return app.do_request(req, status=status)


def test_a_chunked_body_is_read_and_cut_at_the_limit(settings, db, tokenizer):
    app = webtest.TestApp(create_app(dataclasses.replace(settings, max_body_bytes=1024), db, tokenizer))
    created = _chunked(app, b'{"metadata": {"k": "v"}}', 201)
    assert created.json["metadata"] == {"k": "v"}
    resp = _chunked(app, b'{"metadata": {"k": "' + b"x" * 2000 + b'"}}', 413)
    assert resp.json["type"] == "/problems/payload-too-large"


def test_schemas_refuse_unknown_names(settings):
    schemas = Schemas(settings)
    with pytest.raises(AttributeError, match="NoSuchSchema"):
        getattr(schemas, "NoSuchSchema")


def test_validation_messages_of_any_shape_become_pointers():
    out = []
    _flatten({"a": [{"b": ["bad"]}], "c": 5, "_schema": ["whole"]}, (), out)
    assert (("a",), "bad") not in out
    assert (("a", "b"), "bad") in out
    assert (("c",), "5") in out
    assert ((), "whole") in out


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_metadata_nested_too_deep_is_a_422_naming_the_field_not_a_500(client):
    resp = client.post_json("/v1/contexts", {"metadata": _nested(300)}, status=422)
    assert resp.json["errors"][0]["pointer"] == "/metadata"
    assert "32" in resp.json["errors"][0]["detail"]
    client.post_json("/v1/contexts", {"metadata": _nested(32)}, status=201)


def test_a_metadata_filter_nested_too_deep_is_a_422(client):
    import json
    from urllib.parse import quote

    resp = client.get("/v1/contexts?metadata=" + quote(json.dumps(_nested(300))), status=422)
    assert resp.json["errors"][0]["parameter"] == "metadata"


def test_a_cursor_holding_the_wrong_types_is_a_422(client):
    import base64

    cursor = base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", 1]').decode().rstrip("=")
    resp = client.get(f"/v1/contexts?after={cursor}", status=422)
    assert resp.json["errors"][0]["parameter"] == "after"
