"""A small deterministic OpenAI-compatible embeddings server for the tests, on
loopback: POST /v1/embeddings answers a hashed bag of words, normalised, so that
texts sharing words are near each other. It speaks the wire format's errors too:
401 without the expected key, and scripted 429 (with Retry-After) and 500 answers."""

from __future__ import annotations

import hashlib
import math
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import orjson

API_KEY = "test-embeddings-key"


def bag_of_words(text: str, dim: int) -> list[float]:
    """Each lower-cased word adds 1 to a dimension picked by its hash; the sum is
    normalised (an empty text gets a fixed unit vector)."""
    vector = [0.0] * dim
    for word in text.lower().split():
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest, "big") % dim] += 1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:
        vector[0] = 1.0
        return vector
    return [x / norm for x in vector]


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) with `handler`, serving
    while the `with` block runs; `url` is its `/v1` base."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


class EmbeddingsServer(LoopbackServer):
    """Start with `with EmbeddingsServer(dim) as server:`; `server.url` is the base
    URL to give EMBEDDINGS_URL. `script` holds (status, retry_after) answers to give
    before the next real ones; `requests` counts the calls; `inputs` the texts."""

    def __init__(self, dim: int, *, api_key: str | None = API_KEY, delay: float = 0.0) -> None:
        self.dim = dim
        self.api_key = api_key
        self.delay = delay
        self.script: deque[tuple[int, str | None]] = deque()
        self.requests = 0
        self.inputs: list[str] = []
        self.lock = threading.Lock()
        self.reject_words: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, document: dict, headers: dict[str, str] | None = None) -> None:
                body = orjson.dumps(document)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
                self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": None}},
                           headers)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with server.lock:
                    server.requests += 1
                    scripted = server.script.popleft() if server.script else None
                if self.path != "/v1/embeddings":
                    self._error(404, "not found", "invalid_request_error")
                    return
                if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._error(401, "Incorrect API key provided.", "invalid_request_error")
                    return
                if scripted is not None:
                    status, retry_after = scripted
                    headers = {"Retry-After": retry_after} if retry_after is not None else None
                    self._error(status, "scripted failure", "server_error" if status >= 500 else "rate_limit",
                                headers)
                    return
                if server.delay:
                    threading.Event().wait(server.delay)
                request = orjson.loads(raw)
                texts = request["input"] if isinstance(request["input"], list) else [request["input"]]
                if any(not t.strip() or set(t.split()) & server.reject_words for t in texts):
                    self._error(400, "'$.input' is invalid.", "invalid_request_error")
                    return
                with server.lock:
                    server.inputs.extend(texts)
                data = [{"object": "embedding", "index": i, "embedding": bag_of_words(t, server.dim)}
                        for i, t in enumerate(texts)]
                self._send(200, {"object": "list", "data": data, "model": request.get("model"),
                                 "usage": {"prompt_tokens": 0, "total_tokens": 0}})

        super().__init__(Handler)
