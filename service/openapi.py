"""The OpenAPI 3.1 document, generated with apispec from the marshmallow schemas
that validate requests (schemas.py) and describe responses."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from . import __version__
from .schemas import (
    AppendResult,
    ContextOut,
    ContextPage,
    HealthOut,
    MessageOut,
    MessagePage,
    ProblemOut,
    Schemas,
    WindowOut,
)

DESCRIPTION = """\
Versioned, forkable storage for the contexts (conversations) of LLM applications.

Errors are `application/problem+json` (RFC 9457). Validation errors (422) list
`errors` with an RFC 6901 `pointer` into the body, a query `parameter` or a
`header`.

Readings of the contract where API.md leaves room:
- `GET /health` answers 503 with `Content-Type: application/problem+json`; its body
  keeps the health shape, so `status` is the string `"unavailable"` rather than
  the problem document's usual number.
- `If-Match` takes a list of strong tags `"<head_version>"` or `*`; weak tags never
  match; a header in another form is 422 naming the header.
- `PATCH` with `{"metadata": null}` empties the metadata; the merged result must
  fit the metadata limit (compact JSON, as at creation) or 422, and nothing changes.
- A page past the end is 200 with empty `data`; `before`/`after` outside the
  conversation simply bound the range.
- A fork that would read through more ancestor segments than the deployment's
  MAX_LINEAGE_DEPTH (default 256) is 422 with the pointer "".
- Metadata nested deeper than 32 levels, and text holding U+0000, are 422.
"""

_ERRORS = {
    "400": "Body (or metadata filter) is not JSON",
    "404": "Unknown or deleted context, malformed id, unknown version",
    "405": "Method not allowed (see Allow)",
    "412": "If-Match did not match the head",
    "413": "Body over the limit",
    "415": "Body is not JSON",
    "422": "Well-formed but invalid input",
    "503": "Database unavailable (see Retry-After)",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problems(*codes: str) -> dict[str, Any]:
    return {
        code: {
            "description": _ERRORS[code],
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        for code in codes
    }


def _ok(code: str, schema: str | None, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = {"application/json": {"schema": _ref(schema)}}
    if headers:
        response["headers"] = headers
    return {code: response}


def _query(schema: Any) -> list[dict[str, Any]]:
    return [{"in": "query", "schema": schema}]


def _body(schema: str, media_types: tuple[str, ...] = ("application/json",)) -> dict[str, Any]:
    return {"required": False, "content": {m: {"schema": _ref(schema)} for m in media_types}}


def build_spec(schemas: Schemas) -> dict[str, Any]:
    """The whole document as a dict, ready to serve."""
    spec = APISpec(
        title="Context Store",
        version=__version__,
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": DESCRIPTION},
    )
    c = schemas.classes
    for name, schema in (
        ("Context", ContextOut),
        ("Message", MessageOut),
        ("ContextPage", ContextPage),
        ("MessagePage", MessagePage),
        ("AppendResult", AppendResult),
        ("Window", WindowOut),
        ("Health", HealthOut),
        ("Problem", ProblemOut),
        ("MessageIn", c["MessageIn"]),
        ("ContextCreate", c["ContextCreate"]),
        ("ContextPatch", c["ContextPatch"]),
        ("AppendMessages", c["AppendMessages"]),
        ("ForkCreate", c["ForkCreate"]),
    ):
        spec.components.schema(name, schema=schema)

    context_id = {"in": "path", "name": "context_id", "required": True, "schema": {"type": "string", "format": "uuid"}}
    version = {"in": "path", "name": "version", "required": True, "schema": {"type": "integer", "minimum": 1}}
    etag = {"ETag": {"description": '"<head_version>" (or the version read)', "schema": {"type": "string"}}}
    location = {"Location": {"description": "URL of the new context", "schema": {"type": "string"}}}
    link = {"Link": {"description": 'rel="next" when has_more', "schema": {"type": "string"}}}
    request_id = {
        "in": "header",
        "name": "X-Request-Id",
        "required": False,
        "schema": {"type": "string"},
        "description": "echoed on the response; generated when absent",
    }
    if_match = {
        "in": "header",
        "name": "If-Match",
        "required": False,
        "schema": {"type": "string"},
        "description": 'append only if the head is still this version: "<head_version>" or *',
    }

    spec.path(
        path="/health",
        operations={
            "get": {
                "summary": "Service, database and tokenizer health",
                "parameters": [request_id],
                "responses": {
                    **_ok("200", "Health", "Healthy"),
                    "503": {
                        "description": "Database unreachable: the health shape with status 'unavailable'",
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                        "content": {"application/problem+json": {"schema": {"type": "object"}}},
                    },
                },
            }
        },
    )
    spec.path(
        path="/openapi.json",
        operations={"get": {"summary": "This document", "responses": _ok("200", None, "OpenAPI document")}},
    )
    spec.path(
        path="/v1/contexts",
        operations={
            "post": {
                "summary": "Create a context",
                "parameters": [request_id],
                "requestBody": _body("ContextCreate"),
                "responses": {
                    **_ok("201", "Context", "Created", {**location, **etag}),
                    **_problems("400", "413", "415", "422", "503"),
                },
            },
            "get": {
                "summary": "List contexts, newest first (keyset pagination)",
                "parameters": [request_id, *_query(c["ListContextsQuery"])],
                "responses": {**_ok("200", "ContextPage", "A page", link), **_problems("400", "422", "503")},
            },
        },
    )
    spec.path(
        path="/v1/contexts/{context_id}",
        parameters=[context_id],
        operations={
            "get": {
                "summary": "Get a context, optionally as of a version or time",
                "parameters": [request_id, *_query(c["ContextQuery"])],
                "responses": {**_ok("200", "Context", "The context", etag), **_problems("404", "422", "503")},
            },
            "head": {
                "summary": "Does the context exist",
                "parameters": [request_id, *_query(c["ContextQuery"])],
                "responses": {
                    "200": {"description": "It exists", "headers": etag},
                    "404": {"description": _ERRORS["404"]},
                },
            },
            "patch": {
                "summary": "JSON merge patch (RFC 7396) of the metadata",
                "parameters": [request_id],
                "requestBody": _body("ContextPatch", ("application/json", "application/merge-patch+json")),
                "responses": {
                    **_ok("200", "Context", "Patched", etag),
                    **_problems("400", "404", "413", "415", "422", "503"),
                },
            },
            "delete": {
                "summary": "Soft-delete; forks keep what they inherited",
                "parameters": [request_id],
                "responses": {"204": {"description": "Deleted"}, **_problems("404", "422", "503")},
            },
        },
    )
    spec.path(
        path="/v1/contexts/{context_id}/messages",
        parameters=[context_id],
        operations={
            "post": {
                "summary": "Append 1..1000 messages, all or nothing",
                "parameters": [request_id, if_match],
                "requestBody": {**_body("AppendMessages"), "required": True},
                "responses": {
                    **_ok("201", "AppendResult", "Appended", etag),
                    **_problems("400", "404", "412", "413", "415", "422", "503"),
                },
            },
            "get": {
                "summary": "A keyset page of messages",
                "parameters": [request_id, *_query(c["ListMessagesQuery"])],
                "responses": {
                    **_ok("200", "MessagePage", "A page", {**link, **etag}),
                    **_problems("404", "422", "503"),
                },
            },
        },
    )
    spec.path(
        path="/v1/contexts/{context_id}/messages/{version}",
        parameters=[context_id, version],
        operations={
            "get": {
                "summary": "One message by version",
                "parameters": [request_id, *_query(c["MessageQuery"])],
                "responses": {**_ok("200", "Message", "The message"), **_problems("404", "422", "503")},
            }
        },
    )
    spec.path(
        path="/v1/contexts/{context_id}/window",
        parameters=[context_id],
        operations={
            "get": {
                "summary": "The most recent messages that fit max_tokens",
                "parameters": [request_id, *_query(c["WindowQuery"])],
                "responses": {**_ok("200", "Window", "The window", etag), **_problems("404", "422", "503")},
            }
        },
    )
    spec.path(
        path="/v1/contexts/{context_id}/forks",
        parameters=[context_id],
        operations={
            "post": {
                "summary": "Fork at a version without copying a message",
                "parameters": [request_id],
                "requestBody": _body("ForkCreate"),
                "responses": {
                    **_ok("201", "Context", "The fork", {**location, **etag}),
                    **_problems("400", "404", "413", "415", "422", "503"),
                },
            }
        },
    )
    return spec.to_dict()


class OpenApi:
    """GET /openapi.json: built once, served as bytes."""

    def __init__(self, document: dict[str, Any]) -> None:
        import orjson

        self.data = orjson.dumps(document)

    def on_get(self, req, resp) -> None:
        resp.content_type = "application/json"
        resp.data = self.data
