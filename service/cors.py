"""Browser clients (CORS_ALLOW_ORIGINS): Falcon's CORS middleware, with the
request headers this API takes and the response headers it sends named, so that a
preflight lists exactly what a browser may send and a script may read."""

from __future__ import annotations

import falcon

# What clients send: credentials, bodies, idempotency and preconditions.
ALLOWED_HEADERS = (
    "Authorization, Consistency-Token, Content-Type, Idempotency-Key, If-Match, If-None-Match, X-Request-Id"
)
EXPOSED_HEADERS = ("ETag", "Location", "Link", "Retry-After", "X-Request-Id", "Idempotent-Replayed",
                   "WWW-Authenticate", "Consistency-Token")


class Cors(falcon.CORSMiddleware):
    def __init__(self, origins: tuple[str, ...]) -> None:
        super().__init__(allow_origins="*" if origins == ("*",) else origins, expose_headers=EXPOSED_HEADERS)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        super().process_response(req, resp, resource, req_succeeded)
        if resp.get_header("Access-Control-Allow-Methods") is not None:  # a preflight it answered
            resp.set_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
