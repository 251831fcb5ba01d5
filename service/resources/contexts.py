"""/v1/contexts, /v1/contexts/{id} and /v1/contexts/{id}/forks."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import falcon
import orjson

from ..errors import Invalid, NotFound
from ..http import JSON, MERGE_PATCH, etag, link_next, read_json, send
from ..queries import contexts
from ..representations import context_doc, decode_cursor, encode_cursor
from ..schemas import MAX_JSON_DEPTH, NUL_MESSAGE, has_nul, json_depth, load_body, load_query, parse_json
from . import Deps


def not_found(context_id: UUID) -> NotFound:
    return NotFound(f"Context {context_id} does not exist.")


def check_view(view: int, head: int) -> int:
    """The version a read sees; 422 when as_of_version asks for one past the head."""
    if view > head:
        raise Invalid.parameter("as_of_version", f"Version {view} is past the head ({head}).")
    return view


class Collection:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        schemas = self.deps.schemas
        load_query(schemas.NoQuery, req.params)
        data = load_body(schemas.ContextCreate, read_json(req, self.deps.settings.max_body_bytes))
        with self.deps.db.connection() as conn:
            row = contexts.create_context(conn, tenant=req.context.tenant, metadata=data.get("metadata", {}))
        resp.location = f"/v1/contexts/{row['id']}"
        resp.etag = etag(row["head_version"])
        send(resp, context_doc(row), 201)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = load_query(self.deps.schemas.ListContextsQuery, req.params)
        metadata = None
        if "metadata" in query:
            metadata = parse_json(query["metadata"], "metadata parameter")
            if not isinstance(metadata, dict):
                raise Invalid.parameter("metadata", "Must be a JSON object.")
            if json_depth(metadata) > MAX_JSON_DEPTH:
                raise Invalid.parameter("metadata", f"Nested deeper than {MAX_JSON_DEPTH} levels.")
            if has_nul(metadata, query["metadata"].encode()):
                raise Invalid.parameter("metadata", NUL_MESSAGE)
        after = decode_cursor(query["after"]) if "after" in query else None
        limit = query["limit"]
        with self.deps.db.connection() as conn:
            rows = contexts.list_contexts(
                conn, tenant=req.context.tenant, limit=limit + 1, after=after, metadata=metadata
            )
        has_more = len(rows) > limit
        rows = rows[:limit]
        cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if has_more else None
        if cursor is not None:
            link_next(req, resp, "after", cursor)
        send(resp, {"data": [context_doc(r) for r in rows], "has_more": has_more, "next_cursor": cursor})


class Item:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def _read(self, req: falcon.Request, context_id: UUID) -> dict[str, Any]:
        query = load_query(self.deps.schemas.ContextQuery, req.params)
        with self.deps.db.connection() as conn:
            row = contexts.get_context(
                conn,
                tenant=req.context.tenant,
                context_id=context_id,
                as_of_version=query.get("as_of_version"),
                as_of=query.get("as_of"),
            )
        if row is None:
            raise not_found(context_id)
        check_view(row["view_version"], row["head_version"])
        return row

    def on_get(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        row = self._read(req, context_id)
        doc = context_doc(row)
        doc["head_version"] = row["view_version"]
        doc["total_tokens"] = row["view_tokens"]
        resp.etag = etag(row["view_version"])
        send(resp, doc)

    def on_head(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        row = self._read(req, context_id)
        resp.etag = etag(row["view_version"])
        resp.content_type = JSON

    def on_patch(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        schemas = self.deps.schemas
        settings = self.deps.settings
        load_query(schemas.NoQuery, req.params)
        data = load_body(schemas.ContextPatch, read_json(req, settings.max_body_bytes, (JSON, MERGE_PATCH)))
        tenant = req.context.tenant
        limit = settings.max_metadata_bytes
        with self.deps.db.connection() as conn, conn.transaction():
            row = contexts.patch_metadata(conn, tenant=tenant, context_id=context_id, patch=data.get("metadata", {}))
            if row is None:
                raise not_found(context_id)
            # Sized as at creation (compact JSON); raising rolls the patch back.
            if len(orjson.dumps(orjson.loads(row["metadata_text"]))) > limit:
                raise Invalid.pointer("/metadata", f"The patched metadata would exceed {limit} bytes.")
        resp.etag = etag(row["head_version"])
        send(resp, context_doc(row))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        load_query(self.deps.schemas.NoQuery, req.params)
        with self.deps.db.connection() as conn:
            deleted = contexts.delete_context(conn, tenant=req.context.tenant, context_id=context_id)
        if not deleted:
            raise not_found(context_id)
        resp.status = 204


class Forks:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_post(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        schemas = self.deps.schemas
        load_query(schemas.NoQuery, req.params)
        data = load_body(schemas.ForkCreate, read_json(req, self.deps.settings.max_body_bytes))
        tenant = req.context.tenant
        with self.deps.db.connection() as conn:
            row = contexts.fork_context(
                conn,
                tenant=tenant,
                parent_id=context_id,
                at_version=data.get("at_version"),
                metadata=data.get("metadata"),
                max_segments=self.deps.settings.max_lineage_depth,
            )
            if row is None:
                head = contexts.get_head(conn, tenant=tenant, context_id=context_id)
                if head is None:
                    raise not_found(context_id)
                if data.get("at_version", head) > head:
                    raise Invalid.pointer("/at_version", f"Version {data['at_version']} is past the head ({head}).")
                raise Invalid.pointer(
                    "",
                    f"The fork would read through more than {self.deps.settings.max_lineage_depth} "
                    "ancestor segments (MAX_LINEAGE_DEPTH); fork an earlier version or a shallower context.",
                )
        resp.location = f"/v1/contexts/{row['id']}"
        resp.etag = etag(row["head_version"])
        send(resp, context_doc(row), 201)
