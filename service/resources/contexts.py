"""/v1/contexts, /v1/contexts/{id} and /v1/contexts/{id}/forks."""

from __future__ import annotations

from uuid import UUID

import falcon

from ..http import JSON, MERGE_PATCH, BodyReader, etag, idempotent, link_next, send
from ..openapi import IDEMPOTENCY_KEY, operation
from ..queries.contexts import Contexts
from ..queries.idempotency import Idempotency
from ..representations import context_doc, decode_cursor, encode_cursor
from ..schemas.loading import load_body, load_query
from ..schemas.requests import RequestSchemas

TAG = "contexts"


class Collection:
    def __init__(self, contexts: Contexts, idempotency: Idempotency, schemas: RequestSchemas,
                 read_body: BodyReader) -> None:
        self.contexts = contexts
        self.idempotency = idempotency
        self.schemas = schemas
        self.read_body = read_body

    @operation(
        "createContext", tag=TAG, summary="Create a context", ok="201", ok_schema="Context",
        ok_headers=("Location", "ETag"), query="NoQuery", body="ContextCreate", statuses=("409",),
        headers=(IDEMPOTENCY_KEY,),
    )
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        load_query(self.schemas.no_query, req.params)
        data = load_body(self.schemas.context_create, self.read_body(req))
        with idempotent(req, resp, self.idempotency, data) as fresh:
            if fresh:
                row = self.contexts.create(req.context.tenant, data.get("metadata", {}))
                resp.location = f"/v1/contexts/{row['id']}"
                resp.etag = etag(row["head_version"])
                send(resp, context_doc(row), 201)

    @operation(
        "listContexts", tag=TAG, summary="List contexts, newest first (keyset pages)", ok="200",
        ok_schema="ContextPage", ok_headers=("Link",), query="ListContextsQuery", statuses=("400",),
    )
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = load_query(self.schemas.list_contexts, req.params)
        after = decode_cursor(query["after"]) if "after" in query else None
        page = self.contexts.list(req.context.tenant, limit=query["limit"], after=after, metadata=query.get("metadata"))
        cursor = None if page.next_position is None else encode_cursor(*page.next_position)
        if cursor is not None:
            link_next(req, resp, "after", cursor)
        send(resp, {"data": [context_doc(r) for r in page.rows], "has_more": cursor is not None, "next_cursor": cursor})


class Item:
    def __init__(self, contexts: Contexts, schemas: RequestSchemas, read_body: BodyReader) -> None:
        self.contexts = contexts
        self.schemas = schemas
        self.read_body = read_body

    def _read(self, req: falcon.Request, context_id: UUID) -> dict:
        query = load_query(self.schemas.context_query, req.params)
        return self.contexts.get(
            req.context.tenant, context_id, as_of_version=query.get("as_of_version"), as_of=query.get("as_of")
        )

    @operation(
        "getContext", tag=TAG, summary="Get a context, optionally as of a version or a time", ok="200",
        ok_schema="Context", ok_headers=("ETag",), query="ContextQuery",
    )
    def on_get(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        row = self._read(req, context_id)
        resp.etag = etag(row["head_version"])
        send(resp, context_doc(row))

    @operation(
        "headContext", tag=TAG, summary="Whether a context exists (as of a version or a time)", ok="200",
        ok_headers=("ETag",), query="ContextQuery",
    )
    def on_head(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        row = self._read(req, context_id)
        resp.etag = etag(row["head_version"])
        resp.content_type = JSON

    @operation(
        "patchContext", tag=TAG, summary="JSON merge patch (RFC 7396) of a context's metadata", ok="200",
        ok_schema="Context", ok_headers=("ETag",), query="NoQuery", body="ContextPatch",
        body_types=(JSON, MERGE_PATCH),
    )
    def on_patch(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        load_query(self.schemas.no_query, req.params)
        data = load_body(self.schemas.context_patch, self.read_body(req, (JSON, MERGE_PATCH)))
        row = self.contexts.patch(req.context.tenant, context_id, data.get("metadata", {}))
        resp.etag = etag(row["head_version"])
        send(resp, context_doc(row))

    @operation(
        "deleteContext", tag=TAG, summary="Soft-delete a context; its forks keep what they inherited", ok="204",
        query="NoQuery",
    )
    def on_delete(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        load_query(self.schemas.no_query, req.params)
        self.contexts.delete(req.context.tenant, context_id)
        resp.status = 204


class Forks:
    def __init__(self, contexts: Contexts, idempotency: Idempotency, schemas: RequestSchemas,
                 read_body: BodyReader) -> None:
        self.contexts = contexts
        self.idempotency = idempotency
        self.schemas = schemas
        self.read_body = read_body

    @operation(
        "forkContext", tag=TAG, summary="Fork a context at a version without copying a message", ok="201",
        ok_schema="Context", ok_headers=("Location", "ETag"), query="NoQuery", body="ForkCreate",
        statuses=("409",), headers=(IDEMPOTENCY_KEY,),
    )
    def on_post(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        load_query(self.schemas.no_query, req.params)
        data = load_body(self.schemas.fork_create, self.read_body(req))
        with idempotent(req, resp, self.idempotency, data) as fresh:
            if fresh:
                row = self.contexts.fork(
                    req.context.tenant, context_id, at_version=data.get("at_version"), metadata=data.get("metadata")
                )
                resp.location = f"/v1/contexts/{row['id']}"
                resp.etag = etag(row["head_version"])
                send(resp, context_doc(row), 201)
