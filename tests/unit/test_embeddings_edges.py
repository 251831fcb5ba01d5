"""The client's answers to an endpoint that misbehaves (a body that is not
embeddings, too few vectors) and the /health probe's own outcomes."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

import pytest
from embeddings_server import API_KEY, EmbeddingsServer, LoopbackServer

from service.embeddings import Embedder, EmbeddingsUnavailable

DIM = 8


class FixedAnswer(LoopbackServer):
    """A loopback endpoint answering every POST with 200 and `body`."""

    def __init__(self, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


@pytest.mark.parametrize("body", [b"<html>busy</html>", b'{"object": "list"}', b'{"data": [{"index": 0}]}',
                                  b'{"data": 3}'])
def test_a_body_that_is_not_embeddings_is_unavailable(body):
    with FixedAnswer(body) as endpoint:
        client = Embedder(endpoint.url, "m", None, DIM, timeout=2.0)
        with pytest.raises(EmbeddingsUnavailable, match="not embeddings"):
            client.embed(["a"])
    assert client.status() == "unavailable"


def test_fewer_vectors_than_texts_is_unavailable():
    body = b'{"data": [{"index": 0, "embedding": [0, 0, 0, 0, 0, 0, 0, 1]}]}'
    with FixedAnswer(body) as endpoint, pytest.raises(EmbeddingsUnavailable, match="asked for 2 embeddings, got 1"):
        Embedder(endpoint.url, "m", None, DIM, timeout=2.0).embed(["a", "b"])


def test_health_probe_refused_as_input_still_counts_as_answering():
    with EmbeddingsServer(DIM) as server:
        server.reject_words = {"health"}
        client = Embedder(server.url, "m", API_KEY, DIM, timeout=2.0)
        assert client.status() == "ok"
        assert server.requests == 1


def test_health_probe_failing_reports_unavailable():
    with EmbeddingsServer(DIM) as server:
        server.script.append((503, None))
        assert Embedder(server.url, "m", API_KEY, DIM, timeout=2.0).status() == "unavailable"


def test_health_probe_already_under_way_is_not_repeated():
    with EmbeddingsServer(DIM) as server:
        client = Embedder(server.url, "m", API_KEY, DIM, timeout=2.0)
        # Another thread's probe holds the lock: with no outcome yet, the answer
        # is unknown rather than a second call.
        with client._lock:
            assert client.status() == "unknown"
        assert server.requests == 0
