"""Helpers shared by the test modules (tests/ is on sys.path, beside conftest.py)."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, unquote, urlsplit

Msg = dict[str, Any]


def reference_window(view: list[Msg], max_tokens: int, pin_system: bool = False) -> list[Msg]:
    """The longest run of most recent messages whose token counts sum to at most
    max_tokens, never splitting one (so zero-token messages at the run's edge come
    along); with pin_system, message 1 first if it is a system message that fits,
    counted against the budget."""
    pinned: list[Msg] = []
    budget, rest = max_tokens, view
    if pin_system and view and view[0]["role"] == "system" and view[0]["token_count"] <= max_tokens:
        pinned, budget, rest = [view[0]], max_tokens - view[0]["token_count"], view[1:]
    run: list[Msg] = []
    used = 0
    for m in reversed(rest):
        if used + m["token_count"] > budget:
            break
        used += m["token_count"]
        run.append(m)
    return pinned + run[::-1]


def database_url(host, port, user, password, dbname) -> str:
    """A postgresql:// URL (what DATABASE_URL takes) for a socket-dir or TCP host."""
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    return f"postgresql://{auth}@/{dbname}?host={quote(str(host), safe='/')}&port={port}"


def check_window_summary(got: dict[str, Any], want: list[Msg], view_length: int, max_tokens: int) -> None:
    """A window response's token_count, max_tokens, from/to_version and truncated
    agree with the reference window `want` over a view of view_length messages."""
    assert got["token_count"] == sum(m["token_count"] for m in want)
    assert got["token_count"] <= max_tokens
    assert got["max_tokens"] == max_tokens
    assert got["from_version"] == (want[0]["version"] if want else None)
    assert got["to_version"] == (want[-1]["version"] if want else None)
    assert got["truncated"] is (len(want) < view_length)


PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}
SLUG = re.compile(r"^/problems/[a-z0-9]+(-[a-z0-9]+)*$")


def problem(resp, status: int, path: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem document for `status`: its document.
    `instance` is the request's path, exactly `path` when given (its encoded form),
    else in any spelling of the request's path; never with the query string."""
    assert resp.status_int == status, (resp.status, resp.body[:300])
    assert resp.content_type == "application/problem+json"
    doc = resp.json
    assert PROBLEM_KEYS <= set(doc), doc
    assert SLUG.match(doc["type"]), doc["type"]
    assert isinstance(doc["title"], str) and doc["title"]
    assert type(doc["status"]) is int and doc["status"] == status
    assert isinstance(doc["detail"], str) and doc["detail"]
    if path is not None:
        assert doc["instance"] == path
    else:
        assert unquote(doc["instance"]) == unquote(urlsplit(resp.request.url).path)
    assert "?" not in doc["instance"]
    return doc


LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def next_link(resp) -> str | None:
    """The target of a response's Link rel="next", or None without a Link header."""
    header = resp.headers.get("Link")
    if header is None:
        return None
    match = LINK_NEXT.search(header)
    assert match, header
    return match.group(1)


@contextmanager
def silent_listener() -> Iterator[str]:
    """An http:// address whose listener accepts connections and never answers
    (a proxy on a filtered network): tiktoken's download through it hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


def terminate_pool_connections(conninfo: str) -> int:
    """Have the server end every session of the service's pools (as a restart does);
    how many it ended."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as admin:
        return admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'context-store' AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def small_database(settings, conninfo: str | None = None, *, wait: bool = True, **changes):
    """A Database of one connection over conninfo (the settings' URL by default), opened."""
    import dataclasses

    from service.db import Database

    small = dataclasses.replace(settings, pool_min_size=1, pool_max_size=1, **changes)
    database = Database(small, conninfo or settings.database_url)
    database.pool.open(wait=wait)
    return database


class RecordingSocket:
    """A real socket that also keeps what each sendall was given."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls: list[bytes] = []

    def sendall(self, data) -> None:
        self.calls.append(bytes(data))
        self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def record_statements(monkeypatch) -> list[tuple[Any, dict[str, Any]]]:
    """From now until the test ends, every named statement run (service/sql.py),
    with its parameters, appended to the list returned."""
    from service.sql import Statement

    seen: list[tuple[Any, dict[str, Any]]] = []
    original = Statement.run

    def recording(self, conn, **params):
        seen.append((self, params))
        return original(self, conn, **params)

    monkeypatch.setattr(Statement, "run", recording)
    return seen
