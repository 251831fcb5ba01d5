"""The service's gunicorn worker's event loop, driven in this process over real
sockets: what it does when a socket is readable yet empty, when a client resets,
when a deadline passes, when a thread's future fails or the worker is stopping,
and when an error answer cannot be sent. The system tests (test_slow_clients.py)
show the same worker under a real gunicorn; here each edge is made to happen on
demand."""

from __future__ import annotations

import errno
import io
import selectors
import socket
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import orjson
import pytest
from gunicorn import http
from gunicorn.config import Config
from gunicorn.http import errors as h
from support import RecordingSocket

from service import workers
from service.workers import DeadlineWorker, _Conn


class _Log:
    """gunicorn's logger interface, keeping (level, message) for the asserts."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def _add(self, level, msg, *args, **_kwargs):
        self.lines.append((level, msg % args if args else msg))

    def debug(self, msg, *args, **kwargs):
        self._add("debug", msg, *args, **kwargs)

    def info(self, msg, *args, **kwargs):
        self._add("info", msg, *args, **kwargs)

    def warning(self, msg, *args, **kwargs):
        self._add("warning", msg, *args, **kwargs)

    def error(self, msg, *args, **kwargs):
        self._add("error", msg, *args, **kwargs)

    def exception(self, msg, *args, **kwargs):
        self._add("exception", msg, *args, **kwargs)

    def access(self, *args, **kwargs):
        pass

    def at(self, level: str) -> list[str]:
        return [msg for lvl, msg in self.lines if lvl == level]


@pytest.fixture
def worker(monkeypatch):
    """A DeadlineWorker set up as init_process does (thread pool, poller, method
    queue), without gunicorn's signal handlers or its run loop."""
    monkeypatch.setenv("CLIENT_HEADER_TIMEOUT", "2")
    monkeypatch.setenv("CLIENT_BODY_TIMEOUT", "3")
    cfg = Config()
    cfg.set("threads", 2)
    w = DeadlineWorker(0, 0, [], None, 30, cfg, _Log())
    w.tpool = ThreadPoolExecutor(2)
    w.poller = selectors.DefaultSelector()
    w.method_queue.init()
    yield w
    for conn in [*w.reading, *w.lingering, *w.keepalived_conns]:
        conn.close()
    w.tpool.shutdown(wait=True)
    w.poller.close()
    w.method_queue.close()
    w.tmp.close()


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def _client(listener) -> socket.socket:
    client = socket.create_connection(listener.getsockname(), timeout=5)
    time.sleep(0.01)  # the listener has it queued
    return client


def _reset(client: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0): the server's next recv fails with ECONNRESET."""
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def _accepted(worker, listener) -> tuple[socket.socket, _Conn]:
    """A client, and the worker's connection for it, reading its request in the loop."""
    client = _client(listener)
    before = set(worker.reading)
    worker.accept(listener)
    (conn,) = set(worker.reading) - before
    return client, conn


def _served(worker, listener) -> tuple[socket.socket, _Conn]:
    """A client, and the worker's connection for it, as a thread holds it (out of the loop)."""
    client = _client(listener)
    sock, addr = listener.accept()
    conn = _Conn(worker.cfg, sock, addr, listener.getsockname())
    conn.parser = worker.parser_for(conn)
    worker.nr_conns += 1
    return client, conn


def _closed_by_server(client: socket.socket) -> bool:
    client.settimeout(2)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


def _registered(worker, sock) -> bool:
    try:
        worker.poller.get_key(sock)
    except (KeyError, ValueError):
        return False
    return True


def test_accept_ignores_an_empty_backlog_and_raises_any_other_error(worker, listener):
    assert worker.accept(listener) is None  # nothing queued: EAGAIN, for real
    assert (worker.nr_conns, worker.reading) == (0, {})

    class FullTable:
        # Out of file descriptors cannot be had on demand without starving this process.
        def accept(self):
            raise OSError(errno.EMFILE, "Too many open files")

    with pytest.raises(OSError) as info:
        worker.accept(FullTable())
    assert info.value.errno == errno.EMFILE
    assert worker.nr_conns == 0


def test_a_readable_event_with_nothing_to_read_keeps_the_connection(worker, listener):
    client, conn = _accepted(worker, listener)
    with client:
        worker._on_readable(conn, conn.sock)  # a spurious wake-up: recv raises BlockingIOError
        assert conn in worker.reading and _registered(worker, conn.sock)
        assert worker.nr_conns == 1

        client.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.05)
        worker._on_readable(conn, conn.sock)
        assert bytes(worker.reading[conn].buf) == b"GET /health HTTP/1.1\r\n"


def test_a_content_length_longer_than_int_takes_goes_to_gunicorns_400_not_through_the_loop(worker, listener):
    # int() refuses more than 4,300 digits: raised in the event loop, it ended the worker.
    calls: list[str] = []
    worker.wsgi = _app(calls)
    client, conn = _accepted(worker, listener)
    with client:
        client.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"0" * 4300 + b"1\r\n\r\nx")
        time.sleep(0.05)
        worker._on_readable(conn, conn.sock)  # handed over as gunicorn's to parse
        assert worker.reading == {}
        assert worker.handle(conn) is False
        conn.close()  # the loop's part once the thread says so
        client.settimeout(5)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 ") and calls == []


def test_a_client_resetting_while_its_head_is_read_is_closed_without_a_drop(worker, listener):
    client, conn = _accepted(worker, listener)
    drops = workers.slow_client_drops()
    _reset(client)
    time.sleep(0.05)
    worker._on_readable(conn, conn.sock)  # recv raises ECONNRESET
    assert worker.reading == {} and worker.nr_conns == 0
    assert conn.sock.fileno() == -1
    assert workers.slow_client_drops() == drops  # it went away: not a slow client
    assert worker.log.at("warning") == []


def test_a_head_past_its_deadline_is_dropped_counted_and_logged_once(worker, listener):
    client, conn = _accepted(worker, listener)
    with client:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.05)
        worker._on_readable(conn, conn.sock)
        drops = workers.slow_client_drops()

        worker.murder_pending()  # within its deadline: kept
        assert conn in worker.reading

        worker.reading[conn].deadline = time.monotonic() - 0.01
        worker.murder_pending()
        assert worker.reading == {} and worker.nr_conns == 0
        assert workers.slow_client_drops() == drops + 1
        port = client.getsockname()[1]
        assert worker.log.at("warning") == [
            f"slow client 127.0.0.1:{port} dropped: no complete request head within 2s (31 bytes)"
        ]
        assert _closed_by_server(client)


def test_a_stopping_worker_closes_idle_connections_and_waits_for_started_requests(worker, listener):
    idle, idle_conn = _accepted(worker, listener)
    sending, sending_conn = _accepted(worker, listener)
    with idle, sending:
        sending.sendall(b"GET /health HTTP/1.1\r\n")
        time.sleep(0.05)
        worker._on_readable(sending_conn, sending_conn.sock)
        drops = workers.slow_client_drops()

        worker.alive = False
        worker.murder_pending()
        # The idle one carries no request: closed at once, not counted as a slow client.
        assert list(worker.reading) == [sending_conn]
        assert worker.nr_conns == 1
        assert workers.slow_client_drops() == drops
        assert _closed_by_server(idle)
        # The one that started a request keeps its deadline to finish it.
        assert _registered(worker, sending_conn.sock)


def test_a_lingering_close_ends_at_its_deadline_on_eof_on_a_reset_and_on_a_spurious_wake_up(worker, listener):
    quiet, quiet_conn = _served(worker, listener)
    leaving, leaving_conn = _served(worker, listener)
    resetting, resetting_conn = _served(worker, listener)
    with quiet, leaving:
        for conn in (quiet_conn, leaving_conn, resetting_conn):
            worker._linger(conn)
        assert set(worker.lingering) == {quiet_conn, leaving_conn, resetting_conn}
        assert quiet.recv(1) == b""  # half-closed: the client sees the end of the answer

        worker._on_lingering_readable(quiet_conn, quiet_conn.sock)  # nothing sent: BlockingIOError
        assert quiet_conn in worker.lingering

        leaving.sendall(b"rest of a body")
        leaving.shutdown(socket.SHUT_WR)
        _reset(resetting)
        time.sleep(0.05)
        worker._on_lingering_readable(leaving_conn, leaving_conn.sock)
        assert worker.lingering[leaving_conn][1] == len(b"rest of a body")  # read, still open
        worker._on_lingering_readable(leaving_conn, leaving_conn.sock)  # then its FIN
        worker._on_lingering_readable(resetting_conn, resetting_conn.sock)  # ECONNRESET
        assert list(worker.lingering) == [quiet_conn]
        assert leaving_conn.sock.fileno() == resetting_conn.sock.fileno() == -1

        worker.murder_pending()  # within the 2 s linger: kept
        assert quiet_conn in worker.lingering
        worker.lingering[quiet_conn][0] = time.monotonic() - 0.01
        worker.murder_pending()
        assert worker.lingering == {} and worker.nr_conns == 0
        assert quiet_conn.sock.fileno() == -1


def test_a_request_whose_thread_failed_or_was_cancelled_is_closed(worker, listener):
    failed, failed_conn = _served(worker, listener)
    cancelled, cancelled_conn = _served(worker, listener)
    with failed, cancelled:
        crashed: Future = Future()
        crashed.set_exception(RuntimeError("a bug in a thread"))
        worker.finish_request(failed_conn, crashed)
        never_ran: Future = Future()
        assert never_ran.cancel()
        worker.finish_request(cancelled_conn, never_ran)
        # Neither is kept alive nor read again: both close (lingering first).
        assert set(worker.lingering) == {failed_conn, cancelled_conn}
        assert worker.keepalived_conns == type(worker.keepalived_conns)()
        assert worker.reading == {}
        assert failed.recv(1) == b"" and cancelled.recv(1) == b""


def test_a_stopping_worker_hands_a_kept_alive_connection_to_gunicorns_short_linger(worker, listener):
    client, conn = _served(worker, listener)
    with client:
        worker.alive = False
        answered: Future = Future()
        answered.set_result(True)
        before = time.monotonic()
        worker.finish_request(conn, answered)
        assert list(worker.keepalived_conns) == [conn]
        assert worker.reading == {}
        assert conn.timeout <= before + 2.0 + 0.5  # capped for a stopping worker, not keepalive's 5 s
        assert _registered(worker, conn.sock)


def _parse(raw: bytes):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(raw)
        return next(http.get_parser(Config(), ours, ("127.0.0.1", 1)))


def test_an_error_after_the_request_was_parsed_names_its_path(worker):
    req = _parse(b"GET /v1/contexts/abc HTTP/1.1\r\nHost: x\r\n\r\n")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        worker.handle_error(req, ours, "", RuntimeError("a bug"))
        ours.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := theirs.recv(65536):
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 500 ")
    document = orjson.loads(body)
    assert document["instance"] == "/v1/contexts/abc"
    assert "a bug" not in body.decode()
    (logged,) = worker.log.at("error")
    assert logged.startswith("error before the app answered (request ")


def test_an_error_answer_to_a_client_that_left_is_given_up_quietly(worker):
    ours, theirs = socket.socketpair()
    theirs.close()
    with ours:
        worker.handle_error(None, ours, "", h.InvalidRequestLine("GARBAGE"))  # sendall: EPIPE
    # A unix-socket peer has no address: "-".
    (warned,) = worker.log.at("warning")
    assert warned.startswith("invalid request from -: 400 invalid-request-line (request ")
    assert worker.log.at("debug") == ["could not send the error response"]


def test_a_client_that_reset_before_the_lingering_close_is_closed_at_once(worker, listener):
    client, conn = _served(worker, listener)
    _reset(client)
    time.sleep(0.05)
    worker._linger(conn)  # shutdown(SHUT_WR) on a reset connection: ENOTCONN
    assert worker.lingering == {} and worker.nr_conns == 0
    assert conn.sock.fileno() == -1


# -- a thread serving a kept-alive connection's next requests itself ----------


def _app(calls: list[str], worker=None, stop_at: str | None = None):
    """A WSGI app answering "ok", keeping each path it serves; at `stop_at` it
    stops the worker (as SIGTERM does) while the request is being served."""

    def app(environ, start_response):
        calls.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == stop_at:
            worker.alive = False
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    return app


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def _held(worker, listener, calls, **app) -> tuple[socket.socket, _Conn]:
    """A client, and its connection as a thread takes it from the loop (request complete)."""
    worker.wsgi = _app(calls, worker, **app)
    client, conn = _served(worker, listener)
    conn.data_ready = True
    return client, conn


def _answers(client: socket.socket, count: int) -> list[bytes]:
    """The heads of `count` responses of "ok"."""
    data = b""
    client.settimeout(5)
    while data.count(b"\r\n\r\nok") < count:
        chunk = client.recv(65536)
        assert chunk, data
        data += chunk
    return [head for head in data.split(b"\r\n\r\nok")[:count]]


def test_a_thread_serves_the_requests_that_follow_on_its_connection(worker, listener):
    calls: list[str] = []
    client, conn = _held(worker, listener, calls)
    with client, conn.sock:
        client.sendall(_get("/a") + _get("/b") + _get("/c"))
        assert worker.handle(conn) is True
        # All three in this call: none went back to the loop or the pool.
        assert calls == ["/a", "/b", "/c"]
        assert conn.parser.unreader.buf.getvalue() == b""
        assert worker.method_queue._queue.empty()
        heads = _answers(client, 3)
        assert all(head.startswith(b"HTTP/1.1 200 OK") and b"Connection: keep-alive" in head for head in heads)


def test_a_next_request_still_arriving_goes_to_the_loop_with_a_fresh_head_deadline(worker, listener):
    calls: list[str] = []
    client, conn = _held(worker, listener, calls)
    port = client.getsockname()[1]
    with client, conn.sock:
        client.sendall(_get("/a") + b"GET /b HTTP/1.1\r\n")
        before = time.monotonic()
        assert worker.handle(conn) is True
        assert calls == ["/a"]
        answered: Future = Future()
        answered.set_result(True)
        worker.finish_request(conn, answered)
        # The loop reads the rest, under the head's deadline, as for any request.
        assert bytes(worker.reading[conn].buf) == b"GET /b HTTP/1.1\r\n"
        assert worker.reading[conn].deadline >= before + 2.0
        assert _registered(worker, conn.sock)
        worker.reading[conn].deadline = time.monotonic() - 0.01
        worker.murder_pending()
        assert worker.reading == {}
        assert worker.log.at("warning") == [
            f"slow client 127.0.0.1:{port} dropped: no complete request head within 2s (17 bytes)"
        ]


def test_a_thread_hands_the_connection_back_when_another_waits_for_a_thread(worker, listener):
    calls: list[str] = []
    client, conn = _held(worker, listener, calls)
    with client, conn.sock:
        client.sendall(_get("/a") + _get("/b"))
        worker._waiting = 2  # this connection's own turn, and another connection's
        assert worker.handle(conn) is True
        assert calls == ["/a"]
        assert worker._waiting == 1
        assert conn.parser.unreader.buf.getvalue() == _get("/b")  # for the loop to queue
        answered: Future = Future()
        answered.set_result(True)
        worker.finish_request(conn, answered)  # complete already: queued to a thread at once
        assert len(_answers(client, 2)) == 2
        assert calls == ["/a", "/b"]


def test_a_stopping_worker_serves_what_a_thread_holds_once_more_and_closes(worker, listener):
    calls: list[str] = []
    client, conn = _held(worker, listener, calls, stop_at="/a")
    with client, conn.sock:
        client.sendall(_get("/a") + _get("/b"))
        assert worker.handle(conn) is True  # /a was answered keep-alive: the stop came during it
        assert calls == ["/a"]
        answered: Future = Future()
        answered.set_result(True)
        worker.finish_request(conn, answered)  # /b is buffered: queued to a thread at once
        heads = _answers(client, 2)
        assert calls == ["/a", "/b"]
        assert b"Connection: keep-alive" in heads[0]
        assert b"Connection: close" in heads[1]


def test_a_thread_stops_at_max_requests_at_its_bounds_and_on_a_refused_request(worker, listener, monkeypatch):
    calls: list[str] = []
    client, conn = _held(worker, listener, calls)
    with client, conn.sock:
        worker.max_requests = 2
        client.sendall(_get("/a") + _get("/b") + _get("/c"))
        assert worker.handle(conn) is False  # the second answer closes the connection
        assert calls == ["/a", "/b"] and not worker.alive

    worker.alive, worker.max_requests, worker.nr = True, 1000, 0
    monkeypatch.setattr(workers, "HOLD_REQUESTS", 2)
    calls.clear()
    client, conn = _held(worker, listener, calls)
    with client, conn.sock:
        client.sendall(_get("/a") + _get("/b") + _get("/c"))
        assert worker.handle(conn) is True
        assert calls == ["/a", "/b"]
        assert conn.parser.unreader.buf.getvalue() == _get("/c")

    monkeypatch.setattr(workers, "HOLD_REQUESTS", 100)
    monkeypatch.setattr(workers, "HOLD_SECONDS", 0.0)
    calls.clear()
    client, conn = _held(worker, listener, calls)
    with client, conn.sock:
        client.sendall(_get("/a") + _get("/b"))
        assert worker.handle(conn) is True
        assert calls == ["/a"]

    monkeypatch.setattr(workers, "HOLD_SECONDS", 0.5)
    calls.clear()
    client, conn = _held(worker, listener, calls)
    with client, conn.sock:
        too_long = b"GET /" + b"a" * 5000
        client.sendall(_get("/a") + too_long)
        assert worker.handle(conn) is True
        assert calls == ["/a"]
        # The loop refuses it (414), as it would any connection's.
        assert conn.parser.unreader.buf.getvalue() == too_long


def test_a_client_that_closes_or_resets_after_its_answer_is_closed_by_the_thread(worker, listener, monkeypatch):
    monkeypatch.setattr(workers, "HOLD_WAIT", 5.0)  # the thread is still waiting when the client leaves
    calls: list[str] = []
    for leave in (lambda sock: sock.shutdown(socket.SHUT_WR), _reset):
        client, conn = _held(worker, listener, calls)
        with client, conn.sock:
            client.sendall(_get("/a"))
            outcome: Future = Future()
            thread = threading.Thread(target=lambda conn=conn, outcome=outcome: outcome.set_result(worker.handle(conn)))
            thread.start()
            _answers(client, 1)
            leave(client)
            assert outcome.result(timeout=5) is False
            thread.join()


def test_tls_connections_are_not_held_by_a_thread(worker, listener):
    calls: list[str] = []
    worker.cfg.set("certfile", "/nonexistent/cert.pem")  # is_ssl; the socket is plain here
    client, conn = _held(worker, listener, calls)
    with client, conn.sock:
        client.sendall(_get("/a") + _get("/b"))
        assert worker.handle(conn) is True
        assert calls == ["/a"]


def test_a_thread_does_not_wait_when_the_wait_is_off(worker, listener, monkeypatch):
    monkeypatch.setattr(workers, "HOLD_WAIT", 0.0)
    calls: list[str] = []
    client, conn = _held(worker, listener, calls)
    with client, conn.sock:
        client.sendall(_get("/a"))
        assert worker.handle(conn) is True
        assert calls == ["/a"]


def test_the_apps_answers_go_out_with_the_head_joined_to_the_body(worker, listener):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    class Application:  # what gunicorn's worker asks for its WSGI callable
        def wsgi(self):
            return app

    worker.app = Application()
    worker.load_wsgi()
    client, conn = _served(worker, listener)
    conn.data_ready = True
    real = conn.sock
    conn.sock = writes = RecordingSocket(real)
    with client, real:
        client.sendall(_get("/a"))
        assert worker.handle(conn) is True
        (written,) = writes.calls
        assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(b"\r\n\r\nok")
        assert _answers(client, 1)[0].startswith(b"HTTP/1.1 200 OK")


def test_a_stopping_worker_reads_a_kept_alive_connections_next_request_at_once(worker, listener):
    # Left for the next turn, the empty connection would be closed unanswered by
    # murder_pending (the worker is stopping) though its request had arrived.
    calls: list[str] = []
    client, conn = _held(worker, listener, calls)
    with client, conn.sock:
        answered: Future = Future()
        answered.set_result(True)
        worker.alive = False
        worker.finish_request(conn, answered)  # kept alive for gunicorn's short linger
        assert list(worker.keepalived_conns) == [conn]
        client.sendall(_get("/next"))
        time.sleep(0.05)
        worker.on_client_socket_readable(conn, conn.sock)
        worker.murder_pending()
        assert worker.reading == {}  # complete: handed to a thread, not closed
        head = _answers(client, 1)[0]
        assert calls == ["/next"]
        assert b"Connection: close" in head


# ------------------------------------------------------------ quick requests

def _serve_one(worker, listener, app, quick: bool, request: bytes = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"):
    """One request through worker.handle with the given WSGI app, its request
    parsed by service/quickparse.py (quick) or by gunicorn: (handle's result,
    what the client received until the server closed or went quiet)."""

    class Application:
        def wsgi(self):
            return app

    worker.app = Application()
    worker.load_wsgi()
    worker.quick_parsing = quick
    client, conn = _served(worker, listener)
    conn.data_ready = True
    with client, conn.sock:
        conn.parser.unreader.unread(request)  # as the event loop hands a complete request over
        kept = worker.handle(conn)
        client.settimeout(0.2)
        received = b""
        try:
            while chunk := client.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert (type(conn.parser).__name__ == "QuickParser") is quick
    return kept, received


def _ok(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "gunicorn"])
def test_a_file_wrapper_answer_is_sent_and_closed(worker, listener, quick):
    closed = []

    class Stream(io.BytesIO):
        def close(self):
            closed.append(True)
            super().close()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return environ["wsgi.file_wrapper"](Stream(b"ok"))

    kept, received = _serve_one(worker, listener, app, quick)
    assert kept is True and received.endswith(b"\r\n\r\nok") and closed == [True]


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "gunicorn"])
@pytest.mark.parametrize("limit", ["keepalive", "max_keepalived", "max_requests", "stopped"])
def test_a_request_at_a_connection_limit_is_answered_with_close(worker, listener, quick, limit):
    if limit == "keepalive":
        worker.cfg.set("keepalive", 0)
    elif limit == "max_keepalived":
        worker.max_keepalived = 0
    elif limit == "max_requests":
        worker.max_requests = 1
    else:
        worker.max_requests, worker.alive = 1, False  # already stopping: no second "Autorestarting"
    kept, received = _serve_one(worker, listener, _ok, quick)
    assert kept is False
    assert b"Connection: close\r\n" in received and received.endswith(b"ok")
    restarting = worker.log.at("info").count("Autorestarting worker after current request.")
    assert restarting == (limit == "max_requests")


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "gunicorn"])
def test_an_app_failing_before_its_answer_gets_a_problem_500(worker, listener, quick):
    def app(environ, start_response):
        raise RuntimeError("a bug")

    kept, received = _serve_one(worker, listener, app, quick)
    assert kept is False
    head, body = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 500 ") and orjson.loads(body)["instance"] == "/a"
    assert b"a bug" not in received


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "gunicorn"])
def test_an_app_failing_after_its_head_is_cut_off_and_logged(worker, listener, quick):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "4")])
        yield b"ok"
        raise RuntimeError("a bug")

    kept, received = _serve_one(worker, listener, app, quick)
    assert kept is False
    assert received == b"" or received.startswith(b"HTTP/1.1 200 OK")
    assert b"500" not in received
    assert worker.log.at("exception") == ["Error handling request"]


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "gunicorn"])
def test_a_socket_error_in_the_app_is_logged_and_closes(worker, listener, quick):
    def app(environ, start_response):
        raise OSError(errno.EIO, "disk")

    kept, received = _serve_one(worker, listener, app, quick)
    assert kept is False and received == b""
    assert worker.log.at("exception") == ["Socket error processing request."]


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "gunicorn"])
def test_a_failing_post_request_hook_is_logged_and_the_answer_stands(worker, listener, quick):
    def post_request(worker, req, environ, resp):
        raise RuntimeError("hook")

    worker.cfg.set("post_request", post_request)
    kept, received = _serve_one(worker, listener, _ok, quick)
    assert kept is True and received.endswith(b"ok")
    assert worker.log.at("exception") == ["Exception in post_request hook"]


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "gunicorn"])
def test_the_app_sees_the_same_environ_and_body_either_way(worker, listener, quick):
    seen = {}

    def app(environ, start_response):
        seen.update({k: v for k, v in environ.items() if isinstance(v, (str, bool, tuple))})
        seen["body"] = environ["wsgi.input"].read()
        return _ok(environ, start_response)

    request = b"POST /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\nabc"
    kept, received = _serve_one(worker, listener, app, quick, request)
    assert kept is True and received.endswith(b"ok")
    port = seen.pop("REMOTE_PORT")
    assert port.isdigit() and seen.pop("SERVER_PORT").isdigit()
    assert seen == {
        "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "wsgi.input_terminated": True, "SERVER_SOFTWARE": seen["SERVER_SOFTWARE"], "REQUEST_METHOD": "POST",
        "QUERY_STRING": "x=1", "RAW_URI": "/a%20b?x=1", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "h",
        "CONTENT_LENGTH": "3", "HTTP_X_A": "1,2", "wsgi.url_scheme": "http", "REMOTE_ADDR": "127.0.0.1",
        "SERVER_NAME": "127.0.0.1", "PATH_INFO": "/a b", "SCRIPT_NAME": "", "body": b"abc",
    }
