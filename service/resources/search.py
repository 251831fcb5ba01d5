"""POST /v1/contexts/{id}/search and POST /v1/search."""

from __future__ import annotations

from uuid import UUID

import falcon

from ..http import BodyReader, send
from ..openapi import operation
from ..queries.search import Search, SearchResult
from ..schemas.loading import load_body, load_query
from ..schemas.requests import RequestSchemas

TAG = "search"
MODES = (
    "embedding alone: semantic; query alone: text, or hybrid when the server embeds queries "
    "(text again when its embeddings endpoint is down); both: hybrid (reciprocal-rank fusion)."
)


def _document(result: SearchResult) -> dict:
    return {"data": result.data, "mode": result.mode}


class InContext:
    read_only = True  # a POST that writes nothing: no consistency token

    def __init__(self, search: Search, schemas: RequestSchemas, read_body: BodyReader) -> None:
        self.search = search
        self.schemas = schemas
        self.read_body = read_body

    @operation(
        "searchContext", tag=TAG, summary="Search one context's view (its lineage up to the viewed version)",
        ok="200", ok_schema="SearchResult", query="NoQuery", body="SearchContext", body_required=True,
        extra={"description": MODES},
    )
    def on_post(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        load_query(self.schemas.no_query, req.params)
        body = load_body(self.schemas.search_context, self.read_body(req))
        result = self.search.in_context(
            req.context.tenant, context_id, query=body.get("query"), embedding=body.get("embedding"), k=body["k"],
            roles=body.get("roles"), as_of_version=body.get("as_of_version"), as_of=body.get("as_of"),
        )
        send(resp, _document(result))


class InTenant:
    read_only = True

    def __init__(self, search: Search, schemas: RequestSchemas, read_body: BodyReader) -> None:
        self.search = search
        self.schemas = schemas
        self.read_body = read_body

    @operation(
        "searchTenant", tag=TAG, summary="Search every live context of the tenant",
        ok="200", ok_schema="SearchResult", query="NoQuery", body="SearchTenant", body_required=True,
        extra={"description": MODES + " A message several forks share appears once, under the context that "
                                      "holds it (possibly a deleted one, when a live fork inherited it)."},
    )
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        load_query(self.schemas.no_query, req.params)
        body = load_body(self.schemas.search_tenant, self.read_body(req))
        result = self.search.in_tenant(
            req.context.tenant, query=body.get("query"), embedding=body.get("embedding"), k=body["k"],
            roles=body.get("roles"), metadata=body.get("metadata"),
        )
        send(resp, _document(result))
