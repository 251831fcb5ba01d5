"""The gunicorn worker the service runs: gthread with deadlines on slow clients.

gunicorn's gthread worker hands a connection to a thread as soon as it has sent
anything, and the thread then blocks reading the rest of the request. A client
that sends half a head and stops, or drips one byte every half second, keeps
that thread for as long as it likes; with 2 workers of 4 threads, 8 such
connections stop the service.

`DeadlineWorker` reads a request's head, and a body of known length, in the
worker's event loop with non-blocking reads, and gives the connection to a
thread only once the request is complete. A slow client therefore holds a
socket and a buffer, never a thread, and is dropped when it misses its
deadline: the whole head within CLIENT_HEADER_TIMEOUT seconds, a body that makes
no progress for CLIENT_BODY_TIMEOUT seconds. Bodies the loop cannot frame
(chunked, `Expect: 100-continue`, longer than MAX_BODY_BYTES) are read by the
thread with CLIENT_BODY_TIMEOUT as the socket's timeout, so a stall there
ends in 408 instead of a thread held for good; the same timeout bounds a
client that does not read its response.

Closing after "Connection: close" (half-close, then read what the client
still sends) happens in the event loop too: gthread did it with a blocking read
of up to 2 s there, so every client that kept its end open stopped the worker.

gunicorn's own answers to requests it cannot parse (400, 414, 431, ...) are
problem+json with an X-Request-Id, like every answer of the app.
"""

from __future__ import annotations

import errno
import io
import re
import selectors
import socket
import threading
import time
import uuid
from datetime import datetime
from functools import partial
from urllib.parse import quote

import orjson
from gunicorn import http, util
from gunicorn.http import errors as h
from gunicorn.http import wsgi
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import TConn, ThreadWorker

from . import metrics
from .config import Settings
from .problems import INTERNAL_DETAIL, PROBLEM_JSON, Problem
from .quickparse import QuickParser, QuickRequest, content_length, quick_parsing_applies

# A thread that answered a kept-alive request serves the connection's next one
# itself when its bytes arrive within HOLD_WAIT seconds, instead of handing the
# socket back to the event loop and queueing it for a thread again (a pipe
# write, a selector turn, an executor submit and two thread wake-ups per
# request: about two thirds of the service's own cost on a short read). It
# stops at HOLD_REQUESTS requests or HOLD_SECONDS, whichever comes first, and
# whenever another connection waits for a thread, so a busy client cannot keep
# a thread from the others; a request that is not complete by then goes to the
# event loop with its deadlines, as any other.
HOLD_WAIT = 0.002
HOLD_REQUESTS = 100
HOLD_SECONDS = 0.5

# What gunicorn's close_graceful allows a closing client: 2 s, 64 KiB.
_LINGER_SECONDS = 2.0
_LINGER_MAX_BYTES = 65536

_drops = 0
_drops_lock = threading.Lock()


def slow_client_drops() -> int:
    """How many connections this worker process dropped for missing a client deadline."""
    return _drops


def _count_drop() -> None:
    global _drops
    with _drops_lock:
        _drops += 1
    metrics.slow_client_dropped()


# gunicorn's parse errors -> (status, slug, title, detail). The detail is ours:
# gunicorn's messages repeat client input, which has no place in a response.
_CLIENT_ERRORS: tuple[tuple[type[Exception], int, str, str, str], ...] = (
    (h.LimitRequestLine, 414, "uri-too-long", "URI Too Long", "The request line is longer than the server accepts."),
    (
        h.LimitRequestHeaders,
        431,
        "request-header-fields-too-large",
        "Request Header Fields Too Large",
        "The request has more header fields, or longer ones, than the server accepts.",
    ),
    (h.InvalidRequestLine, 400, "invalid-request-line", "Bad Request", "The request line is not valid HTTP/1.1."),
    (h.InvalidRequestMethod, 400, "invalid-request-line", "Bad Request", "The request method is not valid."),
    (h.InvalidHTTPVersion, 400, "invalid-request-line", "Bad Request", "The HTTP version is not supported."),
    (h.ObsoleteFolding, 400, "invalid-header", "Bad Request", "A header field uses obsolete line folding."),
    (h.InvalidHeaderName, 400, "invalid-header", "Bad Request", "A header field name is not valid."),
    (h.InvalidHeader, 400, "invalid-header", "Bad Request", "A header field is not valid"),
    (
        h.UnsupportedTransferCoding,
        501,
        "unsupported-transfer-coding",
        "Not Implemented",
        "The Transfer-Encoding is not supported.",
    ),
    (h.ExpectationFailed, 417, "expectation-failed", "Expectation Failed", "The Expect header cannot be met."),
    (
        (h.InvalidChunkSize, h.ChunkMissingTerminator, h.InvalidChunkExtension),
        400,
        "invalid-chunked-body",
        "Bad Request",
        "The chunked body is not valid.",
    ),
    (h.ForbiddenProxyRequest, 403, "forbidden", "Forbidden", "Requests from this proxy are not accepted."),
    (
        (h.InvalidProxyLine, h.InvalidProxyHeader, h.InvalidSchemeHeaders),
        400,
        "bad-request",
        "Bad Request",
        "The request is not valid.",
    ),
    (h.InvalidH2CPreface, 400, "bad-request", "Bad Request", "The HTTP/2 connection preface is not valid."),
)


def problem_for(exc: BaseException) -> tuple[int, str, str, str]:
    """(status, slug, title, detail) of the problem that answers a request gunicorn failed on."""
    if isinstance(exc, (h.InvalidResponseHeader, h.InvalidResponseHeaderName, h.ConfigurationProblem)):
        return 500, "internal-error", "Internal Server Error", INTERNAL_DETAIL
    for kinds, status, slug, title, detail in _CLIENT_ERRORS:
        if isinstance(exc, kinds):
            if isinstance(exc, h.InvalidHeader) and not isinstance(exc, h.InvalidHeaderName):
                # Named when it is a field name (gunicorn's own, or the client's);
                # gunicorn may also hand over a whole header line, not repeated.
                name = str(getattr(exc, "hdr", "") or "")
                detail = f"{detail}: {name}." if _FIELD_NAME.fullmatch(name) else f"{detail}."
            return status, slug, title, detail
    return 500, "internal-error", "Internal Server Error", INTERNAL_DETAIL


_FIELD_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")


def problem_response(status: int, slug: str, title: str, detail: str, path: str | None, request_id: str) -> bytes:
    """A complete HTTP/1.1 response carrying a problem document; the connection closes after it."""
    body = orjson.dumps(
        {
            "type": f"/problems/{slug}",
            "title": title,
            "status": status,
            "detail": detail,
            # The raw target is already percent-encoded; keep '%' as it is.
            "instance": quote(path, safe="/:@!$&'()*+,;=-._~%") if path else "",
        }
    )
    head = (
        f"HTTP/1.1 {status} {title}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {PROBLEM_JSON}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-Id: {request_id}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def body_length_to_buffer(head: bytes, limit: int) -> int | None:
    """How many body bytes follow this request head, when the event loop should
    read them itself: 0 for no body; None when a thread must read what follows
    (chunked, `Expect: 100-continue`, longer than limit), or when the framing is
    wrong and gunicorn's parser is to answer 400."""
    lengths = []
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name in (b"transfer-encoding", b"expect"):
            return None
        if name == b"content-length":
            lengths.append(value.strip())
    if not lengths:
        return 0
    length = content_length(lengths[0]) if len(lengths) == 1 else None
    if length is None:
        return None
    return length if length <= limit else None


class _Reading:
    """A connection whose request the event loop is still receiving."""

    __slots__ = ("buf", "deadline", "head_end", "need")

    def __init__(self, buf: bytes, deadline: float) -> None:
        self.buf = bytearray(buf)
        self.deadline = deadline
        self.head_end = -1  # index past the blank line once the head is complete
        self.need = 0  # bytes of head and body to wait for once the head is complete


class _Conn(TConn):
    """A TConn whose socket, once in a thread, times out instead of blocking for good."""

    io_timeout: float = 10.0

    def init(self) -> None:
        super().init()
        self.sock.settimeout(self.io_timeout)


class _Response(wsgi.Response):
    """gunicorn's Response, sending the head with the first body bytes in one
    write: two writes put the head and the body in two TCP segments, and the
    client wakes up once for each."""

    _head = b""

    def default_headers(self):
        # gunicorn's, with the Date line made once a second instead of per answer.
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        version = self.req.version
        headers = [
            f"HTTP/{version[0]}.{version[1]} {self.status}\r\n",
            f"Server: {self.version}\r\n",
            date_line(time.time()),
            f"Connection: {connection}\r\n",
        ]
        if self.chunked:
            headers.append("Transfer-Encoding: chunked\r\n")
        return headers

    def send_headers(self):
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend([f"{name}: {value}\r\n" for name, value in self.headers])
        self._head = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True

    def _flush_head(self) -> None:
        head, self._head = self._head, b""
        if head:
            util.write(self.sock, head)

    def _emit_body(self, data):
        if self._head and not self.chunked:
            head, self._head = self._head, b""
            util.write(self.sock, head + data)
            return
        self._flush_head()
        super()._emit_body(data)

    def write_file(self, respiter):
        self.send_headers()
        self._flush_head()
        return super().write_file(respiter)

    def close(self):
        self.send_headers()
        self._flush_head()
        super().close()


_date = (-1, "")


def date_line(now: float) -> str:
    """The Date header line for the second `now` falls in (util.http_date's
    format), formatted once a second: 5-8 µs an answer otherwise."""
    global _date
    second = int(now)
    cached = _date
    if cached[0] != second:
        cached = _date = (second, f"Date: {util.http_date(second)}\r\n")
    return cached[1]


# gunicorn's HTTP/1 response -> the one that joins the head to the body; others
# (HTTP/2 frames its own way) stay as they are.
_JOINED_HEAD = {wsgi.Response: _Response}


class _GuardedInput:
    """wsgi.input that turns a stalled read (the socket's timeout) into 408."""

    def __init__(self, stream, local: threading.local) -> None:
        self._stream = stream
        self._local = local

    def _guard(self, method, *args):
        try:
            return method(*args)
        except TimeoutError:
            self._local.stalled = True
            raise Problem(
                408,
                "The request body stopped arriving; the connection is closed.",
                slug="request-timeout",
                title="Request Timeout",
            ) from None

    def read(self, *args):
        return self._guard(self._stream.read, *args)

    def readline(self, *args):
        return self._guard(self._stream.readline, *args)

    def readlines(self, *args):
        return self._guard(self._stream.readlines, *args)

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class DeadlineWorker(ThreadWorker):
    """gthread that gives a thread only complete requests, and drops clients that miss a deadline."""

    # Plain requests are parsed by service/quickparse.py when the configuration
    # allows it (quick_parsing_applies); False sends every one through gunicorn's
    # parser (bench/floor.py compares the two).
    quick_parsing = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        settings = Settings.from_env()
        self.header_timeout = settings.client_header_timeout
        self.body_timeout = settings.client_body_timeout
        # Bodies the app may accept are buffered here; a longer Content-Length
        # is refused by the app (413) before it reads a byte.
        self.body_buffer_limit = settings.max_body_bytes
        self.reading: dict[_Conn, _Reading] = {}
        self.lingering: dict[_Conn, list] = {}  # closing: [deadline, bytes drained]
        self._local = threading.local()
        # Connections handed to the thread pool that no thread has started yet.
        self._waiting = 0
        self._waiting_lock = threading.Lock()

    # -- the event loop ----------------------------------------------------

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Conn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.io_timeout = self.body_timeout
        if self.cfg.is_ssl or negotiation.prior_knowledge_allowed(self.cfg, client_addr):
            # TLS and HTTP/2 need a thread from the first byte (handshake,
            # preface); the service serves neither, so they keep gunicorn's way.
            client_sock.setblocking(True)
            self.enqueue_req(conn)
            return
        conn.parser = self.parser_for(conn)
        self._read_request(conn, b"")

    def parser_for(self, conn: _Conn):
        """service/quickparse.py's parser where it applies, else gunicorn's."""
        if self.quick_parsing and quick_parsing_applies(self.cfg, conn.server):
            return QuickParser(self.cfg, conn.sock, conn.client, conn.server)
        return http.get_parser(self.cfg, conn.sock, conn.client)

    def on_client_socket_readable(self, conn, client):
        # A kept-alive connection starts its next request: its head gets the
        # full deadline from now, not from when the previous answer went out.
        self.keepalived_conns.remove(conn)
        self.poller.unregister(client)
        self._read_request(conn, b"")
        # Read what made it readable now, not on the next turn: a stopping worker
        # closes the connections that have sent nothing (murder_pending), and
        # this one's request would be cut off unanswered.
        self._on_readable(conn, client)

    def _read_request(self, conn: _Conn, buffered: bytes) -> None:
        state = _Reading(buffered, time.monotonic() + self.header_timeout)
        self.reading[conn] = state
        if buffered:
            handover = self._complete(conn, state)
            if handover is not None:
                handover()
                return
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: _Conn, client) -> None:
        state = self.reading[conn]
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            # The client went away (or closed an idle keep-alive): nothing to answer.
            self._close_reading(conn)
            return
        state.buf += data
        if state.head_end >= 0:
            state.deadline = time.monotonic() + self.body_timeout  # progress resets the body's deadline
        handover = self._complete(conn, state)
        if handover is not None:
            self.poller.unregister(conn.sock)
            handover()

    def _complete(self, conn: _Conn, state: _Reading):
        """What to do with a connection whose request is complete (or certain
        to be refused): a callable that hands it to a thread, or None while
        more bytes are needed."""
        buf = state.buf
        if state.head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                line_end = buf.find(b"\r\n")
                line_limit = self.cfg.limit_request_line
                if line_limit > 0 and (line_end if line_end >= 0 else len(buf) - 2) > line_limit:
                    return partial(self._refuse, conn, h.LimitRequestLine(max(line_end, len(buf)), line_limit))
                if len(buf) > self._max_head():
                    return partial(self._refuse, conn, h.LimitRequestHeaders("request head too large"))
                if buf.count(b"\n") != buf.count(b"\r\n"):
                    # A bare LF: gunicorn's parser refuses it without reading more.
                    return partial(self._dispatch, conn, state)
                return None
            state.head_end = end + 4
            length = body_length_to_buffer(bytes(buf[:end]), self.body_buffer_limit)
            if length is None:
                return partial(self._dispatch, conn, state)
            state.need = state.head_end + length
            state.deadline = time.monotonic() + self.body_timeout
        if len(buf) >= state.need:
            return partial(self._dispatch, conn, state)
        return None

    def _max_head(self) -> int:
        # What gunicorn's parser accepts at most, plus the request line and CRLFs.
        fields = self.cfg.limit_request_fields or 100
        return self.cfg.limit_request_line + 2 + fields * (self.cfg.limit_request_field_size + 2) + 2

    def enqueue_req(self, conn):
        with self._waiting_lock:
            self._waiting += 1
        super().enqueue_req(conn)

    def _dispatch(self, conn: _Conn, state: _Reading) -> None:
        del self.reading[conn]
        conn.parser.unreader.unread(bytes(state.buf))
        conn.data_ready = True  # gthread's own wait for a first byte is not needed
        self.enqueue_req(conn)

    def _refuse(self, conn: _Conn, exc: Exception) -> None:
        del self.reading[conn]
        fs = self.tpool.submit(self._answer_refusal, conn, exc)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def _answer_refusal(self, conn: _Conn, exc: Exception) -> bool:
        conn.sock.setblocking(True)
        conn.sock.settimeout(self.body_timeout)
        self.handle_error(None, conn.sock, conn.client, exc)
        return False

    def _close_reading(self, conn: _Conn) -> None:
        self.reading.pop(conn, None)
        # A connection in self.reading is registered: _read_request registers it
        # and every way out of self.reading unregisters it.
        self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        """Also drop the connections that missed their head or body deadline."""
        super().murder_pending()
        now = time.monotonic()
        for conn, state in list(self.reading.items()):
            if not state.buf and not self.alive:
                self._close_reading(conn)  # a stopping worker need not wait for an idle connection
            elif state.deadline <= now:
                self._drop(conn, state)
        for conn, (deadline, _drained) in list(self.lingering.items()):
            if deadline <= now:
                self._close_lingering(conn)

    def _drop(self, conn: _Conn, state: _Reading) -> None:
        _count_drop()
        if state.head_end < 0:
            what = f"no complete request head within {self.header_timeout:g}s ({len(state.buf)} bytes)"
        else:
            got = len(state.buf) - state.head_end
            what = f"a body stalled for {self.body_timeout:g}s ({got} of {state.need - state.head_end} bytes)"
        self.log.warning("slow client %s dropped: %s", _peer(conn.client), what)
        self._close_reading(conn)

    def finish_request(self, conn, fs):
        try:
            keep = fs.result() if not fs.cancelled() else False
        except Exception:
            keep = False
        if not keep:
            self._linger(conn)
            return
        if keep is True and conn.parser is not None and self.alive:
            # gthread hands a connection with pipelined bytes straight to a
            # thread; here they start the next request in the event loop.
            pending = conn.parser.unreader.take_buffered()
            if pending:
                conn.sock.setblocking(False)
                self._read_request(conn, pending)
                return
        super().finish_request(conn, fs)

    def _linger(self, conn) -> None:
        """Close after the answer as RFC 9112 9.6 asks (FIN, then read what the
        client still sends), in the event loop. gthread does it in the loop
        with a blocking read of up to 2 s: each client that kept its end open
        after "Connection: close" stopped the whole worker for 2 s."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_lingering_readable, conn))
        except (OSError, ValueError):
            self.nr_conns -= 1
            conn.close()
            return
        self.lingering[conn] = [time.monotonic() + _LINGER_SECONDS, 0]

    def _on_lingering_readable(self, conn, client) -> None:
        entry = self.lingering[conn]
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        entry[1] += len(data)
        if not data or entry[1] >= _LINGER_MAX_BYTES:
            self._close_lingering(conn)

    def _close_lingering(self, conn) -> None:
        del self.lingering[conn]
        # Registered: _linger adds a connection here only once it is.
        self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    # -- in a thread -------------------------------------------------------

    def load_wsgi(self):
        super().load_wsgi()
        app = self.wsgi
        local = self._local

        def guarded(environ, start_response):
            if environ["wsgi.input"].__class__ is io.BytesIO:
                # A request QuickParser read: its body is in memory (it cannot
                # stall) and its response joins the head to the body already.
                return app(environ, start_response)
            environ["wsgi.input"] = _GuardedInput(environ["wsgi.input"], local)
            response = start_response.__self__  # gunicorn's start_response is its Response's bound method
            # Nothing is written yet: from here on an HTTP/1 head goes out with the
            # body (_Response only adds methods, so the instance fits it as is).
            response.__class__ = _JOINED_HEAD.get(type(response), type(response))

            def start(status, headers, exc_info=None):
                if local.stalled:
                    # The 408 says so: the rest of the body is unknown, the
                    # connection cannot carry another request.
                    response.force_close()
                return start_response(status, headers, exc_info)

            return app(environ, start)

        self.wsgi = guarded

    def handle(self, conn):
        """Serve the connection's request, then (see HOLD_WAIT) the ones that
        follow it on the connection while they arrive quickly, nobody else
        waits for a thread and the worker is not stopping. True when the
        event loop is to keep the connection, False to close it."""
        with self._waiting_lock:
            self._waiting -= 1
        keep = self._serve(conn)
        if conn.is_http2 or self.cfg.is_ssl:
            return keep
        served = 1
        stint_end = time.monotonic() + HOLD_SECONDS
        while keep is True and served < HOLD_REQUESTS and self.alive and self._waiting <= 0:
            if time.monotonic() >= stint_end:
                break
            ready = self._next_request_here(conn)
            if ready is None:
                break
            if ready is False:
                return False
            keep = self._serve(conn)
            served += 1
        return keep

    def _serve(self, conn):
        self._local.stalled = False
        return super().handle(conn)

    def _next_request_here(self, conn: _Conn) -> bool | None:
        """Wait up to HOLD_WAIT for the connection's next request: True when it
        is complete in the parser's buffer (head, and a body of known length),
        None when the event loop is to read the rest or refuse it (what
        arrived stays buffered for it), False when the client closed."""
        unreader = conn.parser.unreader
        state = _Reading(unreader.take_buffered(), 0.0)
        sock = conn.sock
        wait_until = time.monotonic() + HOLD_WAIT
        try:
            while True:
                if state.buf:
                    handover = self._complete(conn, state)
                    if handover is not None:
                        # A refusal is answered by the loop, as for any connection.
                        return True if handover.func == self._dispatch else None
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    return None
                sock.settimeout(remaining)
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    return None
                except OSError:
                    return False
                if not data:
                    return False
                state.buf += data
        finally:
            sock.settimeout(conn.io_timeout)
            if state.buf:
                unreader.unread(bytes(state.buf))

    def handle_request(self, req, conn):
        try:
            if isinstance(req, QuickRequest):
                return self._handle_quick_request(req, conn)
            return super().handle_request(req, conn)
        except TimeoutError:
            # The client stopped reading its response for CLIENT_BODY_TIMEOUT.
            _count_drop()
            self.log.warning(
                "slow client %s dropped: it read no response for %gs", _peer(conn.client), self.body_timeout
            )
            return False

    def _handle_quick_request(self, req: QuickRequest, conn) -> bool:
        """gthread's handle_request for a request QuickParser parsed: its environ
        comes from the parser, its body is in memory (no stall to guard against),
        and its head goes out with the body. The rest is gthread's, step for step."""
        environ = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp = _Response(req, conn.sock, self.cfg)
            environ = conn.parser.environ(req, conn.sock, resp)
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            elif len(self.keepalived_conns) >= self.max_keepalived:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                self.log.debug("Closing connection.")
                return False
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
        return True

    def _keepalive_after(self, conn, keepalive):
        if getattr(self._local, "stalled", False):
            self._local.stalled = False
            _count_drop()
            self.log.warning("slow client %s dropped: its body stalled for %gs", _peer(conn.client), self.body_timeout)
            return False
        return super()._keepalive_after(conn, keepalive)

    def handle_error(self, req, client, addr, exc):
        """Answer a request gunicorn could not parse (or a crash before the app
        answered) with problem+json and a fresh X-Request-Id; never HTML."""
        request_id = uuid.uuid4().hex
        status, slug, title, detail = problem_for(exc)
        if req is None:
            req = getattr(exc, "req", None)
        path = getattr(req, "path", None) if req is not None else None
        if status >= 500:
            self.log.error("error before the app answered (request %s)", request_id, exc_info=exc)
        else:
            self.log.warning(
                "invalid request from %s: %s %s (request %s)", _peer(addr), status, slug, request_id
            )
        try:
            client.sendall(problem_response(status, slug, title, detail, path, request_id))
        except OSError:
            self.log.debug("could not send the error response")


def _peer(addr) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr or "-")
