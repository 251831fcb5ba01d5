"""GET /health: the service, its database, its tokenizer and the embeddings backlog."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from .. import __version__, metrics
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
        extra={
            "description": "503 keeps the health shape (status \"unavailable\"), as application/json: the "
            "database cannot be reached, or its schema is behind this code (run `context-store migrate`)."
        },
    )
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        load_query(self.schemas.no_query, req.params)
        try:
            database = self.checks.database(self.timeout)
            # Whether keys exist, and the embeddings queue, are in tables the schema
            # may not have yet.
            keyed = self.keys_required() if database.migrated else None
            embeddings = self.checks.embeddings(self.timeout) if database.migrated else None
        except Unavailable:
            # API.md's health shape, not a problem document: `status` stays the
            # string that health checkers read.
            resp.set_header("Retry-After", self.retry_after)
            about = {**self.about, "auth": "unknown"}
            send(resp, {"status": "unavailable", "database": {"status": "unavailable"}, **about}, 503)
            return
        about = {**self.about, "auth": "unknown" if keyed is None else "enabled" if keyed else "disabled"}
        if embeddings is not None:
            about["embeddings"] = embeddings
        report = {
            "status": "ok",
            "latency_ms": database.latency_ms,
            "schema_version": database.schema_version,
            "schema_expected": database.schema_expected,
        }
        if not database.migrated:
            resp.set_header("Retry-After", self.retry_after)
            report["status"] = "unavailable"
            detail = "the schema is behind this code: run `context-store migrate`"
            send(resp, {"status": "unavailable", "detail": detail, "database": report, **about}, 503)
            return
        send(resp, {"status": "ok", "database": report, **about})


class Metrics:
    """GET /metrics: Prometheus text format, every worker's samples."""

    def __init__(self, schemas: RequestSchemas) -> None:
        self.schemas = schemas

    @operation(
        "getMetrics", tag="meta", summary="Prometheus metrics of every worker", ok="200", ok_text=True,
        query="NoQuery",
    )
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        load_query(self.schemas.no_query, req.params)
        resp.content_type = metrics.CONTENT_TYPE
        resp.data = metrics.render()
