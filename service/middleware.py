"""What every response carries: X-Request-Id, an access log line with the
duration, and the body limit enforced before a body is read."""

from __future__ import annotations

import logging
import random
import re
import time

import falcon

from .http import too_large
from .logs import InfoLines, printable

access_log = logging.getLogger("context_store.access")
_access_lines = InfoLines(access_log)

# Echo a client's id only when it is short and harmless in headers and logs.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class RequestContext:
    def __init__(self, max_body_bytes: int, tenant: str = "default") -> None:
        self.max_body_bytes = max_body_bytes
        self.tenant = tenant

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        given = req.get_header("X-Request-Id")
        req.context.request_id = given if given and _REQUEST_ID.fullmatch(given) else _new_request_id()
        req.context.tenant = self.tenant
        length = req.content_length
        if length is not None and length > self.max_body_bytes:
            raise too_large(self.max_body_bytes)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        request_id = req.context.get("request_id") or _new_request_id()
        resp.set_header("X-Request-Id", request_id)
        if access_log.isEnabledFor(logging.INFO):
            started = req.context.get("started") or time.perf_counter()
            method, path = printable(req.method), printable(req.path)
            duration = round((time.perf_counter() - started) * 1000, 1)
            status = resp.status_code
            _access_lines.info(
                f"{method} {path} {status} {duration:.1f}ms request_id={request_id}",
                {"request_id": request_id, "method": method, "path": path, "status": status,
                 "duration_ms": duration},
            )


def _new_request_id() -> str:
    """32 hex digits, as uuid4().hex gives, without reading urandom per request:
    an id has to tell requests apart in logs, not be unguessable. `random` is
    reseeded in a forked child by Python itself, so workers do not repeat ids."""
    return f"{random.getrandbits(128):032x}"
