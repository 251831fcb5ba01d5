"""The pure parts of the service's gunicorn worker: which body the event loop
buffers, and the problem documents that replace gunicorn's HTML errors."""

from __future__ import annotations

import io
import socket
import threading

import falcon
import orjson
import pytest
from gunicorn import http
from gunicorn.config import Config
from gunicorn.http import errors as h
from gunicorn.http import wsgi
from support import RecordingSocket

from service.workers import _GuardedInput, _Response, body_length_to_buffer, problem_for, problem_response

HEAD = b"POST /v1/contexts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (b"", 0),
        (b"\r\nContent-Length: 120", 120),
        (b"\r\ncontent-length:7", 7),
        (b"\r\nContent-Length: 1024", 1024),
        (b"\r\nContent-Length: 1025", None),  # over the limit: the app answers 413 unread
        (b"\r\nContent-Length: 12\r\nContent-Length: 12", None),  # gunicorn answers 400
        (b"\r\nContent-Length: -1", None),
        (b"\r\nContent-Length: 1e3", None),
        (b"\r\nContent-Length: \xb2", None),
        # More digits than int() takes (4,300): raised in the event loop, it ended the worker.
        (b"\r\nContent-Length: " + b"0" * 4300 + b"1", None),
        (b"\r\nContent-Length: " + b"0" * 18, 0),
        (b"\r\nTransfer-Encoding: chunked", None),
        (b"\r\nContent-Length: 5\r\nExpect: 100-continue", None),  # the client waits for 100 first
        # A line without a colon is gunicorn's to refuse; the length after it still counts.
        (b"\r\nno colon here\r\nContent-Length: 5", 5),
    ],
)
def test_body_length_to_buffer(extra, expected):
    assert body_length_to_buffer(HEAD + extra, 1024) == expected


def test_the_request_line_is_not_taken_for_a_header():
    assert body_length_to_buffer(b"GET /content-length:5 HTTP/1.1\r\nHost: x", 1024) == 0


@pytest.mark.parametrize(
    ("exc", "status", "slug"),
    [
        (h.LimitRequestLine(5000, 4094), 414, "uri-too-long"),
        (h.LimitRequestHeaders("limit request headers fields"), 431, "request-header-fields-too-large"),
        (h.InvalidRequestLine("GARBAGE"), 400, "invalid-request-line"),
        (h.InvalidRequestMethod("G@T"), 400, "invalid-request-line"),
        (h.InvalidHTTPVersion("HTTP/9"), 400, "invalid-request-line"),
        (h.InvalidHeaderName("X Y"), 400, "invalid-header"),
        (h.ObsoleteFolding("X-Y"), 400, "invalid-header"),
        (h.UnsupportedTransferCoding("gzip"), 501, "unsupported-transfer-coding"),
        (h.ExpectationFailed("200-ok"), 417, "expectation-failed"),
        (h.InvalidChunkSize(b"zz"), 400, "invalid-chunked-body"),
        (h.ChunkMissingTerminator(b"xx"), 400, "invalid-chunked-body"),
        (h.ForbiddenProxyRequest("10.0.0.1"), 403, "forbidden"),
        (h.InvalidProxyLine("PROXY ?"), 400, "bad-request"),
        (h.InvalidH2CPreface(b"PRI"), 400, "bad-request"),
        (h.ConfigurationProblem("bad setting"), 500, "internal-error"),
        (h.InvalidResponseHeader("X-Bad"), 500, "internal-error"),
        (RuntimeError("boom"), 500, "internal-error"),
    ],
)
def test_problem_for_maps_gunicorn_errors(exc, status, slug):
    got_status, got_slug, title, detail = problem_for(exc)
    assert (got_status, got_slug) == (status, slug)
    assert title and detail.endswith(".")
    # Nothing the client sent, nor the exception's text, is repeated.
    assert str(exc) not in detail


def test_an_invalid_header_is_named_only_when_it_is_a_field_name():
    assert problem_for(h.InvalidHeader("CONTENT-LENGTH"))[3] == "A header field is not valid: CONTENT-LENGTH."
    assert problem_for(h.InvalidHeader("Authorization Bearer s3cret"))[3] == "A header field is not valid."


def test_problem_response_is_problem_json_with_a_request_id_and_closes():
    raw = problem_response(431, "request-header-fields-too-large", "Too Large", "Too many.", "/v1/a b%20", "ab12")
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Too Large"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["X-Request-Id"] == "ab12"
    assert headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(body)
    assert orjson.loads(body) == {
        "type": "/problems/request-header-fields-too-large",
        "title": "Too Large",
        "status": 431,
        "detail": "Too many.",
        "instance": "/v1/a%20b%20",
    }


def test_problem_response_without_a_path_has_an_empty_instance():
    body = problem_response(414, "uri-too-long", "URI Too Long", "Long.", None, "x").split(b"\r\n\r\n", 1)[1]
    assert orjson.loads(body)["instance"] == ""


def test_guarded_input_reads_like_the_stream_it_wraps():
    local = threading.local()
    stream = _GuardedInput(io.BytesIO(b"one\ntwo\nthree\n"), local)
    assert stream.readline() == b"one\n"
    assert list(stream) == [b"two\n", b"three\n"]
    assert _GuardedInput(io.BytesIO(b"a\nb\n"), local).readlines() == [b"a\n", b"b\n"]
    assert _GuardedInput(io.BytesIO(b"abc"), local).read(2) == b"ab"
    assert _GuardedInput(io.BytesIO(b"abc"), local).getvalue() == b"abc"  # anything else is the stream's


def test_guarded_input_turns_a_stalled_socket_into_408_and_marks_the_thread():
    local = threading.local()
    local.stalled = False
    ours, theirs = socket.socketpair()
    ours.settimeout(0.05)  # what the worker sets: CLIENT_BODY_TIMEOUT
    with ours, theirs, ours.makefile("rb") as raw:
        theirs.sendall(b"{")
        with pytest.raises(falcon.HTTPError) as info:
            _GuardedInput(raw, local).read(10)
    assert info.value.status_code == 408
    assert info.value.slug == "request-timeout"
    assert local.stalled is True


def _answer(response_class, method: bytes, status: str, headers: list, body=None, file: bytes | None = None,
            fields: bytes = b""):
    """(sendall calls, bytes on the wire without the Date line) of one answer."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(method + b" /x HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        req = next(http.get_parser(Config(), ours, ("127.0.0.1", 1)))
        sock = RecordingSocket(ours)
        resp = response_class(req, sock, Config())
        resp.start_response(status, headers)
        if file is not None:
            source = io.BytesIO(file)
            resp.write_file(wsgi.FileWrapper(source))
        for chunk in body or ():
            resp.write(chunk)
        resp.close()
        ours.shutdown(socket.SHUT_WR)
        wire = b""
        while chunk := theirs.recv(65536):
            wire += chunk
    lines = [line for line in wire.split(b"\r\n") if not line.startswith(b"Date: ")]
    return sock.calls, b"\r\n".join(lines)


@pytest.mark.parametrize(
    ("method", "status", "headers", "body", "file", "writes"),
    [
        # The usual answer: the head and the body in one write.
        (b"GET", "200 OK", [("Content-Length", "5")], [b"hello"], None, 1),
        (b"GET", "200 OK", [("Content-Length", "10")], [b"hello", b"world"], None, 2),
        # No length: chunked, the head on its own, then gunicorn's framing.
        (b"GET", "200 OK", [], [b"hello"], None, None),
        # No body at all: the head goes out when the answer closes.
        (b"GET", "204 No Content", [], [], None, 1),
        (b"HEAD", "200 OK", [("Content-Length", "5")], [b"hello"], None, 1),
        # A file: the head first, then the file as gunicorn sends it.
        (b"GET", "200 OK", [("Content-Length", "4")], None, b"file", None),
        # A protocol switch: "Connection: upgrade".
        (b"GET", "101 Switching Protocols", [("Connection", "Upgrade"), ("Upgrade", "websocket")], [], None, 1),
    ],
    ids=["one-chunk", "two-chunks", "chunked", "no-content", "head", "file", "upgrade"],
)
@pytest.mark.parametrize("fields", [b"", b"Connection: close\r\n"], ids=["keep-alive", "close"])
def test_the_response_sends_the_same_bytes_as_gunicorns_with_the_head_joined_to_the_body(
    method, status, headers, body, file, writes, fields
):
    calls, wire = _answer(_Response, method, status, list(headers), body, file, fields)
    _stock_calls, stock_wire = _answer(wsgi.Response, method, status, list(headers), body, file, fields)
    assert wire == stock_wire
    if writes is not None:
        assert len(calls) == writes
    assert calls[0].startswith(b"HTTP/1.1 " + status.encode())


def test_the_date_line_is_gunicorns_made_once_a_second():
    from gunicorn import util

    from service.workers import date_line

    for now in (0.0, 1_790_000_000.25, 1_790_000_000.75, 1_790_000_001.0):
        assert date_line(now) == f"Date: {util.http_date(int(now))}\r\n"
    assert date_line(1_790_000_001.5) is date_line(1_790_000_001.9)
