"""Failure paths a real database does not produce on demand: a genuine bug (500),
a database that is down (503), and bodies without a Content-Length. The app is
built with a store that fails, never by patching modules."""

from __future__ import annotations

import dataclasses
import logging

import webtest

from service.app import create_app
from service.errors import Unavailable
from service.schemas.loading import flatten


class BrokenContexts:
    """A contexts store whose every method fails the way it is told to."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise self.error

        return fail


def _app_with(settings, store, error):
    return webtest.TestApp(create_app(settings, dataclasses.replace(store, contexts=BrokenContexts(error))))


def test_an_unexpected_error_is_a_500_problem_without_a_trace_and_is_logged(settings, store, caplog):
    client = _app_with(settings, store, RuntimeError("secret internals"))
    with caplog.at_level(logging.ERROR, logger="context_store"):
        resp = client.post_json("/v1/contexts", {}, status=500, headers={"X-Request-Id": "bug-1"})
    assert resp.content_type == "application/problem+json"
    assert resp.json["type"] == "/problems/internal-error"
    assert resp.json["status"] == 500
    assert "secret internals" not in resp.text and "Traceback" not in resp.text
    assert resp.headers["X-Request-Id"] == "bug-1"
    assert any("bug-1" in record.getMessage() for record in caplog.records)


def test_a_store_that_is_unavailable_is_a_503_with_retry_after(settings, store):
    client = _app_with(settings, store, Unavailable("The database connection failed."))
    resp = client.get("/v1/contexts", status=503)
    assert resp.content_type == "application/problem+json"
    assert resp.json["type"] == "/problems/service-unavailable"
    assert resp.json["detail"] == "The database connection failed."
    assert resp.headers["Retry-After"] == str(settings.retry_after)


def _chunked(app, body: bytes, status: int):
    req = webtest.TestRequest.blank("/v1/contexts", method="POST", body=body, content_type="application/json")
    del req.environ["CONTENT_LENGTH"]  # as a server passes a chunked body on
    req.environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    return app.do_request(req, status=status)


def test_a_chunked_body_is_read_and_cut_at_the_limit(settings, store):
    app = webtest.TestApp(create_app(dataclasses.replace(settings, max_body_bytes=1024), store))
    created = _chunked(app, b'{"metadata": {"k": "v"}}', 201)
    assert created.json["metadata"] == {"k": "v"}
    resp = _chunked(app, b'{"metadata": {"k": "' + b"x" * 2000 + b'"}}', 413)
    assert resp.json["type"] == "/problems/payload-too-large"


def test_validation_messages_of_any_shape_become_pointers():
    out = flatten({"a": [{"b": ["bad"]}], "c": 5, "_schema": ["whole"]})
    assert (("a",), "bad") not in out
    assert (("a", "b"), "bad") in out
    assert (("c",), "5") in out
    assert ((), "whole") in out
