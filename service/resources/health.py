"""GET /health: the service, its database, its tokenizer and the embeddings backlog."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from .. import __version__
from ..errors import Unavailable
from ..http import send
from ..openapi import operation
from ..queries.health import Health as HealthChecks
from ..schemas.loading import load_query
from ..schemas.requests import RequestSchemas


class Health:
    def __init__(self, checks: HealthChecks, schemas: RequestSchemas, *, keys_required: Callable[[], bool],
                 pool_timeout: float, retry_after: int) -> None:
        self.checks = checks
        self.schemas = schemas
        self.keys_required = keys_required
        # Answer well within a load balancer's probe time-out when the database is down.
        self.timeout = min(pool_timeout, 2.0)
        self.retry_after = str(retry_after)
        self.about = {"version": __version__, "tokenizer": checks.tokenizer}

    @operation(
        "getHealth", tag="meta", summary="Service, database, tokenizer and embeddings health", ok="200", ok_schema="Health",
        query="NoQuery",
        extra={"description": "503 keeps the health shape (status \"unavailable\"), as application/json."},
    )
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        load_query(self.schemas.no_query, req.params)
        try:
            latency = self.checks.database_latency_ms(self.timeout)
            about = {**self.about, "auth": "enabled" if self.keys_required() else "disabled",
                     "embeddings": self.checks.embeddings(self.timeout)}
        except Unavailable:
            # API.md's health shape, not a problem document: `status` stays the
            # string that health checkers read.
            resp.set_header("Retry-After", self.retry_after)
            about = {**self.about, "auth": "unknown"}
            send(resp, {"status": "unavailable", "database": {"status": "unavailable"}, **about}, 503)
            return
        send(resp, {"status": "ok", "database": {"status": "ok", "latency_ms": latency}, **about})
