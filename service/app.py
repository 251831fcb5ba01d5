"""create_app wires the one route table, middleware and error handling; it holds no logic."""

from __future__ import annotations

import falcon

from . import metrics, problems
from .auth import Authenticator
from .config import Settings
from .consistency import Consistency
from .cors import Cors
from .http import BodyReader
from .limits import MAX_VERSION
from .middleware import RequestContext
from .openapi import OpenApi, build_spec
from .queries import Store
from .resources import contexts, health, messages, search
from .schemas.requests import RequestSchemas

CONTEXT = "/v1/contexts/{context_id:uuid}"
# A version past MAX_VERSION does not match the route: 404, never a bigint overflow.
VERSION = f"{{version:int(min=1, max={MAX_VERSION})}}"


def create_app(settings: Settings, store: Store) -> falcon.App:
    """The WSGI app over a store whose database is open."""
    schemas = RequestSchemas(settings)
    read_body = BodyReader(settings.max_body_bytes)
    authenticator = Authenticator(store.keys, settings.auth_cache_ttl)
    middleware: list[object] = [
        RequestContext(settings.max_body_bytes),
        authenticator,
        Consistency(store.replicas),
        metrics.RequestMetrics(store.health.pool_stats),
    ]
    if settings.cors_allow_origins:
        middleware.append(Cors(settings.cors_allow_origins))
    app = falcon.App(middleware=middleware)
    app.req_options.keep_blank_qs_values = True
    app.req_options.strip_url_path_trailing_slash = False
    problems.install(app, settings.retry_after)

    document = OpenApi(schemas)
    for path, resource in (
        ("/health", health.Health(store.health, schemas, keys_required=authenticator.keys_required,
                                  pool_timeout=settings.pool_timeout, retry_after=settings.retry_after)),
        ("/openapi.json", document),
        ("/metrics", health.Metrics(schemas)),
        ("/v1/contexts", contexts.Collection(store.contexts, store.idempotency, schemas, read_body)),
        (CONTEXT, contexts.Item(store.contexts, schemas, read_body)),
        (f"{CONTEXT}/forks", contexts.Forks(store.contexts, store.idempotency, schemas, read_body)),
        (f"{CONTEXT}/messages", messages.Collection(store.messages, store.idempotency, schemas, read_body)),
        (f"{CONTEXT}/messages/{VERSION}", messages.Item(store.messages, schemas)),
        (f"{CONTEXT}/window", messages.Window(store.messages, schemas)),
        (f"{CONTEXT}/search", search.InContext(store.search, schemas, read_body)),
        ("/v1/search", search.InTenant(store.search, schemas, read_body)),
    ):
        app.add_route(path, resource)
    document.publish(build_spec(app, schemas, settings))
    return app
