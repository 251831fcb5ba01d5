"""service/quickparse.py against gunicorn's own parser and wsgi.create: for every
request it either declines (and leaves every byte for gunicorn) or yields the
request, the environ and the left-over bytes gunicorn would; it never takes a
request gunicorn refuses, and it does take what real clients send."""

from __future__ import annotations

import socket

import pytest
from gunicorn import http
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.wsgi import WSGIErrorsWrapper
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service import quickparse
from service.quickparse import QuickParser, QuickRequest, quick_parsing_applies

CLIENT = ("127.0.0.1", 50123)
SERVER = ("127.0.0.1", 8000)
UNTRUSTED = ("192.0.2.7", 50123)  # outside forwarded_allow_ips' default

# Objects that differ by identity only, compared by kind.
_BY_KIND = ("wsgi.errors", "wsgi.early_hints", "gunicorn.socket")


def _config(**values) -> Config:
    cfg = Config()
    for name, value in values.items():
        cfg.set(name, value)
    return cfg


def _pair():
    a, b = socket.socketpair()
    b.shutdown(socket.SHUT_WR)  # nothing more will come: an incomplete request ends the parse
    a.settimeout(1)
    return a, b


def gunicorn_reads(data: bytes, cfg: Config, client=CLIENT):
    """(request, environ, body, left-over bytes) as gunicorn's parser and wsgi.create
    make them, or None when gunicorn refuses the request or waits for more."""
    a, b = _pair()
    try:
        parser = http.get_parser(cfg, a, client)
        parser.unreader.unread(data)
        try:
            req = next(parser)
            _resp, environ = wsgi.create(req, a, client, SERVER, cfg)
            environ["wsgi.multithread"] = True
            body = req.body.read()
        except Exception:
            return None
        return req, environ, body, parser.unreader.take_buffered()
    finally:
        a.close()
        b.close()


def quick_reads(data: bytes, cfg: Config, client=CLIENT):
    """The same from QuickParser's own path, or None when it declines; a
    decline must leave exactly the bytes it was given."""
    a, b = _pair()
    try:
        parser = QuickParser(cfg, a, client, SERVER)
        request = parser.parse(data)
        if request is None:
            assert parser.unreader.take_buffered() == b""
            return None
        environ = parser.environ(request, a, wsgi.Response(request, a, cfg))
        return request, environ, request.body.read(), parser.unreader.take_buffered()
    finally:
        a.close()
        b.close()


def assert_same(quick, gunicorn) -> None:
    q_req, q_env, q_body, q_rest = quick
    g_req, g_env, g_body, g_rest = gunicorn
    assert set(q_env) == set(g_env)
    for key in q_env:
        if key in _BY_KIND:
            assert isinstance(q_env[key], type(g_env[key])), key
        elif key != "wsgi.input":
            assert q_env[key] == g_env[key], key
    assert (q_body, q_rest) == (g_body, g_rest)
    for attribute in ("method", "uri", "path", "query", "fragment", "version", "headers", "scheme",
                      "proxy_protocol_info", "req_number"):
        if attribute == "req_number":
            continue  # counted by the parser's __next__, checked below
        assert getattr(q_req, attribute) == getattr(g_req, attribute), attribute
    assert q_req.should_close() == g_req.should_close()


def check(data: bytes, cfg: Config | None = None, client=CLIENT) -> bool:
    """True when the quick path took the request (and matched gunicorn)."""
    cfg = cfg or _config()
    quick = quick_reads(data, cfg, client)
    gunicorn = gunicorn_reads(data, cfg, client)
    if quick is None:
        return False
    assert gunicorn is not None, f"quick took a request gunicorn refuses: {data!r}"
    assert_same(quick, gunicorn)
    return True


# ------------------------------------------------------------------ what clients send

HTTP_CLIENT = (b"GET /v1/contexts/0190c2a0-0000-7000-8000-000000000001/messages/517 HTTP/1.1\r\n"
               b"Host: 127.0.0.1:8000\r\nAccept-Encoding: identity\r\n"
               b"Authorization: Bearer cs_0123456789abcdef\r\n\r\n")
REQUESTS = (b"POST /v1/contexts/0190c2a0-0000-7000-8000-000000000001/messages HTTP/1.1\r\n"
            b"Host: localhost:8000\r\nUser-Agent: python-requests/2.32.3\r\nAccept-Encoding: gzip, deflate\r\n"
            b"Accept: */*\r\nConnection: keep-alive\r\nIdempotency-Key: a1\r\nContent-Length: 45\r\n"
            b"Content-Type: application/json\r\n\r\n"
            b'{"messages":[{"role":"user","content":"hi"}]}')
CURL = (b"GET /v1/contexts?limit=5&after=abc%3D HTTP/1.1\r\nHost: localhost:8000\r\n"
        b"User-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Request-Id:   spaced\t \r\n\r\n")
PROXIED = (b"DELETE /v1/contexts/x%2Fy HTTP/1.1\r\nHost: api.example\r\nX-Forwarded-For: 203.0.113.9\r\n"
           b"X-Forwarded-Proto: https\r\nX-Forwarded-Proto: https\r\nAccept: a\r\nAccept: b\r\n\r\n")


@pytest.mark.parametrize("data", [HTTP_CLIENT, REQUESTS, CURL, PROXIED], ids=["http.client", "requests", "curl",
                                                                           "proxied"])
def test_what_clients_send_is_taken_and_matches_gunicorn(data):
    assert check(data)


def test_scheme_fields_count_only_from_a_trusted_peer():
    trusted = quick_reads(PROXIED, _config(), CLIENT)
    untrusted = quick_reads(PROXIED, _config(), UNTRUSTED)
    assert trusted[1]["wsgi.url_scheme"] == "https"
    assert untrusted[1]["wsgi.url_scheme"] == "http"
    assert check(PROXIED, client=UNTRUSTED)
    # Conflicting scheme fields: gunicorn refuses, quick declines.
    conflicting = PROXIED.replace(b"X-Forwarded-Proto: https\r\nX-F", b"X-Forwarded-Proto: http\r\nX-F")
    assert quick_reads(conflicting, _config()) is None
    assert gunicorn_reads(conflicting, _config()) is None


def test_a_scheme_field_may_be_any_field_gunicorn_knows():
    # An odd configuration, read as gunicorn reads it: Host decides the scheme.
    cfg = _config(secure_scheme_headers={"HOST": "s", "X-FORWARDED-PROTO": "https"})
    assert check(b"GET / HTTP/1.1\r\nHost: s\r\n\r\n", cfg)
    assert quick_reads(b"GET / HTTP/1.1\r\nHost: s\r\n\r\n", cfg)[1]["wsgi.url_scheme"] == "https"
    conflicting = b"GET / HTTP/1.1\r\nHost: s\r\nX-Forwarded-Proto: http\r\n\r\n"
    assert quick_reads(conflicting, cfg) is None
    assert gunicorn_reads(conflicting, cfg) is None


def test_the_errors_stream_writes_where_gunicorns_logs_are_now(tmp_path):
    # gunicorn builds it per request because it keeps the handlers' streams, which
    # a USR1 reopen replaces; this one looks them up on each write.
    import logging

    # (With errorlog "-", gunicorn's wrapper writes to stderr and skips the first handler.)
    errors = quick_reads(HTTP_CLIENT, _config(errorlog=str(tmp_path / "error.log")))[1]["wsgi.errors"]
    assert isinstance(errors, WSGIErrorsWrapper)
    log = logging.getLogger("gunicorn.error")
    kept = list(log.handlers)
    try:
        for name in ("before.log", "after.log"):  # a reopen: a new handler, a new stream
            for handler in list(log.handlers):
                log.removeHandler(handler)
            handler = logging.FileHandler(tmp_path / name)
            log.addHandler(handler)
            errors.write(f"to {name}\n")
            handler.close()
    finally:
        for handler in list(log.handlers):
            log.removeHandler(handler)
        for handler in kept:
            log.addHandler(handler)
    assert (tmp_path / "before.log").read_text() == "to before.log\n"
    assert (tmp_path / "after.log").read_text() == "to after.log\n"


def test_pipelined_bytes_stay_for_the_next_request():
    second = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /hea"
    assert check(REQUESTS + second)
    assert quick_reads(REQUESTS + second, _config())[3] == second


@pytest.mark.parametrize(
    "data",
    [
        b"GET /x HTTP/1.0\r\nHost: x\r\n\r\n",  # another version
        b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",  # another method
        b"get /x HTTP/1.1\r\n\r\n",
        b"\r\nGET /x HTTP/1.1\r\n\r\n",  # a leading empty line
        b"GET /x#frag HTTP/1.1\r\n\r\n",
        b"GET //x HTTP/1.1\r\n\r\n",
        b"GET http://x/y HTTP/1.1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nX_Under: 1\r\n\r\n",  # gunicorn drops or refuses these
        b"GET /x HTTP/1.1\r\nX-Text: caf\xe9\r\n\r\n",  # obs-text
        b"GET /x HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"POST /x HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
        b"POST /x HTTP/1.1\r\nContent-Length: " + b"0" * 4300 + b"1\r\n\r\nx",  # more than int() takes
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
        b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAA\r\n\r\n",
        b"GET /x HTTP/1.1\r\nBad Name: 1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nX-A : 1\r\n\r\n",
        b"GET /x HTTP/1.1\nHost: x\n\n",  # bare LF
        b"GET /x HTTP/1.1\r\nHost: x\r\n",  # the head is not complete
        b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc",  # nor the body
        b"GET /x HTTP/1.1\r\nX-A: \x01\r\n\r\n",
    ],
)
def test_what_is_not_plain_is_left_to_gunicorn(data):
    assert quick_reads(data, _config()) is None


def test_limits_at_and_past_gunicorns_are_left_to_it():
    cfg = _config(limit_request_line=40, limit_request_fields=3, limit_request_field_size=60)
    long_line = b"GET /" + b"a" * 40 + b" HTTP/1.1\r\n\r\n"
    assert quick_reads(long_line, cfg) is None
    assert gunicorn_reads(long_line, cfg) is None
    four_fields = b"GET /x HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"
    assert quick_reads(four_fields, cfg) is None
    assert gunicorn_reads(four_fields, cfg) is None
    assert check(b"GET /x HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", cfg)
    long_field = b"GET /x HTTP/1.1\r\nA: " + b"v" * 60 + b"\r\n\r\n"
    assert quick_reads(long_field, cfg) is None
    assert gunicorn_reads(long_field, cfg) is None


def test_the_parser_takes_plain_requests_and_hands_the_rest_to_gunicorn():
    a, b = socket.socketpair()
    try:
        parser = QuickParser(_config(), a, CLIENT, SERVER)
        parser.unreader.unread(HTTP_CLIENT + REQUESTS + b"GET /x HTTP/1.0\r\n\r\n")
        first = next(parser)
        assert isinstance(first, QuickRequest) and first.req_number == 1
        second = next(parser)  # after a quick request nothing is drained from the socket
        assert isinstance(second, QuickRequest) and second.req_number == 2
        assert second.body.read(10) == b'{"messages'
        third = next(parser)  # the rest of the second's body is in memory, gone with it
        assert not isinstance(third, QuickRequest) and third.version == (1, 0) and third.req_number == 3
        with pytest.raises(StopIteration):  # HTTP/1.0 without keep-alive closes
            next(parser)
    finally:
        a.close()
        b.close()


def test_a_quick_request_closes_when_the_server_says_so():
    request = quick_reads(HTTP_CLIENT, _config())[0]
    assert not request.should_close()
    request.force_close()
    assert request.should_close()


@pytest.mark.parametrize(
    ("setting", "value"),
    [("proxy_protocol", "v1"), ("permit_obsolete_folding", True), ("strip_header_spaces", True),
     ("casefold_http_method", True), ("header_map", "dangerous")],
)
def test_configurations_that_change_parsing_keep_gunicorns_parser(setting, value):
    assert quick_parsing_applies(_config(), SERVER)
    assert not quick_parsing_applies(_config(**{setting: value}), SERVER)


def test_unix_sockets_and_script_name_keep_gunicorns_parser(monkeypatch):
    assert not quick_parsing_applies(_config(), "/run/context-store.sock")
    monkeypatch.setenv("SCRIPT_NAME", "/api")
    assert not quick_parsing_applies(_config(), SERVER)


def test_the_environ_names_a_unix_or_bytes_peer_as_gunicorn_does():
    cfg = _config()
    for client in ("", b"peer"):
        environ = quickparse._connection_environ(cfg, client, SERVER)
        assert environ["REMOTE_ADDR"] == ("" if client == "" else "peer")
        assert "REMOTE_PORT" not in environ


# ------------------------------------------------------------------ generated requests

methods = st.sampled_from([b"GET", b"POST", b"HEAD", b"PATCH", b"DELETE", b"PUT", b"OPTIONS", b"get", b"BREW",
                           b"CONNECT"])
segments = st.sampled_from([b"/", b"/v1", b"/contexts", b"/%2F", b"/%e9", b"/%", b"/a:b", b"//", b"/@!$&'()*+,;=",
                            b"/\"q\"", b"/~"])
queries = st.sampled_from([b"", b"?", b"?limit=5", b"?a=1&a=2", b"?q=%20x", b"?x?y", b"#frag", b"?a#b"])
targets = st.one_of(
    st.builds(lambda parts, query: b"".join(parts) + query, st.lists(segments, min_size=1, max_size=4), queries),
    st.sampled_from([b"*", b"http://h/x", b"h:80", b"", b"/x y", b"/\x7f"]),
)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.10", b"http/1.1"])
names = st.sampled_from([b"Host", b"Content-Type", b"Content-Length", b"Connection", b"Accept", b"Authorization",
                         b"X-Request-Id", b"X_Under", b"Transfer-Encoding", b"Expect", b"X-Forwarded-Proto",
                         b"X-Forwarded-Ssl", b"Upgrade", b"Script-Name", b"If-Match", b"Bad Name", b"", b"A:B"])
values = st.one_of(
    st.sampled_from([b"", b"keep-alive", b"close", b"Keep-Alive", b"application/json", b"https", b"on", b"0", b"5",
                     b"12", b"+3", b"chunked", b"100-continue", b" padded\t", b"caf\xe9", b"a\x01b", b"a\tb"]),
    st.binary(max_size=12),
)
fields = st.lists(st.tuples(names, st.sampled_from([b": ", b":", b" : ", b":\t"]), values), max_size=6)


@st.composite
def requests(draw):
    head = draw(methods) + b" " + draw(targets) + b" " + draw(versions) + b"\r\n"
    if draw(st.booleans()):
        head = draw(st.sampled_from([b"\r\n", b""])) + head
    for name, separator, value in draw(fields):
        head += name + separator + value + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    body = draw(st.binary(max_size=8))
    rest = draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n", b"xx"]))
    return head + b"\r\n" + body + rest


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=requests(), trusted=st.booleans())
@example(data=REQUESTS, trusted=True)
def test_generated_requests_are_declined_or_read_as_gunicorn_reads_them(data, trusted):
    check(data, client=CLIENT if trusted else UNTRUSTED)


@settings(max_examples=1500, deadline=None)
@given(data=st.binary(max_size=80).map(lambda tail: b"GET / HTTP/1.1\r\n" + tail))
def test_arbitrary_bytes_after_a_request_line_are_never_taken_unless_gunicorn_agrees(data):
    check(data)


plain_names = st.sampled_from([b"Host", b"Content-Type", b"Accept", b"Authorization", b"X-Request-Id", b"If-Match",
                               b"X-Forwarded-For", b"User-Agent", b"Accept", b"x-lower"])
plain_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(str.encode)


@st.composite
def plain_requests(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PATCH", b"DELETE", b"PUT", b"OPTIONS"]))
    target = b"".join(draw(st.lists(segments.filter(lambda s: s != b"//"), min_size=1, max_size=3)))
    target += draw(queries.filter(lambda q: b"#" not in q))
    if target.startswith(b"//"):
        target = b"/x" + target
    head = method + b" " + target + b" HTTP/1.1\r\n"
    seen = set()
    for name, value in draw(st.lists(st.tuples(plain_names, plain_values), max_size=5)):
        if name in (b"Host", b"Content-Type") and name in seen:
            continue
        seen.add(name)
        head += name + b":" + draw(st.sampled_from([b"", b" ", b"\t "])) + value + b"\r\n"
    if draw(st.booleans()):
        head += b"Connection: keep-alive\r\n"
    body = draw(st.binary(max_size=8))
    if body or draw(st.booleans()):
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body + draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n"]))


@settings(max_examples=1500, deadline=None)
@given(data=plain_requests())
def test_plain_requests_are_all_taken_and_read_as_gunicorn_reads_them(data):
    # The properties above would hold for a parser that declines everything.
    assert check(data), data


def test_a_connection_stops_after_a_body_gunicorn_could_not_read():
    a, b = socket.socketpair()
    try:
        parser = QuickParser(_config(), a, CLIENT, SERVER)
        parser.unreader.unread(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + HTTP_CLIENT)
        first = next(parser)  # chunked: gunicorn's
        assert not isinstance(first, QuickRequest)
        with pytest.raises(Exception):
            first.body.read()
        with pytest.raises(StopIteration):  # where the next request starts is unknown
            next(parser)
    finally:
        a.close()
        b.close()
