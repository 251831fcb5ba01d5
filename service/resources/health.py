"""GET /health: the service, its database and its tokenizer."""

from __future__ import annotations

import time

import falcon
import orjson

from .. import __version__
from ..errors import PROBLEM_JSON, Unavailable, instance
from ..http import send
from ..queries import health
from ..schemas import load_query
from . import Deps


class Health:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        # Answer well within a load balancer's probe time-out when the database is down.
        self.timeout = min(deps.settings.pool_timeout, 2.0)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        load_query(self.deps.schemas.NoQuery, req.params)
        about = {"version": __version__, "tokenizer": self.deps.tokenizer.name, "auth": "disabled"}
        started = time.perf_counter()
        try:
            with self.deps.db.connection(timeout=self.timeout) as conn:
                health.ping(conn)
        except Unavailable as exc:
            # API.md's health shape, served as a problem document: `status` stays
            # the string "unavailable" that health checkers read.
            resp.status = 503
            resp.content_type = PROBLEM_JSON
            resp.set_header("Retry-After", str(self.deps.settings.retry_after))
            resp.data = orjson.dumps(
                {
                    "type": "/problems/service-unavailable",
                    "title": "Service Unavailable",
                    "status": "unavailable",
                    "detail": exc.detail,
                    "instance": instance(req),
                    "database": {"status": "unavailable"},
                    **about,
                }
            )
            return
        latency = round((time.perf_counter() - started) * 1000, 3)
        send(resp, {"status": "ok", "database": {"status": "ok", "latency_ms": latency}, **about})
