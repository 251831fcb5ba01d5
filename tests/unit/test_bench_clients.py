"""The benchmark's two HTTP clients (bench/driver.py) send the same requests and
read the same answers: http.client's and libcurl's, against a loopback server
that records what arrives."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# bench/ is not installed: it runs from the repository root, as here.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.driver import HTTP_CLIENTS  # noqa: E402


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, str], bytes]] = []
    connections: set[int] = set()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        _Recorder.seen.append((self.command, self.path, dict(self.headers), body))
        _Recorder.connections.add(self.client_address[1])
        status = 201 if self.command == "POST" else 200
        reply = b"echo:" + body
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen.clear()
    _Recorder.connections.clear()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("kind", sorted(HTTP_CLIENTS))
def test_both_clients_send_and_read_the_same_requests_on_one_connection(server, kind):
    client = HTTP_CLIENTS[kind](server)
    client.open()
    big = b"x" * 5000  # past libcurl's 1 KiB threshold for Expect: 100-continue
    try:
        assert client.call("GET", "/a?b=1") == (200, b"echo:")
        assert client.call("POST", "/p", big, {"Idempotency-Key": "k1"}) == (201, b"echo:" + big)
        assert client.call("PATCH", "/q", b"{}") == (200, b"echo:{}")
        assert client.call("GET", "/c") == (200, b"echo:")
    finally:
        client.close()
    methods = [(method, path, body) for method, path, _headers, body in _Recorder.seen]
    assert methods == [("GET", "/a?b=1", b""), ("POST", "/p", big), ("PATCH", "/q", b"{}"), ("GET", "/c", b"")]
    post_headers = _Recorder.seen[1][2]
    assert post_headers["Idempotency-Key"] == "k1" and post_headers["Content-Type"] == "application/json"
    assert "Expect" not in post_headers
    assert "Idempotency-Key" not in _Recorder.seen[3][2]
    assert len(_Recorder.connections) == 1  # kept alive


@pytest.mark.parametrize("kind", sorted(HTTP_CLIENTS))
def test_a_failed_call_raises_oserror_and_the_next_one_reconnects(server, kind):
    client = HTTP_CLIENTS[kind](1)  # nothing listens on port 1
    with pytest.raises(OSError):
        client.call("GET", "/a")
    client.port = server
    client.open()
    try:
        assert client.call("GET", "/a") == (200, b"echo:")
    finally:
        client.close()
