"""`context-store serve` against slow and malformed clients: 2 workers x 4
threads must keep answering /health while 100 connections stall or drip, drop
those connections at their deadline, answer gunicorn's own parse errors as
problem+json, and keep serving kept-alive connections."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import pytest
from serving import stop

pytestmark = pytest.mark.slow

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
# The event loop checks deadlines at least once a second; the rest is a loaded machine.
SLACK = 1.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from sock (bytes past it stay in buf)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {bytes(buf)!r}")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a body")
        rest += chunk
    buf[:] = rest[length:]
    return status, headers, rest[:length]


def _exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with _connect(port) as sock:
        sock.sendall(raw)
        return _read_response(sock, bytearray())


def _seconds_until_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """(seconds until the server closed sock, what it sent meanwhile)."""
    started = time.monotonic()
    sock.settimeout(limit)
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except TimeoutError:
        return float("inf"), received
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received


@pytest.fixture(scope="module")
def server():
    # Not pytest's tmp_path, for the reason test_serve.py gives.
    tmp_path = Path(tempfile.mkdtemp(prefix="context-store-slow-"))
    port = _free_port()
    env = {
        **os.environ,
        "CONTEXT_STORE_HOME": str(tmp_path / "home"),
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "4",
        "CLIENT_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "CLIENT_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "LOG_LEVEL": "warning",
    }
    env.pop("DATABASE_URL", None)
    env.pop("GUNICORN_WORKER_CLASS", None)  # the default is the one under test
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(log_path.read_text()[-3000:])
            time.sleep(0.2)
        yield port, log_path
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


class _Attack:
    """Connections that stall after a partial head or drip a byte every 0.5 s,
    reopened when the server closes them; records when each was closed."""

    PARTIAL = b"GET /health HTTP/1.1\r\nHost: x\r\n"
    DRIP = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Drip: " + b"d" * 100 + b"\r\n\r\n"

    def __init__(self, port: int, stall: int, drip: int) -> None:
        self.port = port
        self.closes: list[float] = []
        self.answered = 0
        self.stop = threading.Event()
        self.selector = selectors.DefaultSelector()
        for kind in ["stall"] * stall + ["drip"] * drip:
            self._open(kind)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self, kind: str) -> None:
        sock = _connect(self.port)
        sock.setblocking(False)
        if kind == "stall":
            sock.send(self.PARTIAL)
        now = time.monotonic()
        self.selector.register(sock, selectors.EVENT_READ, [kind, now, 0, now])

    def _run(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.05):
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.answered += 1  # a slow client must not be served
                    continue
                self.closes.append(time.monotonic() - key.data[1])
                self.selector.unregister(key.fileobj)
                key.fileobj.close()
                if not self.stop.is_set():
                    self._open(key.data[0])
            now = time.monotonic()
            for key in list(self.selector.get_map().values()):
                kind, _connected, sent, next_at = key.data
                if kind == "drip" and now >= next_at:
                    try:
                        key.fileobj.send(self.DRIP[sent : sent + 1])
                    except OSError:
                        pass
                    key.data[2] += 1
                    key.data[3] = now + 0.5

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def _probe_health(port: int, seconds: float) -> tuple[list[float], list[int]]:
    """(latencies, statuses) of /health exchanges, one every 30 ms for seconds."""
    latencies, statuses = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        statuses.append(_exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0])
        latencies.append(time.perf_counter() - started)
        time.sleep(0.03)
    return latencies, statuses


def _p99(latencies: list[float]) -> float:
    return sorted(latencies)[int(0.99 * len(latencies))]


# What the attack may cost /health. The claim is that slow clients hold no thread,
# so /health is as fast under attack as without it. On an idle machine that is far
# under 100 ms; a machine loaded by other work slows both alike (seen: 117 ms under
# attack), so the p99 under attack may instead be within a small factor of the p99
# measured without it in this same test, just before and after. The ceiling holds
# either way: gunicorn's stock gthread worker, whose threads the attack holds,
# answers /health in seconds or not at all.
P99_BOUND = 0.100
P99_FACTOR = 4
P99_CEILING = 0.5


def test_health_stays_fast_while_100_slow_clients_are_dropped_at_their_deadline(server):
    port, log_path = server
    quiet_latencies, quiet_statuses = _probe_health(port, 2)
    attack = _Attack(port, stall=50, drip=50)
    try:
        time.sleep(0.5)  # the attack is in place before the first check
        latencies, statuses = _probe_health(port, 10)
    finally:
        attack.close()
    after_latencies, after_statuses = _probe_health(port, 2)

    assert len(statuses) > 100
    assert set(statuses) == set(quiet_statuses) == set(after_statuses) == {200}
    p99, quiet_p99 = _p99(latencies), _p99(quiet_latencies + after_latencies)
    shown = f"p99 {p99 * 1000:.1f} ms under attack, {quiet_p99 * 1000:.1f} ms without"
    assert p99 < P99_CEILING, shown
    assert p99 < P99_BOUND or p99 < P99_FACTOR * quiet_p99, shown
    # Every one of the first 100 connections, and those opened after, was closed
    # at its deadline: not before (a slow client is not a dead one), not much after.
    assert len(attack.closes) >= 200
    assert min(attack.closes) >= HEADER_TIMEOUT - 0.05
    assert max(attack.closes) <= HEADER_TIMEOUT + SLACK
    assert attack.answered == 0
    # One log line per dropped client, naming its address, never one per byte.
    drops = re.findall(r"slow client 127\.0\.0\.1:\d+ dropped: no complete request head", log_path.read_text())
    assert len(attack.closes) <= len(drops) <= len(attack.closes) + 100


def test_a_stalled_body_is_dropped_at_its_deadline_without_an_answer(server):
    port, log_path = server
    with _connect(port) as sock:
        sock.sendall(
            b"POST /v1/contexts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 40\r\n\r\n{\"metadata\":"
        )
        seconds, received = _seconds_until_closed(sock, BODY_TIMEOUT + SLACK + 1)
    assert BODY_TIMEOUT - 0.05 <= seconds <= BODY_TIMEOUT + SLACK
    assert received == b""
    logged = r"slow client 127\.0\.0\.1:\d+ dropped: a body stalled for 2s \(12 of 40 bytes\)"
    assert re.search(logged, log_path.read_text())


def test_a_body_arriving_slowly_but_steadily_is_served(server):
    port, _log = server
    body = b'{"metadata": {"slow": true}}'
    with _connect(port) as sock:
        sock.sendall(
            b"POST /v1/contexts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        # Each piece comes within the body's deadline, the whole takes longer than it.
        for piece in (body[:10], body[10:20], body[20:]):
            time.sleep(BODY_TIMEOUT * 0.6)
            sock.sendall(piece)
        status, headers, answer = _read_response(sock, bytearray())
    assert status == 201
    assert orjson.loads(answer)["metadata"] == {"slow": True}


def test_a_stalled_chunked_body_gets_408_problem_json(server):
    port, _log = server
    with _connect(port) as sock:
        sock.sendall(
            b"POST /v1/contexts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
        )
        started = time.monotonic()
        buf = bytearray()
        status, headers, body = _read_response(sock, buf)
        waited = time.monotonic() - started
        closed_after, rest = _seconds_until_closed(sock, 5)
    assert status == 408
    assert BODY_TIMEOUT - 0.05 <= waited <= BODY_TIMEOUT + SLACK
    assert headers["content-type"] == "application/problem+json"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    assert headers["connection"] == "close"
    assert orjson.loads(body)["type"] == "/problems/request-timeout"
    assert closed_after < 1 and rest == b"" and buf == b""


LONG_TARGET = b"/health?" + b"q" * 5000
MANY_HEADERS = b"".join(b"X-H%d: v\r\n" % i for i in range(120))


@pytest.mark.parametrize(
    ("raw", "status", "slug", "instance"),
    [
        (b"GET " + LONG_TARGET + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri-too-long", ""),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n" + MANY_HEADERS + b"\r\n", 431, "request-header-fields-too-large", ""),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431,
         "request-header-fields-too-large", ""),
        (b"POST /v1/contexts HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", 400, "invalid-header", "/v1/contexts"),
        (b"POST /v1/contexts HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400,
         "invalid-header", "/v1/contexts"),
        (b"GARBAGE\r\n\r\n", 400, "invalid-request-line", ""),
        (b"GET /health HTTP/7.1\r\nHost: x\r\n\r\n", 400, "invalid-request-line", ""),
        (b"GET /health HTTP/1.1\nHost: x\n\n", 400, "invalid-request-line", ""),
        (b"POST /v1/contexts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br, chunked\r\n\r\n", 501,
         "unsupported-transfer-coding", ""),
    ],
    ids=["line-too-long", "too-many-headers", "header-too-large", "bad-content-length", "two-content-lengths",
         "garbage", "http-version", "bare-lf", "transfer-coding"],
)
def test_gunicorn_level_errors_are_problem_json_with_a_request_id(server, raw, status, slug, instance):
    port, _log = server
    got_status, headers, body = _exchange(port, raw)
    assert got_status == status
    assert headers["content-type"] == "application/problem+json"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    document = orjson.loads(body)
    assert document["type"] == f"/problems/{slug}"
    assert document["status"] == status
    assert document["title"] and document["detail"]
    assert document["instance"] == instance
    assert b"<html" not in body.lower()


def test_keep_alive_serves_several_requests_and_pipelines_on_one_connection(server):
    port, _log = server
    with _connect(port) as sock:
        buf = bytearray()
        ids = set()
        for _ in range(3):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _body = _read_response(sock, buf)
            assert status == 200 and headers["connection"] == "keep-alive"
            ids.add(headers["x-request-id"])
        body = b'{"metadata": {"k": 1}}'
        sock.sendall(
            b"POST /v1/contexts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"GET /no/such HTTP/1.1\r\nHost: x\r\n"  # the rest of this head comes later
        )
        assert _read_response(sock, buf)[0] == 201
        assert _read_response(sock, buf)[0] == 200
        time.sleep(0.3)
        sock.sendall(b"X-Request-Id: late-1\r\n\r\n")
        status, headers, _body = _read_response(sock, buf)
        assert (status, headers["x-request-id"]) == (404, "late-1")
    assert len(ids) == 3


def test_a_kept_alive_connection_gets_a_fresh_head_deadline(server):
    port, _log = server
    with _connect(port) as sock:
        buf = bytearray()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock, buf)[0] == 200
        time.sleep(HEADER_TIMEOUT + 0.5)  # idle within keep-alive (5 s), longer than the head's deadline
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        seconds, received = _seconds_until_closed(sock, HEADER_TIMEOUT + SLACK + 1)
    assert received == b""
    assert HEADER_TIMEOUT - 0.05 <= seconds <= HEADER_TIMEOUT + SLACK


@pytest.mark.parametrize(
    ("raw", "status", "slug"),
    [
        (b"GET /" + b"a" * 5000, 414, "uri-too-long"),
        (b"GET /health HTTP/1.1\r\n" + b"X-Many: " + b"m" * 8000 + b"\r\n" + b"X-Pad: p\r\n" * 90_000, 431,
         "request-header-fields-too-large"),
    ],
    ids=["request-line", "head"],
)
def test_a_head_past_the_limits_is_refused_before_it_ends(server, raw, status, slug):
    # The client is still sending; waiting for the rest would let it hold a
    # socket up to the deadline for a request that is refused anyway.
    port, _log = server
    with _connect(port) as sock:
        started = time.monotonic()
        try:
            sock.sendall(raw)
        except ConnectionResetError:  # the answer may come before the last bytes are sent
            pass
        got, headers, body = _read_response(sock, bytearray())
        waited = time.monotonic() - started
    assert got == status
    assert waited < HEADER_TIMEOUT - 0.5
    assert headers["content-type"] == "application/problem+json"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    assert orjson.loads(body)["type"] == f"/problems/{slug}"


def test_clients_that_keep_their_end_open_after_connection_close_do_not_stall_the_worker(server):
    # The server half-closes after the answer and reads what the client still
    # sends; a client that never closes must not hold up anything else.
    port, _log = server
    lingering = []
    try:
        for _ in range(20):
            sock = _connect(port)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            lingering.append(sock)
        latencies = []
        for _ in range(40):
            started = time.perf_counter()
            assert _exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200
            latencies.append(time.perf_counter() - started)
        assert max(latencies) < 0.5, f"slowest {max(latencies) * 1000:.0f} ms"
        for sock in lingering:
            status, _headers, _body = _read_response(sock, bytearray())
            assert status == 200
            # Closed by the server within its linger (2 s) though this end stays open.
            seconds, rest = _seconds_until_closed(sock, 2.0 + SLACK + 1)
            assert seconds <= 2.0 + SLACK and rest == b""
    finally:
        for sock in lingering:
            sock.close()


def test_a_partial_head_behind_a_kept_alive_request_is_still_cut_at_its_deadline(server):
    # The thread that answers the first request sees the second one's start and
    # gives the connection back to the event loop, which keeps the head deadline.
    port, _log = server
    with _connect(port) as sock:
        buf = bytearray()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /health HTTP/1.1\r\n")
        assert _read_response(sock, buf)[0] == 200
        seconds, received = _seconds_until_closed(sock, HEADER_TIMEOUT + SLACK + 1)
    assert received == b"" and buf == b""
    assert HEADER_TIMEOUT - 0.05 <= seconds <= HEADER_TIMEOUT + SLACK


def test_busy_kept_alive_clients_do_not_keep_the_threads_from_other_connections(server):
    # 12 connections sending request after request, more than the 8 threads that
    # could each hold one: a new connection is still answered at once.
    port, _log = server
    stop = threading.Event()
    served: list[int] = []

    def busy() -> None:
        with _connect(port) as sock:
            buf = bytearray()
            while not stop.is_set():
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                served.append(_read_response(sock, buf)[0])

    clients = [threading.Thread(target=busy) for _ in range(12)]
    for client in clients:
        client.start()
    try:
        time.sleep(0.5)
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            assert _exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200
            latencies.append(time.perf_counter() - started)
    finally:
        stop.set()
        for client in clients:
            client.join(10)
    assert len(served) > 100 and set(served) == {200}
    assert max(latencies) < 0.5, f"slowest {max(latencies) * 1000:.0f} ms"
