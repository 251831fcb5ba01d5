"""The one translation of errors into RFC 9457 problem+json.

`install(app)` maps the domain errors (service/errors.py), pool time-outs and
Falcon's own errors onto problem documents: `type` (`/problems/<slug>`), `title`,
`status`, `detail`, `instance` (the path), plus `errors` for validation problems.
No response carries a trace or SQL text.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import falcon
import orjson

from .errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    Misconfigured,
    Invalid,
    MalformedBody,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from . import metrics
from .logs import printable

log = logging.getLogger("context_store")

PROBLEM_JSON = "application/problem+json"
# What a 500 says, from the app or from the gunicorn worker before the app.
INTERNAL_DETAIL = "The server met an unexpected condition; the request id identifies it in the logs."


# status -> (slug, title) for Falcon's own errors and ours.
_STATUS_PROBLEMS: dict[int, tuple[str, str]] = {
    400: ("bad-request", "Bad Request"),
    401: ("unauthorized", "Unauthorized"),
    404: ("not-found", "Not Found"),
    405: ("method-not-allowed", "Method Not Allowed"),
    409: ("conflict", "Conflict"),
    411: ("length-required", "Length Required"),
    412: ("precondition-failed", "Precondition Failed"),
    413: ("payload-too-large", "Content Too Large"),
    415: ("unsupported-media-type", "Unsupported Media Type"),
    422: ("validation-error", "Unprocessable Content"),
    500: ("internal-error", "Internal Server Error"),
    503: ("service-unavailable", "Service Unavailable"),
}


# Details for Falcon's own errors, which carry none.
_DETAILS = {
    400: "The request could not be understood.",
    404: "Nothing is found at this path.",
    405: "This method is not allowed on this resource; the Allow header lists those that are.",
}


class Problem(falcon.HTTPError):
    """An HTTPError rendered as a problem document with a chosen slug and members."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        default_slug, default_title = _STATUS_PROBLEMS.get(status, ("error", "Error"))
        super().__init__(status, title=title or default_title, description=detail, headers=headers)
        self.slug = slug or default_slug
        self.extra = extra or {}


def instance(req: falcon.Request) -> str:
    """The request path as a URI reference (Falcon hands it over percent-decoded)."""
    return quote(req.path, safe="/:@!$&'()*+,;=-._~")


def problem_document(req: falcon.Request, error: falcon.HTTPError) -> dict[str, Any]:
    status = error.status_code
    default_slug, default_title = _STATUS_PROBLEMS.get(status, ("error", "Error"))
    if isinstance(error, Problem):
        slug, title = error.slug, error.title
    else:  # Falcon's own: its titles repeat the status code ("404 Not Found")
        slug, title = default_slug, default_title
    document: dict[str, Any] = {
        "type": f"/problems/{slug}",
        "title": title,
        "status": status,
        "detail": error.description or _DETAILS.get(status) or title,
        "instance": instance(req),
    }
    document.update(getattr(error, "extra", {}))
    return document


def _serialize(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    resp.data = orjson.dumps(problem_document(req, error))
    resp.content_type = PROBLEM_JSON


def install(app: falcon.App, retry_after: int) -> None:
    """Register the handlers and the serializer that render every error."""

    def on_not_found(req, resp, error, params):
        raise Problem(404, error.detail)

    def on_precondition(req, resp, error, params):
        # The current head, so that a client can rebase and retry without a read.
        raise Problem(
            412, error.detail, extra={"head_version": error.head_version}, headers={"ETag": f'"{error.head_version}"'}
        )

    def on_unavailable(req, resp, error, params):
        # Each such request is in the access log; db.py logs the outage once.
        log.debug("database unavailable: %s", error.detail)
        metrics.count_error("unavailable")
        raise Problem(503, error.detail, headers={"Retry-After": str(retry_after)})

    def on_key_in_use(req, resp, error, params):
        raise Problem(409, error.detail, slug="idempotency-key-in-use", headers={"Retry-After": "1"})

    def on_key_reused(req, resp, error, params):
        raise Problem(409, error.detail, slug="idempotency-key-reused")

    def on_misconfigured(req, resp, error, params):
        # Already logged in one line where it was found; no traceback here.
        metrics.count_error("misconfigured")
        raise Problem(500, "The server is misconfigured; the request id identifies it in the logs.",
                      slug="server-misconfigured")

    def on_malformed(req, resp, error, params):
        raise Problem(400, error.detail, slug="malformed-json")

    def on_invalid(req, resp, error, params):
        raise Problem(422, error.detail, extra={"errors": error.errors})

    def on_unexpected(req, resp, error, params):
        metrics.count_error("internal")
        log.error(
            "unhandled error on %s %s (request %s)",
            printable(req.method),
            printable(req.path),
            getattr(req.context, "request_id", "-"),
            extra={"request_id": getattr(req.context, "request_id", None)},
            exc_info=error,
        )
        raise Problem(500, INTERNAL_DETAIL)

    app.add_error_handler(Exception, on_unexpected)
    app.add_error_handler(NotFound, on_not_found)
    app.add_error_handler(PreconditionFailed, on_precondition)
    app.add_error_handler(Unavailable, on_unavailable)
    app.add_error_handler(MalformedBody, on_malformed)
    app.add_error_handler(Misconfigured, on_misconfigured)
    app.add_error_handler(IdempotencyKeyInUse, on_key_in_use)
    app.add_error_handler(IdempotencyKeyReused, on_key_reused)
    app.add_error_handler(Invalid, on_invalid)
    app.set_error_serializer(_serialize)
