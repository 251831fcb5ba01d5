"""create_app wires routes, middleware and error handling; it holds no logic."""

from __future__ import annotations

import falcon

from . import errors
from .config import Settings
from .db import Database
from .middleware import RequestContext
from .openapi import OpenApi, build_spec
from .resources import Deps, contexts, health, messages
from .schemas import Schemas
from .tokens import Tokenizer


def create_app(settings: Settings, db: Database, tokenizer: Tokenizer) -> falcon.App:
    """The WSGI app over an (opened) Database."""
    schemas = Schemas(settings)
    deps = Deps(settings=settings, db=db, schemas=schemas, tokenizer=tokenizer)
    app = falcon.App(middleware=[RequestContext(settings.max_body_bytes)])
    app.req_options.keep_blank_qs_values = True
    app.req_options.strip_url_path_trailing_slash = False
    errors.install(app, settings.retry_after)

    app.add_route("/health", health.Health(deps))
    app.add_route("/openapi.json", OpenApi(build_spec(schemas)))
    app.add_route("/v1/contexts", contexts.Collection(deps))
    app.add_route("/v1/contexts/{context_id:uuid}", contexts.Item(deps))
    app.add_route("/v1/contexts/{context_id:uuid}/forks", contexts.Forks(deps))
    app.add_route("/v1/contexts/{context_id:uuid}/messages", messages.Collection(deps))
    version = "{version:int(min=1, max=4611686018427387904)}"  # past bigint is 404, not 500
    app.add_route(f"/v1/contexts/{{context_id:uuid}}/messages/{version}", messages.Item(deps))
    app.add_route("/v1/contexts/{context_id:uuid}/window", messages.Window(deps))
    return app
