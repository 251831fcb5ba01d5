"""The OpenAPI 3.1 document, generated from the routes the app really serves.

Each responder of a resource carries its documentation (`@operation(...)`); the
document walks the app's router, so a route without documentation fails to build
(and its test), and the document can list nothing the app does not serve. Request
schemas come from schemas/requests.py (the ones that validate), response schemas
from schemas/responses.py; statuses every operation shares (404 for a path with
an id, 422 for parameters, 503, the body errors) are added here, once.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import falcon
import orjson
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from . import __version__
from .config import Settings
from .http import IDEMPOTENCY_KEY_PATTERN, IF_MATCH_PATTERN
from .replicas import LSN_PATTERN
from .schemas import responses
from .schemas.fields import METADATA_MARK
from .schemas.loading import load_query
from .schemas.requests import RequestSchemas

JSON = "application/json"

DESCRIPTION = """\
Versioned, forkable storage for the contexts (conversations) of LLM applications.

Errors are `application/problem+json` (RFC 9457). Validation errors (422) list
`errors` with an RFC 6901 `pointer` into the body, a query `parameter` or a
`header`. Every response carries `X-Request-Id`.

Readings of the contract where API.md leaves room:
- `If-Match` takes a list of strong tags `"<head_version>"` or `*`; weak tags never
  match; a header in another form is 422 naming the header. A 412 carries the
  current head in `ETag` and in the problem's `head_version`.
- Message reads carry `ETag: "<version>"`: the viewed version for a page or a
  window, the message's own version for one message. `If-None-Match` holding it
  (or `*`) is answered 304 without a body.
- `PATCH` with `{"metadata": null}` empties the metadata; the merged result must
  fit the metadata limit (compact JSON, as at creation) or 422, and nothing changes.
- In other bodies, an explicit `null` for an optional field (`token_count`,
  `metadata`, `embedding`, `at_version`) means the field is absent.
- A page past the end is 200 with empty `data`; `before`/`after` outside the
  conversation simply bound the range. `after` and `before` are versions written
  as strings of digits, exactly as `next_cursor` returns them.
- A fork that would read through more ancestor segments than the deployment's
  MAX_LINEAGE_DEPTH is 422 with the pointer "".
- `Consistency-Token` (not in API.md) is read-your-writes across read replicas: a
  deployment with replicas answers every successful write with the primary's WAL
  position after its commit; a read (or search) that sends it back sees that write.
  Without it a read may lag by the deployment's REPLICA_MAX_LAG_MS. Any deployment
  checks the header's form (422 naming it); one without replicas sends none.

Rules the server enforces that this document's schemas cannot express:
- `as_of_version` and `as_of` exclude each other (422 when both are given):
  OpenAPI parameters cannot depend on each other.
- Metadata holds no U+0000 in keys or strings at any depth (the schema says so
  for the first level: generated clients cannot read a recursive schema), is at
  most MAX_METADATA_BYTES of compact JSON and 32 levels deep, and
  `content` at most MAX_CONTENT_BYTES of UTF-8: JSON Schema counts characters and
  cannot measure depth or serialized size. `maxLength` states the character bound
  implied by the byte limit.
- `as_of_version` and `at_version` past the head are 422, a version past the head
  in a path is 404: the head is data, not schema.
- An `after` cursor of `GET /v1/contexts` that this API did not return is 422: the
  cursor is opaque.
"""

# status -> description, for the statuses the builder adds by rule.
_STANDARD = {
    "304": "Not modified: If-None-Match holds this version",
    "401": "API key missing, unknown or revoked (only when the server has keys; see WWW-Authenticate)",
    "409": "Idempotency-Key in use by a running request (retry after Retry-After) or used for another request",
    "400": "Body (or metadata filter) is not JSON",
    "404": "Unknown or deleted context, malformed id, unknown version",
    "412": "If-Match did not match the head (the current head is in ETag)",
    "413": "Body over the limit",
    "415": "Body is not JSON",
    "422": "Well-formed but invalid input: unknown, missing or out-of-range fields or parameters",
    "503": "Database unavailable (see Retry-After)",
}
_HEADERS = {
    "ETag": {"description": '"<version>": the head, or the version read', "schema": {"type": "string"}},
    "Location": {"description": "URL of the new context", "schema": {"type": "string"}},
    "Link": {"description": 'rel="next": the absolute URL of the next page, when has_more', "schema": {"type": "string"}},
    "Retry-After": {"description": "seconds", "schema": {"type": "integer"}},
    "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}},
    "Consistency-Token": {
        "description": "the primary's WAL position after this write's commit, sent only by a deployment with read "
        "replicas: send it back on reads to see this write",
        "schema": {"type": "string", "pattern": LSN_PATTERN},
    },
    "X-Request-Id": {"description": "the client's, echoed, or generated", "schema": {"type": "string"}},
}


@dataclass(frozen=True)
class Operation:
    """What the document says of one responder."""

    operation_id: str
    tag: str
    summary: str
    ok: str  # "201" etc.
    ok_schema: str | None = None  # a component of schemas/responses.py
    ok_headers: tuple[str, ...] = ()
    ok_text: bool = False  # the success body is text/plain (no schema)
    query: str = "NoQuery"  # a class of RequestSchemas: every operation refuses unknown parameters
    body: str | None = None
    body_types: tuple[str, ...] = (JSON,)
    body_required: bool = False
    statuses: tuple[str, ...] = ()  # more than the rules add
    headers: tuple[dict[str, Any], ...] = ()  # request header parameters
    extra: dict[str, Any] = field(default_factory=dict)


def operation(operation_id: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """Document a responder (`on_get`, ...) for the OpenAPI document."""

    def mark(responder: Callable) -> Callable:
        responder.__openapi__ = Operation(operation_id, **kwargs)  # type: ignore[attr-defined]
        return responder

    return mark


@dataclass(frozen=True)
class Route:
    template: str  # Falcon's, with converters: /v1/contexts/{context_id:uuid}
    method: str
    responder: Callable


def served_routes(app: falcon.App) -> Iterator[Route]:
    """Every (path, method) the app routes to a responder of ours: Falcon's own
    responders (405, default OPTIONS) are left out."""
    stack = list(app._router._roots)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.resource is None:
            continue
        for method, responder in sorted(node.method_map.items()):
            if inspect.ismethod(responder) and responder.__self__ is node.resource:
                yield Route(node.uri_template, method, responder)


_PARAM = re.compile(r"{(?P<name>\w+)(?::(?P<converter>\w+)(?:\((?P<args>[^)]*)\))?)?}")


def _path(template: str) -> tuple[str, list[dict[str, Any]]]:
    """OpenAPI path and path parameters of a Falcon template."""
    parameters = []
    for match in _PARAM.finditer(template):
        if match["converter"] == "uuid":
            schema: dict[str, Any] = {"type": "string", "format": "uuid"}
        elif match["converter"] == "int":
            schema = {"type": "integer"}
            for arg in (match["args"] or "").split(","):
                key, _, value = arg.strip().partition("=")
                if key in ("min", "max"):
                    schema["minimum" if key == "min" else "maximum"] = int(value)
        else:
            schema = {"type": "string"}
        parameters.append({"in": "path", "name": match["name"], "required": True, "schema": schema})
    return _PARAM.sub(r"{\g<name>}", template), parameters


class UndocumentedRoute(LookupError):
    """A route the app serves without @operation documentation."""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(description: str, schema: str | None, headers: tuple[str, ...], media: str = JSON) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {name: _HEADERS[name] for name in ("X-Request-Id", *headers)},
    }
    if schema is not None:
        response["content"] = {media: {"schema": _ref(schema)}}
    return response


def _problem(code: str) -> dict[str, Any]:
    headers = {"503": ("Retry-After",), "409": ("Retry-After",), "412": ("ETag",), "401": ("WWW-Authenticate",)}.get(
        code, ()
    )
    if code == "304":
        return _response(_STANDARD[code], None, ("ETag",))
    return _response(_STANDARD[code], "Problem", headers, "application/problem+json")


def header_parameter(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    """An optional request header, as an OpenAPI parameter (`headers=` of @operation)."""
    schema = {"type": "string"} if pattern is None else {"type": "string", "pattern": pattern}
    return {"in": "header", "name": name, "required": False, "schema": schema, "description": description}


CONSISTENCY_TOKEN = header_parameter(
    "Consistency-Token",
    "a write's Consistency-Token: the read sees that write (a replica that has replayed it, "
    "else the primary). Without it a read may lag the latest writes by up to the deployment's "
    "REPLICA_MAX_LAG_MS when it reads from replicas",
    LSN_PATTERN,
)
REQUEST_ID = header_parameter(
    "X-Request-Id", "echoed on the response when 1..128 of [A-Za-z0-9._:-]; generated otherwise"
)
IDEMPOTENCY_KEY = header_parameter(
    "Idempotency-Key",
    "a retry with the same key and body gets the first response and writes nothing "
    "(scoped to the tenant, method and path; kept at least IDEMPOTENCY_TTL_HOURS)",
    IDEMPOTENCY_KEY_PATTERN,
)
IF_MATCH = header_parameter(
    "If-Match", 'append only if the head is still this version: "<head_version>" (a list of them) or *',
    IF_MATCH_PATTERN,
)
IF_NONE_MATCH = header_parameter(
    "If-None-Match", 'an ETag of an earlier read ("<version>") or *: 304 when it still holds'
)


def build_spec(app: falcon.App, schemas: RequestSchemas, settings: Settings) -> dict[str, Any]:
    """The whole document for the routes `app` serves, as a dict ready to serve.
    Raises UndocumentedRoute for a responder without @operation."""
    spec = APISpec(
        title="Context Store",
        version=__version__,
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": DESCRIPTION},
    )
    for name, schema in (
        ("Context", responses.ContextOut),
        ("Message", responses.MessageOut),
        ("ContextPage", responses.ContextPage),
        ("MessagePage", responses.MessagePage),
        ("AppendResult", responses.AppendResult),
        ("Window", responses.WindowOut),
        ("SearchResult", responses.SearchResult),
        ("Health", responses.HealthOut),
        ("Problem", responses.ProblemOut),
    ):
        spec.components.schema(name, schema=schema)
    bodies = set()

    paths: dict[str, dict[str, Any]] = {}
    for route in sorted(served_routes(app), key=lambda r: (r.template, r.method)):
        doc: Operation | None = getattr(route.responder, "__openapi__", None)
        if doc is None:
            raise UndocumentedRoute(f"{route.method} {route.template} has no @operation documentation")
        path, path_parameters = _path(route.template)
        statuses = {"422", "503", *doc.statuses}
        if path_parameters:
            statuses.add("404")
        keyed = path.startswith("/v1/")
        if keyed:
            statuses.add("401")
        # A write answers with a consistency token; a read takes one back.
        reads = route.method in ("GET", "HEAD") or getattr(route.responder.__self__, "read_only", False)
        ok_headers = doc.ok_headers if reads or not keyed else (*doc.ok_headers, "Consistency-Token")
        parameters: list[dict[str, Any]] = [
            *path_parameters,
            REQUEST_ID,
            *((CONSISTENCY_TOKEN,) if keyed and reads else ()),
            *doc.headers,
            {"in": "query", "schema": schemas.classes[doc.query]},
        ]
        operation: dict[str, Any] = {
            "operationId": doc.operation_id,
            "tags": [doc.tag],
            "summary": doc.summary,
            "parameters": parameters,
            "responses": {doc.ok: _response(doc.summary if doc.ok == "200" else "Done", doc.ok_schema, ok_headers)},
            **doc.extra,
        }
        if keyed:
            # A key when the server has keys; none when it runs open.
            operation["security"] = [{"apiKey": []}, {}]
        if doc.ok_text:
            operation["responses"][doc.ok]["content"] = {"text/plain": {"schema": {"type": "string"}}}
        if doc.body is not None:
            statuses |= {"400", "413", "415"}
            bodies.add(doc.body)
            operation["requestBody"] = {
                "required": doc.body_required,
                "content": {media: {"schema": _ref(doc.body)} for media in doc.body_types},
            }
        if route.method == "HEAD":
            # No body in any HEAD response.
            operation["responses"] = {
                code: {key: value for key, value in response.items() if key != "content"}
                for code, response in {**operation["responses"], **{c: _problem(c) for c in statuses}}.items()
            }
        else:
            operation["responses"].update({code: _problem(code) for code in sorted(statuses)})
        paths.setdefault(path, {})[route.method.lower()] = operation

    for name in sorted(bodies):  # nested schemas (MessageIn) register themselves
        spec.components.schema(name, schema=schemas.classes[name])
    spec.components.security_scheme(
        "apiKey",
        {"type": "http", "scheme": "bearer", "description": "an API key made with `context-store keys create`"},
    )
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    _json_objects(document)
    # The embedding's length is the deployment's, known only here.
    embedding = document["components"]["schemas"]["Message"]["properties"]["embedding"]
    embedding["description"] = f"{settings.embedding_dim} numbers; only with include=embedding (null when none)"
    embedding["anyOf"] = [
        {"type": "array", "items": {"type": "number"}, "minItems": settings.embedding_dim,
         "maxItems": settings.embedding_dim},
        {"type": "null"},
    ]
    embedding.pop("type", None)
    embedding.pop("items", None)
    return document


NO_NUL = "^[^\\u0000]*$"
# Metadata as JSON Schema can say it: an object whose keys and top-level strings
# hold no U+0000 and whose top-level integers fit 64 bits (what orjson reads).
# Not recursive: generated clients (openapi-python-client) cannot parse a
# recursive schema, so the rule below the first level is in the description.
_JSON_SCHEMAS = {
    "JsonObject": {
        "type": "object",
        "propertyNames": {"pattern": NO_NUL},
        "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        "description": "a JSON object: no U+0000 in any key or string, at any depth; at most 32 levels deep "
        "and MAX_METADATA_BYTES of compact JSON (not all expressible here)",
    },
    "JsonValue": {
        "anyOf": [
            {"type": "string", "pattern": NO_NUL},
            {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
            {"type": "array", "items": {}},
            {"type": "object"},
        ]
    },
}


def _json_objects(document: dict[str, Any]) -> None:
    """Point every metadata field (marked by schemas/fields.py) at JsonObject; a
    query parameter holding JSON text becomes a `content` parameter, OpenAPI's way
    to say a parameter is serialized JSON."""
    schemas = document["components"]["schemas"]
    schemas.update(_JSON_SCHEMAS)
    ref = {"$ref": "#/components/schemas/JsonObject"}
    for schema in schemas.values():
        for name, prop in schema.get("properties", {}).items():
            if prop.pop(METADATA_MARK, None):
                nullable = "null" in prop.get("type", ())
                schema["properties"][name] = {
                    **({"anyOf": [ref, {"type": "null"}]} if nullable else ref),
                    **({"description": prop["description"]} if "description" in prop else {}),
                }
    for item in document["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("schema", {}).pop(METADATA_MARK, None):
                    del parameter["schema"]  # apispec keeps the description on the parameter
                    parameter["content"] = {JSON: {"schema": ref}}


class OpenApi:
    """GET /openapi.json: the document, built once from the app, served as bytes."""

    def __init__(self, schemas: RequestSchemas) -> None:
        self.schemas = schemas
        self.data = b""

    def publish(self, document: dict[str, Any]) -> None:
        self.data = orjson.dumps(document)

    @operation("getOpenApi", tag="meta", summary="This document (OpenAPI 3.1)", ok="200", query="NoQuery")
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        load_query(self.schemas.no_query, req.params)
        resp.content_type = JSON
        resp.data = self.data
