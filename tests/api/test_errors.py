"""Error responses: RFC 9457 problem documents, status codes for malformed
requests, body limits and X-Request-Id, against API.md's conventions."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import uuid

import pytest
import webtest

import service.app
from service.queries import Store
from support import problem

SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def create(client, metadata=None) -> str:
    return client.post_json("/v1/contexts", {} if metadata is None else {"metadata": metadata}, status=201).json["id"]


def append(client, cid, n=1) -> None:
    messages = [{"role": "user", "content": f"m{i}", "token_count": 1} for i in range(n)]
    client.post_json(f"/v1/contexts/{cid}/messages", {"messages": messages}, status=201)


def raw(client, method: str, url: str, body: bytes, content_type: str | None = "application/json", headers=None):
    """A request with exactly this body and Content-Type (none when content_type is None)."""
    headers = dict(headers or {})
    if content_type:
        headers["Content-Type"] = content_type
    return client._gen_request(method.upper(), url, params=body, headers=headers, expect_errors=True)


# ---------------------------------------------------------------- problem documents


def test_every_kind_of_error_is_a_problem_document_with_instance_the_path(client):
    cid = create(client)
    append(client, cid, 2)
    missing = uuid.uuid4()
    cases = [
        (client.get("/nope", expect_errors=True), 404, "/nope", "/problems/not-found"),
        (client.get(f"/v1/contexts/{missing}", expect_errors=True), 404, f"/v1/contexts/{missing}",
         "/problems/not-found"),
        (client.get(f"/v1/contexts/{cid}/messages/9", expect_errors=True), 404, f"/v1/contexts/{cid}/messages/9",
         "/problems/not-found"),
        (client.delete("/v1/contexts", expect_errors=True), 405, "/v1/contexts", None),
        (raw(client, "post", "/v1/contexts", b"{"), 400, "/v1/contexts", "/problems/malformed-json"),
        (raw(client, "post", "/v1/contexts", b"{}", "text/plain"), 415, "/v1/contexts", None),
        (client.get("/v1/contexts?limit=0&x=1", expect_errors=True), 422, "/v1/contexts",
         "/problems/validation-error"),
        (client.get(f"/v1/contexts/{cid}/window?max_tokens=0", expect_errors=True), 422,
         f"/v1/contexts/{cid}/window", "/problems/validation-error"),
        (client.post_json(f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "x"}]},
                          headers={"If-Match": '"0"'}, expect_errors=True), 412,
         f"/v1/contexts/{cid}/messages", "/problems/precondition-failed"),
    ]
    for resp, status, path, slug in cases:
        doc = problem(resp, status, path)
        if slug is not None:
            assert doc["type"] == slug, doc


def test_validation_errors_list_where_each_error_is(client):
    doc = problem(client.get("/v1/contexts?limit=abc", expect_errors=True), 422)
    assert doc["errors"] == [{"parameter": "limit", "detail": doc["errors"][0]["detail"]}]
    assert isinstance(doc["errors"][0]["detail"], str) and doc["errors"][0]["detail"]

    cid = create(client)
    body = {"messages": [{"role": "user", "content": "x"}, {"role": "x", "content": 1}]}
    doc = problem(client.post_json(f"/v1/contexts/{cid}/messages", body, expect_errors=True), 422)
    pointers = sorted(e["pointer"] for e in doc["errors"])
    assert pointers == ["/messages/1/content", "/messages/1/role"]
    assert all(isinstance(e["detail"], str) and e["detail"] for e in doc["errors"])


def test_problem_instance_is_the_path_as_a_uri_reference(client):
    # RFC 9457: instance is a URI reference, so a percent-encoded path stays encoded.
    doc = problem(client.get("/v1/contexts/a%20b", expect_errors=True), 404, "/v1/contexts/a%20b")
    assert " " not in doc["instance"]


def test_unknown_paths_are_404(client):
    for path in ("/", "/v1", "/v2/contexts", "/v1/unknown", f"/v1/contexts/{uuid.uuid4()}/nothing"):
        doc = problem(client.get(path, expect_errors=True), 404, path)
        assert doc["type"] == "/problems/not-found"


def test_wrong_method_is_405_with_allow(client):
    cid = create(client)
    cases = [
        ("delete", "/v1/contexts", {"GET", "POST"}),
        ("put", f"/v1/contexts/{cid}", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("post", f"/v1/contexts/{cid}", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("delete", f"/v1/contexts/{cid}/messages", {"GET", "POST"}),
        ("post", f"/v1/contexts/{cid}/window", {"GET"}),
        ("delete", f"/v1/contexts/{cid}/messages/1", {"GET"}),
        ("post", "/health", {"GET"}),
    ]
    for method, path, allowed in cases:
        resp = getattr(client, method)(path, expect_errors=True)
        problem(resp, 405, path)
        allow = {m.strip().upper() for m in resp.headers["Allow"].split(",")}
        assert allowed <= allow, (method, path, allow)
        assert method.upper() not in allow
    # Nothing was deleted or changed by the refused requests.
    assert client.get(f"/v1/contexts/{cid}", status=200).json["metadata"] == {}


def body_targets(cid: str) -> list[tuple[str, str]]:
    """Every (method, path) that takes a JSON body."""
    return [
        ("post", "/v1/contexts"),
        ("post", f"/v1/contexts/{cid}/messages"),
        ("patch", f"/v1/contexts/{cid}"),
        ("post", f"/v1/contexts/{cid}/forks"),
    ]


def test_body_that_is_not_json_is_400_malformed_json(client, postgresql):
    cid = create(client)
    for method, path in body_targets(cid):
        for body in (b"{", b"{'a': 1}", b'{"metadata": }', b"nul", b"\xff\xfe", b'{"a": 1} x'):
            doc = problem(raw(client, method, path, body), 400, path)
            assert doc["type"] == "/problems/malformed-json"
    assert postgresql.execute("select count(*) from contexts").fetchone()[0] == 1
    assert postgresql.execute("select count(*) from messages").fetchone()[0] == 0


def test_json_body_that_is_not_an_object_is_422(client, postgresql):
    cid = create(client, {"a": 1})
    for method, path in body_targets(cid):
        for body in (b"[]", b'[{"metadata": {}}]', b'"x"', b"1", b"true", b"null"):
            doc = problem(raw(client, method, path, body), 422, path)
            assert doc["type"] == "/problems/validation-error"
            assert doc["errors"] and doc["errors"][0]["pointer"] == ""
    assert postgresql.execute("select count(*) from contexts").fetchone()[0] == 1
    assert client.get(f"/v1/contexts/{cid}", status=200).json["metadata"] == {"a": 1}


def test_body_with_a_wrong_content_type_is_415(client, postgresql):
    cid = create(client)
    body = json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml", None):
        problem(raw(client, "post", "/v1/contexts", b"{}", content_type), 415, "/v1/contexts")
        problem(raw(client, "post", f"/v1/contexts/{cid}/messages", body, content_type), 415)
    # merge-patch is for PATCH only.
    problem(raw(client, "post", "/v1/contexts", b"{}", "application/merge-patch+json"), 415)
    assert postgresql.execute("select count(*) from contexts").fetchone()[0] == 1
    assert postgresql.execute("select count(*) from messages").fetchone()[0] == 0


def test_json_content_type_with_parameters_or_other_case_is_accepted(client):
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        resp = raw(client, "post", "/v1/contexts", b'{"metadata": {"k": 1}}', content_type)
        assert resp.status_int == 201, (content_type, resp.body)


# ---------------------------------------------------------------- body limit


@pytest.fixture
def small_client(settings, db, tokenizer):
    small = dataclasses.replace(settings, max_body_bytes=2048)
    return webtest.TestApp(service.app.create_app(small, Store.build(small, db, tokenizer)))


def padded(size: int) -> bytes:
    """A JSON create body of exactly size bytes."""
    shell = b'{"metadata": {"pad": ""}}'
    body = shell.replace(b'""', b'"' + b"x" * (size - len(shell)) + b'"')
    assert len(body) == size
    return body


def test_body_over_the_limit_is_413_and_writes_nothing(small_client, postgresql):
    cid = small_client.post_json("/v1/contexts", {}, status=201).json["id"]
    messages = json.dumps({"messages": [{"role": "user", "content": "x" * 3000}]}).encode()
    for method, path, body in [
        ("post", "/v1/contexts", padded(2049)),
        ("post", f"/v1/contexts/{cid}/messages", messages),
        ("patch", f"/v1/contexts/{cid}", padded(4096)),
        ("post", f"/v1/contexts/{cid}/forks", padded(10_000)),
    ]:
        resp = raw(small_client, method, path, body)
        problem(resp, 413, path)
        assert resp.headers.get("X-Request-Id")
    assert postgresql.execute("select count(*) from contexts").fetchone()[0] == 1
    assert postgresql.execute("select count(*) from messages").fetchone()[0] == 0
    assert small_client.get(f"/v1/contexts/{cid}", status=200).json["metadata"] == {}


def test_body_exactly_at_the_limit_is_accepted(small_client):
    resp = raw(small_client, "post", "/v1/contexts", padded(2048))
    assert resp.status_int == 201, resp.body
    assert len(resp.json["metadata"]["pad"]) > 2000


def test_body_limit_is_checked_before_the_body_is_read(settings, db, tokenizer):
    small = dataclasses.replace(settings, max_body_bytes=2048)
    wsgi_app = service.app.create_app(small, Store.build(small, db, tokenizer))

    class Untouchable(io.RawIOBase):
        def read(self, *args):
            raise AssertionError("the body was read")

        readline = readlines = read

    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/contexts",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(10**9),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": Untouchable(),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"], started["headers"] = status, {k.lower(): v for k, v in headers}

    body = b"".join(wsgi_app(environ, start_response))
    assert started["status"].startswith("413")
    assert started["headers"]["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 413


# ---------------------------------------------------------------- X-Request-Id


def test_request_id_is_echoed_when_sent(client):
    for request_id in ("abc-123", "req.1:2_x", "a" * 128, str(uuid.uuid4())):
        resp = client.get("/health", headers={"X-Request-Id": request_id}, status=200)
        assert resp.headers["X-Request-Id"] == request_id


def test_request_id_is_generated_when_absent(client):
    first = client.get("/health", status=200).headers.get("X-Request-Id")
    second = client.get("/v1/contexts", status=200).headers.get("X-Request-Id")
    assert first and second
    assert first != second


def test_request_id_is_on_error_responses_too(client):
    cid = create(client)
    responses = [
        client.get("/nope", headers={"X-Request-Id": "e-404"}, expect_errors=True),
        client.delete("/v1/contexts", headers={"X-Request-Id": "e-405"}, expect_errors=True),
        raw(client, "post", "/v1/contexts", b"{", headers={"X-Request-Id": "e-400"}),
        raw(client, "post", "/v1/contexts", b"{}", "text/plain", headers={"X-Request-Id": "e-415"}),
        client.get("/v1/contexts?limit=0", headers={"X-Request-Id": "e-422"}, expect_errors=True),
        client.post_json(f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "x"}]},
                         headers={"X-Request-Id": "e-412", "If-Match": '"5"'}, expect_errors=True),
    ]
    for resp in responses:
        assert resp.status_int >= 400
        assert resp.headers["X-Request-Id"] == f"e-{resp.status_int}"
    generated = client.get(f"/v1/contexts/{uuid.uuid4()}", expect_errors=True)
    assert generated.status_int == 404
    assert generated.headers.get("X-Request-Id")


def test_unsafe_request_id_is_replaced(client):
    for unsafe in ("has spaces in it", "a" * 129, "semi;colon", "quote\"d", "<script>"):
        resp = client.get("/health", headers={"X-Request-Id": unsafe}, status=200)
        replaced = resp.headers["X-Request-Id"]
        assert replaced != unsafe
        assert SAFE_REQUEST_ID.match(replaced), replaced


# ---------------------------------------------------------------- no leaks, no 500s


def _nasty_requests(client, cid):
    big = str(10**20)
    nul = {"role": "user", "content": "a\u0000b"}
    return [
        client.get(f"/v1/contexts/{cid}?as_of_version={big}", expect_errors=True),
        client.get(f"/v1/contexts/{cid}/messages?after={big}", expect_errors=True),
        client.get(f"/v1/contexts/{cid}/messages?before={big}", expect_errors=True),
        client.get(f"/v1/contexts/{cid}/messages?as_of_version={big}", expect_errors=True),
        client.get(f"/v1/contexts/{cid}/window?max_tokens=5&as_of_version={big}", expect_errors=True),
        client.get("/v1/contexts", {"metadata": json.dumps({"a": "\u0000"})}, expect_errors=True),
        client.get("/v1/contexts", {"metadata": json.dumps({"\u0000": 1})}, expect_errors=True),
        client.post_json("/v1/contexts", {"metadata": {"a": "\u0000"}}, expect_errors=True),
        client.patch_json(f"/v1/contexts/{cid}", {"metadata": {"\u0000": 1}}, expect_errors=True),
        client.post_json(f"/v1/contexts/{cid}/messages", {"messages": [nul]}, expect_errors=True),
        client.post_json(
            f"/v1/contexts/{cid}/messages",
            {"messages": [{"role": "user", "content": "x", "metadata": {"k": "\u0000"}}]},
            expect_errors=True,
        ),
        client.get(f"/v1/contexts/{cid}?as_of=not-a-time", expect_errors=True),
        client.get(f"/v1/contexts/{cid}/messages/{2**62}", expect_errors=True),
        client.get("/v1/contexts?limit=99999999999999999999", expect_errors=True),
        raw(client, "post", "/v1/contexts", b'{"metadata": {"a": 1e999}}'),
        raw(client, "post", "/v1/contexts", b"[" * 2000 + b"]" * 2000),
    ]


def test_no_response_body_ever_contains_a_stack_trace_or_sql(client):
    cid = create(client)
    append(client, cid)
    for resp in _nasty_requests(client, cid):
        text = resp.body.decode("utf-8", "replace")
        for leak in ("Traceback", "SELECT", "select ", "psycopg", 'File "', "UPDATE contexts", "INSERT INTO"):
            assert leak not in text, (resp.request.url, text[:300])
        if resp.status_int >= 400:
            problem(resp, resp.status_int)


def test_query_integers_beyond_bigint_are_422_naming_the_parameter(client):
    cid = create(client)
    append(client, cid)
    big = str(10**20)
    requests = {
        "as_of_version": [
            f"/v1/contexts/{cid}?as_of_version={big}",
            f"/v1/contexts/{cid}/messages?as_of_version={big}",
            f"/v1/contexts/{cid}/window?max_tokens=5&as_of_version={big}",
        ],
        "after": [f"/v1/contexts/{cid}/messages?after={big}"],
        "before": [f"/v1/contexts/{cid}/messages?before={big}"],
        "limit": ["/v1/contexts?limit=99999999999999999999"],
    }
    for parameter, urls in requests.items():
        for url in urls:
            doc = problem(client.get(url, status=422), 422)
            assert [e.get("parameter") for e in doc["errors"]] == [parameter], (url, doc)


def test_nul_characters_in_text_or_metadata_are_422_naming_the_field_and_write_nothing(client, postgresql):
    # PostgreSQL text and jsonb cannot hold U+0000: it is refused where it arrives.
    cid = create(client, {"keep": 1})
    counts = "SELECT (SELECT count(*) FROM contexts), (SELECT count(*) FROM messages)"
    before = postgresql.execute(counts).fetchone()
    attempts = [
        (("pointer", "/metadata"), client.post_json("/v1/contexts", {"metadata": {"a": "\u0000"}}, status=422)),
        (("pointer", "/metadata"), client.patch_json(f"/v1/contexts/{cid}", {"metadata": {"\u0000": 1}}, status=422)),
        (
            ("pointer", "/messages/0/content"),
            client.post_json(
                f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "a\u0000b"}]}, status=422
            ),
        ),
        (
            ("pointer", "/messages/0/metadata"),
            client.post_json(
                f"/v1/contexts/{cid}/messages",
                {"messages": [{"role": "user", "content": "x", "metadata": {"k": "\u0000"}}]},
                status=422,
            ),
        ),
        (
            ("parameter", "metadata"),
            client.get("/v1/contexts", {"metadata": json.dumps({"a": "\u0000"})}, status=422),
        ),
    ]
    for (where, name), resp in attempts:
        doc = problem(resp, 422)
        assert [(where, e.get(where)) for e in doc["errors"]] == [(where, name)], doc
        assert "U+0000" in doc["errors"][0]["detail"]
    assert postgresql.execute(counts).fetchone() == before
    assert client.get(f"/v1/contexts/{cid}").json["metadata"] == {"keep": 1}

def test_an_empty_body_counts_as_an_empty_object_but_whitespace_alone_is_not_json(client):
    assert raw(client, "post", "/v1/contexts", b"").status_int == 201
    cid = create(client)
    for body in (b"\r\n\r\n", b"   "):
        doc = problem(raw(client, "post", "/v1/contexts", body), 400)
        assert doc["type"] == "/problems/malformed-json"
        problem(raw(client, "patch", f"/v1/contexts/{cid}", body, "application/merge-patch+json"), 400)
