"""/v1/contexts/{id}/messages, /messages/{version} and /window."""

from __future__ import annotations

from uuid import UUID

import falcon

from ..http import BodyReader, cacheable, etag, idempotent, link_next, parse_if_match, send
from ..openapi import IDEMPOTENCY_KEY, IF_MATCH, IF_NONE_MATCH, operation
from ..queries.idempotency import Idempotency
from ..queries.messages import Messages
from ..schemas.loading import load_body, load_query
from ..schemas.requests import RequestSchemas

TAG = "messages"


class Collection:
    def __init__(self, messages: Messages, idempotency: Idempotency, schemas: RequestSchemas,
                 read_body: BodyReader) -> None:
        self.messages = messages
        self.idempotency = idempotency
        self.schemas = schemas
        self.read_body = read_body

    @operation(
        "appendMessages", tag=TAG, summary="Append 1..MAX_BATCH_MESSAGES messages, all or nothing", ok="201",
        ok_schema="AppendResult", ok_headers=("ETag",), query="NoQuery", body="AppendMessages",
        body_required=True, statuses=("409", "412"), headers=(IF_MATCH, IDEMPOTENCY_KEY),
    )
    def on_post(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        load_query(self.schemas.no_query, req.params)
        data = load_body(self.schemas.append_messages, self.read_body(req))
        if_match = parse_if_match(req.get_header("If-Match"))
        with idempotent(req, resp, self.idempotency, data) as fresh:
            if fresh:
                appended = self.messages.append(req.context.tenant, context_id, data["messages"], if_match)
                resp.etag = etag(appended.head_version)
                send(
                    resp,
                    {"data": appended.data, "head_version": appended.head_version,
                     "total_tokens": appended.total_tokens},
                    201,
                )

    @operation(
        "listMessages", tag=TAG, summary="A keyset page of a context's messages", ok="200",
        ok_schema="MessagePage", ok_headers=("ETag", "Link"), query="ListMessagesQuery", statuses=("304",),
        headers=(IF_NONE_MATCH,),
    )
    def on_get(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        query = load_query(self.schemas.list_messages, req.params)
        descending = query["order"] == "desc"
        page = self.messages.list(
            req.context.tenant,
            context_id,
            limit=query["limit"],
            descending=descending,
            after=query.get("after"),
            before=query.get("before"),
            as_of_version=query.get("as_of_version"),
            as_of=query.get("as_of"),
            include_embedding="include" in query,
        )
        cursor = str(page.last_version) if page.has_more else None
        if cursor is not None:
            link_next(req, resp, "before" if descending else "after", cursor)
        cacheable(req, resp, page.view_version, {"data": page.data, "has_more": page.has_more, "next_cursor": cursor})


class Item:
    def __init__(self, messages: Messages, schemas: RequestSchemas) -> None:
        self.messages = messages
        self.schemas = schemas

    @operation(
        "getMessage", tag=TAG, summary="One message by version", ok="200", ok_schema="Message",
        ok_headers=("ETag",), query="MessageQuery", statuses=("304",), headers=(IF_NONE_MATCH,),
    )
    def on_get(self, req: falcon.Request, resp: falcon.Response, context_id: UUID, version: int) -> None:
        query = load_query(self.schemas.message_query, req.params)
        message = self.messages.get(req.context.tenant, context_id, version, include_embedding="include" in query)
        cacheable(req, resp, message.version, message.doc)


class Window:
    def __init__(self, messages: Messages, schemas: RequestSchemas) -> None:
        self.messages = messages
        self.schemas = schemas

    @operation(
        "getWindow", tag=TAG, summary="The most recent messages that fit a token budget", ok="200",
        ok_schema="Window", ok_headers=("ETag",), query="WindowQuery", statuses=("304",), headers=(IF_NONE_MATCH,),
    )
    def on_get(self, req: falcon.Request, resp: falcon.Response, context_id: UUID) -> None:
        query = load_query(self.schemas.window_query, req.params)
        max_tokens = query["max_tokens"]
        window = self.messages.window(
            req.context.tenant,
            context_id,
            max_tokens=max_tokens,
            pin_system=query["pin_system"],
            as_of_version=query.get("as_of_version"),
            as_of=query.get("as_of"),
        )
        cacheable(
            req,
            resp,
            window.view_version,
            {
                "data": window.data,
                "token_count": window.token_count,
                "max_tokens": max_tokens,
                "from_version": window.from_version,
                "to_version": window.to_version,
                "truncated": window.truncated,
            },
        )
