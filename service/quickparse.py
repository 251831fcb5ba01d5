"""The plain HTTP/1.1 request, parsed in two regular-expression passes.

gunicorn's parser reads every request HTTP/1.x allows, line by line in Python,
and `wsgi.create` then builds the environ header by header: about 50 µs of CPU
for a short GET on a warm worker, the largest item of the worker's own cost
after the app. Nearly every request the service gets is of one plain kind: an
origin-form target, HTTP/1.1, printable-ASCII header fields, no body or one of
known length that the event loop has already buffered whole (service/workers.py).

`QuickParser` recognises exactly that kind and builds its environ directly.
Anything else it declines, byte for byte as it came, to gunicorn's own parser:
other methods or versions, a fragment or an absolute target, obs-text, folding,
a field name with an underscore, a repeated Host or Content-Type, more than one
Content-Length, Transfer-Encoding, Expect, Upgrade, a Connection other than
keep-alive, a head at or past gunicorn's limits, a body not yet buffered. So a
request either gets the environ gunicorn would give it, or is gunicorn's to
parse and, if need be, to refuse; tests/unit/test_quickparse.py holds the two
environs equal on generated requests.
"""

from __future__ import annotations

import io
import os
import re

from gunicorn.http.message import _ip_in_allow_list
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import FileWrapper, WSGIErrorsWrapper, _make_early_hints_callback
from gunicorn.util import unquote_to_wsgi_str

from gunicorn import SERVER_SOFTWARE

# What gunicorn's Message caps a request line and a header field at, whatever
# the configuration says above it.
_MAX_REQUEST_LINE = 8190
_MAX_FIELD = 8190

# The request line: a method the service routes, an origin-form target of
# printable ASCII without '#' (gunicorn's target check, fragments aside), HTTP/1.1.
_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (/[\x21\x22\x24-\x7e]*) HTTP/1\.1\r\n")
# A field line: a token without '_' (gunicorn drops or refuses those), a value
# of printable ASCII, spaces and tabs (no obs-text, no controls).
_NAME = rb"[!#$%&'*+.^`|~0-9A-Za-z-]+"
_VALUE = rb"[\x20-\x7e\t]*"
_FIELD = re.compile(rb"(" + _NAME + rb"):(" + _VALUE + rb")\r\n")
_FIELDS = re.compile(rb"(?:" + _NAME + rb":" + _VALUE + rb"\r\n)*\r\n")

# Fields whose meaning gunicorn's parser acts on beyond mapping them into the
# environ: framing, expectations, protocol switches. Their requests are its own.
_DECLINED = frozenset({"TRANSFER-ENCODING", "EXPECT", "UPGRADE", "HTTP2-SETTINGS", "TE", "TRAILER"})
# Fields of which a second one makes gunicorn refuse the request.
_SINGLETONS = frozenset({"HOST", "CONTENT-TYPE", "CONTENT-LENGTH"})


def content_length(value: bytes | str) -> int | None:
    """A Content-Length value (bytes, or a str of ASCII) as a number, or None
    when it is one the service leaves to gunicorn's parser (which answers 400):
    not all digits, or past 18 of them, where int() may refuse it (4,300
    digits; raised in the event loop, that ended the worker) and no body this
    service takes is."""
    if not value.isdigit() or len(value) > 18:
        return None
    return int(value)


class QuickRequest:
    """What gunicorn's worker, Response and access log read of a request."""

    __slots__ = ("method", "uri", "path", "query", "headers", "body", "scheme", "environ", "must_close",
                 "peer_addr", "remote_addr", "req_number")

    version = (1, 1)
    fragment = ""
    proxy_protocol_info = None
    trailers = ()
    _expected_100_continue = False

    def should_close(self) -> bool:
        # HTTP/1.1 with no Connection field or "keep-alive": only the server closes.
        return self.must_close

    def force_close(self) -> None:
        self.must_close = True


class QuickParser(RequestParser):
    """gunicorn's RequestParser, which first tries the plain request itself."""

    def __init__(self, cfg, source, source_addr, server_addr) -> None:
        super().__init__(cfg, source, source_addr)
        line = cfg.limit_request_line
        self._line_limit = _MAX_REQUEST_LINE if line <= 0 or line > _MAX_REQUEST_LINE else line
        fields = cfg.limit_request_fields
        self._fields_limit = fields if fields > 0 else 32768
        size = cfg.limit_request_field_size
        self._field_size_limit = size if 0 < size <= _MAX_FIELD else _MAX_FIELD
        # Scheme fields count only from a peer in forwarded_allow_ips, as in
        # gunicorn's HeaderPolicy; the peer is the connection's, fixed.
        trusted = not isinstance(source_addr, tuple) or _ip_in_allow_list(
            source_addr[0], cfg.forwarded_allow_ips, cfg.forwarded_allow_networks()
        )
        self._scheme_fields = dict(cfg.secure_scheme_headers) if trusted else {}
        self._connection_environ = _connection_environ(cfg, source_addr, server_addr)

    def __next__(self):
        if self.mesg is not None and self.mesg.should_close():
            raise StopIteration()
        if not self.finish_body():
            raise StopIteration()
        buffered = self.unreader.take_buffered()
        request = self.parse(buffered) if buffered else None
        if request is None:
            self.unreader.unread(buffered)
            return super().__next__()
        self.req_count += 1
        request.req_number = self.req_count
        self.mesg = request
        return request

    next = __next__

    def finish_body(self, deadline=None, max_bytes=None):
        # A quick request's body was buffered whole: nothing of it is on the socket.
        if isinstance(self.mesg, QuickRequest):
            return True
        return super().finish_body(deadline, max_bytes)

    def parse(self, buf: bytes) -> QuickRequest | None:
        """The request at the start of buf, with its environ (minus what
        `environ` adds), and the bytes after it put back for the next one;
        None (nothing consumed) when it is not a plain one, or not all here."""
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        line = _REQUEST_LINE.match(buf)
        if line is None or line.end() - 2 >= self._line_limit:
            return None
        fields_start = line.end()
        block = buf[fields_start:head_end + 4]  # the field lines and the blank line
        if len(block) > self._field_size_limit or _FIELDS.fullmatch(block) is None:
            return None
        fields = _FIELD.findall(block)
        if len(fields) > self._fields_limit:
            return None
        target = line[2].decode("ascii")
        if target.startswith("//"):
            return None
        path, _, query = target.partition("?")
        method = line[1].decode("ascii")
        environ = {
            "REQUEST_METHOD": method,
            "QUERY_STRING": query,
            "RAW_URI": target,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "PATH_INFO": unquote_to_wsgi_str(path) if "%" in path else path,
        }
        headers = []
        seen = set()
        scheme = None
        length = 0
        for raw_name, raw_value in fields:
            name = raw_name.decode("ascii").upper()
            value = raw_value.strip(b" \t").decode("ascii")
            if name in self._scheme_fields:
                this = "https" if value == self._scheme_fields[name] else "http"
                if scheme is not None and this != scheme:
                    return None  # gunicorn refuses conflicting scheme fields
                scheme = this
            if name in _SINGLETONS:
                if name in seen:
                    return None
                seen.add(name)
                if name == "CONTENT-TYPE":
                    environ["CONTENT_TYPE"] = value
                    headers.append((name, value))
                    continue
                if name == "CONTENT-LENGTH":
                    length = content_length(value)
                    if length is None:
                        return None
                    environ["CONTENT_LENGTH"] = value
                    headers.append((name, value))
                    continue
            elif name in _DECLINED:
                return None
            elif name == "CONNECTION":
                if value.lower() != "keep-alive":
                    return None
            headers.append((name, value))
            key = "HTTP_" + name.replace("-", "_")
            if key in environ:
                environ[key] += "," + value
            else:
                environ[key] = value
        body_start = head_end + 4
        body_end = body_start + length
        if len(buf) < body_end:
            return None
        if len(buf) > body_end:
            self.unreader.unread(buf[body_end:])
        request = QuickRequest()
        request.method = method
        request.uri = target
        request.path = path
        request.query = query
        request.headers = headers
        request.body = io.BytesIO(buf[body_start:body_end])
        request.scheme = scheme or "http"
        request.environ = environ
        request.must_close = False
        request.peer_addr = request.remote_addr = self.source_addr
        return request

    def environ(self, request: QuickRequest, sock, response) -> dict:
        """The whole WSGI environ gunicorn's `wsgi.create` builds for this request
        (with "wsgi.multithread" set, as its threaded worker does)."""
        environ = self._connection_environ.copy()
        environ.update(request.environ)
        environ["wsgi.input"] = request.body
        environ["wsgi.url_scheme"] = request.scheme
        environ["gunicorn.socket"] = sock
        environ["wsgi.early_hints"] = _make_early_hints_callback(request, sock, response)
        return environ


def quick_parsing_applies(cfg, server_addr) -> bool:
    """Whether this configuration serves plain requests the way QuickParser does:
    plain HTTP/1 on TCP, no PROXY protocol, no SCRIPT_NAME (and so no path
    rewriting), gunicorn's python or C parser with its default strictness."""
    return (
        not cfg.is_ssl
        and getattr(cfg, "protocol", "http") == "http"
        and cfg.proxy_protocol == "off"
        and not cfg.permit_obsolete_folding
        and not cfg.strip_header_spaces
        and not cfg.casefold_http_method
        and cfg.header_map in ("drop", "refuse")
        and not os.environ.get("SCRIPT_NAME", "")
        and isinstance(server_addr, tuple)
    )


class ErrorsStream(WSGIErrorsWrapper):
    """gunicorn's wsgi.errors, finding the log handlers' streams when written to.

    gunicorn builds its wrapper per request, because it keeps the streams of the
    handlers it found, which a USR1 reopen replaces; building one took 5% of a
    busy worker's Python time (py-spy --gil). Writes to wsgi.errors are rare:
    this one is built once per connection and looks the streams up per write."""

    def __init__(self, cfg) -> None:  # gunicorn's __init__ is the lookup, done on write
        self._cfg = cfg

    @property
    def streams(self) -> list:
        return WSGIErrorsWrapper(self._cfg).streams


def _connection_environ(cfg, client, server) -> dict:
    """The environ entries that stay the same for every request on a connection."""
    environ = {
        "wsgi.errors": ErrorsStream(cfg),
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": cfg.workers > 1,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        "wsgi.input_terminated": True,
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SCRIPT_NAME": "",
    }
    if isinstance(client, str):
        environ["REMOTE_ADDR"] = client
    elif isinstance(client, bytes):
        environ["REMOTE_ADDR"] = client.decode()
    else:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    return environ
