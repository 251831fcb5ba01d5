"""/v1/contexts/{id}/messages, /messages/{version} and /window."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import falcon

from ..errors import NotFound, PreconditionFailed
from ..http import etag, link_next, parse_if_match, read_json, send
from ..queries import contexts, messages
from ..representations import message_doc
from ..schemas import load_body, load_query
from . import Deps
from .contexts import check_view, not_found


def view_of(rows: list[dict[str, Any]], context_id: UUID) -> int:
    """The version a read sees; 404 when the context is missing, 422 past the head."""
    if not rows:
        raise not_found(context_id)
    return check_view(rows[0]["view_version"], rows[0]["head_version"])


class Collection:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_post(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        schemas = self.deps.schemas
        load_query(schemas.NoQuery, req.params)
        batch = load_body(schemas.AppendMessages, read_json(req, self.deps.settings.max_body_bytes))["messages"]
        if_match = parse_if_match(req.get_header("If-Match"))
        count = self.deps.tokenizer.count
        for message in batch:
            if "token_count" not in message:
                message["token_count"] = count(message["content"])
        tenant = req.context.tenant
        with self.deps.db.connection() as conn:
            result = messages.append_messages(
                conn, tenant=tenant, context_id=context_id, messages=batch, if_match=if_match
            )
            if result is None:
                head = contexts.get_head(conn, tenant=tenant, context_id=context_id)
                if head is None:
                    raise not_found(context_id)
                raise PreconditionFailed(f"The head is version {head}; If-Match did not match it. Nothing was written.")
        head = result["head_version"]
        first = head - len(batch) + 1
        # The rows just written, rebuilt from the request rather than read back.
        data = [
            message_doc(
                {
                    **m,
                    "context_id": context_id,
                    "version": first + index,
                    "metadata": m.get("metadata") or {},
                    "created_at": result["created_at"],
                }
            )
            for index, m in enumerate(batch)
        ]
        resp.etag = etag(head)
        send(resp, {"data": data, "head_version": head, "total_tokens": result["total_tokens"]}, 201)

    def on_get(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        query = load_query(self.deps.schemas.ListMessagesQuery, req.params)
        limit = query["limit"]
        descending = query["order"] == "desc"
        include_embedding = query.get("include") == "embedding"
        with self.deps.db.connection() as conn:
            rows = messages.list_messages(
                conn,
                tenant=req.context.tenant,
                context_id=context_id,
                limit=limit + 1,
                descending=descending,
                after=query.get("after"),
                before=query.get("before"),
                as_of_version=query.get("as_of_version"),
                as_of=query.get("as_of"),
                include_embedding=include_embedding,
            )
        view = view_of(rows, context_id)
        rows = [r for r in rows if r["version"] is not None]
        has_more = len(rows) > limit
        rows = rows[:limit]
        cursor = str(rows[-1]["version"]) if has_more else None
        if cursor is not None:
            link_next(req, resp, "before" if descending else "after", cursor)
        resp.etag = etag(view)
        send(
            resp,
            {
                "data": [message_doc(r, include_embedding) for r in rows],
                "has_more": has_more,
                "next_cursor": cursor,
            },
        )


class Item:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, context_id: UUID, version: int) -> None:
        query = load_query(self.deps.schemas.MessageQuery, req.params)
        include_embedding = query.get("include") == "embedding"
        with self.deps.db.connection() as conn:
            rows = messages.get_message(
                conn,
                tenant=req.context.tenant,
                context_id=context_id,
                version=version,
                include_embedding=include_embedding,
            )
        if not rows:
            raise not_found(context_id)
        if rows[0]["version"] is None:
            raise NotFound(f"Context {context_id} has no version {version} (its head is {rows[0]['head_version']}).")
        send(resp, message_doc(rows[0], include_embedding))


class Window:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        query = load_query(self.deps.schemas.WindowQuery, req.params)
        max_tokens = query["max_tokens"]
        with self.deps.db.connection() as conn:
            rows = messages.get_window(
                conn,
                tenant=req.context.tenant,
                context_id=context_id,
                max_tokens=max_tokens,
                pin_system=query["pin_system"],
                as_of_version=query.get("as_of_version"),
                as_of=query.get("as_of"),
            )
        view = view_of(rows, context_id)
        data = [message_doc(r) for r in rows if r["version"] is not None]
        resp.etag = etag(view)
        send(
            resp,
            {
                "data": data,
                "token_count": sum(m["token_count"] for m in data),
                "max_tokens": max_tokens,
                "from_version": data[0]["version"] if data else None,
                "to_version": data[-1]["version"] if data else None,
                "truncated": len(data) < view,
            },
        )
