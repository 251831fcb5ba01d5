"""Request and response plumbing shared by the resources: bounded JSON bodies,
content negotiation, preconditions, and orjson responses."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import falcon
import orjson

from .errors import Invalid
from .jsonvalues import parse_json
from .problems import Problem

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


def too_large(limit: int) -> Problem:
    return Problem(413, f"The body exceeds the limit of {limit} bytes.")


def read_json(req: falcon.Request, limit: int, media_types: tuple[str, ...] = (JSON,)) -> Any:
    """The parsed JSON body ({} when empty), read no further than limit bytes.

    413 when larger (see middleware.RequestContext for Content-Length), 415 for a
    body that is not one of media_types, 400 when it is not JSON.
    """
    # Content-Length over the limit was refused by the middleware before routing.
    if req.content_length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
        # No length to bound the stream by: the server de-chunks until EOF.
        raw = req.stream.read(limit + 1)
    else:
        raw = req.bounded_stream.read(limit + 1)
    if len(raw) > limit:
        raise too_large(limit)
    if not raw:  # an empty body counts as {}; whitespace alone is not JSON (400)
        return {}
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in media_types:
        raise Problem(415, f"Send the body as {' or '.join(media_types)}, not {media_type or 'no content type'}.")
    return parse_json(raw, "body")


class BodyReader:
    """read_json with one deployment's body limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, req: falcon.Request, media_types: tuple[str, ...] = (JSON,)) -> Any:
        return read_json(req, self.limit, media_types)


def send(resp: falcon.Response, document: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = JSON
    resp.data = orjson.dumps(document)


def link_next(req: falcon.Request, resp: falcon.Response, key: str, cursor: str) -> None:
    """Link rel="next": this request's absolute URL (scheme and host as the client
    sent them) with the cursor parameter replaced."""
    params = {k: v for k, v in req.params.items() if k != key}
    params[key] = cursor
    resp.append_link(f"{req.prefix}{req.path}?{urlencode(params)}", "next")


def etag(version: int) -> str:
    return f'"{version}"'


# What If-Match accepts, as published in the OpenAPI document: `*` or a list of
# entity tags "<version>" (weak ones parse, and never match).
IF_MATCH_PATTERN = r'^[ \t]*(\*|(W/)?"[0-9]{1,18}"([ \t]*,[ \t]*(W/)?"[0-9]{1,18}")*)[ \t]*$'
_IF_MATCH = re.compile(IF_MATCH_PATTERN)
_TAG = re.compile(r'(W/)?"([0-9]{1,18})"')


def parse_if_match(header: str | None) -> list[int] | None:
    """The versions an If-Match accepts: None for no header or `*`.

    Weak tags never match (If-Match compares strongly). A header that is not a
    list of quoted versions is a 422 naming the header.
    """
    if header is None:
        return None
    if _IF_MATCH.fullmatch(header) is None:
        raise Invalid([{"header": "If-Match", "detail": 'Expected "<head_version>" (a list of them) or *.'}])
    if header.strip(" \t") == "*":
        return None
    return [int(version) for weak, version in _TAG.findall(header) if not weak]


def cacheable(req: falcon.Request, resp: falcon.Response, version: int, document: Any) -> None:
    """Send a message read: ETag is the version it shows (what a read returns for a
    version never changes), and an If-None-Match that holds it (weak comparison,
    as RFC 9110 asks, or `*`) is answered 304 without a body."""
    tag = etag(version)
    resp.etag = tag
    given = req.get_header("If-None-Match")
    if given is not None and (
        given.strip() == "*" or tag in (part.strip().removeprefix("W/") for part in given.split(","))
    ):
        resp.status = 304
        return
    send(resp, document)


# Idempotency-Key: 1..255 visible ASCII characters (API.md).
IDEMPOTENCY_KEY_PATTERN = "^[!-~]{1,255}$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_REPLAYED_HEADERS = ("ETag", "Location")


@contextmanager
def idempotent(req: falcon.Request, resp: falcon.Response, idempotency: Any, body: Any) -> Iterator[bool]:
    """Run a POST's work at most once per Idempotency-Key.

    Yields True when the responder must do its work (always, without the header);
    with a key, the work runs in the key's transaction, and the response it leaves
    in `resp` is kept when the block ends without an error. Yields False when `resp`
    already holds the first response to the same request, replayed.
    """
    key = req.get_header("Idempotency-Key")
    if key is None:
        yield True
        return
    if _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise Invalid([{"header": "Idempotency-Key", "detail": "Expected 1..255 visible ASCII characters."}])
    preconditions = req.get_header("If-Match")
    fingerprint = hashlib.sha256(
        orjson.dumps([body, preconditions], option=orjson.OPT_SORT_KEYS)
    ).digest()
    with idempotency.scope(req.context.tenant, key, req.method, req.path, fingerprint) as scope:
        stored = scope.stored
        if stored is not None:
            resp.status = stored.status
            resp.content_type = JSON
            resp.data = stored.body
            for name, value in stored.headers.items():
                resp.set_header(name, value)
            resp.set_header("Idempotent-Replayed", "true")
            yield False
            return
        yield True
        headers = {name: resp.get_header(name) for name in _REPLAYED_HEADERS if resp.get_header(name) is not None}
        scope.record(resp.status_code, headers, resp.data)
