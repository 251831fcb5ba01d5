"""Messages and token windows: sql/queries/messages.sql.

Message documents are built by PostgreSQL (cs_message_doc_v1) and pass through
as JSON fragments: no per-message Python on the way out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from ..db import Database
from ..errors import NotFound, PreconditionFailed
from ..limits import MAX_VERSION
from ..sql import QUERIES
from ..tokens import Tokenizer
from .contexts import check_view, missing
from .roots import Roots


@dataclass(frozen=True)
class Appended:
    head_version: int
    total_tokens: int
    data: orjson.Fragment  # the messages written, a JSON array in version order


@dataclass(frozen=True)
class MessagePage:
    view_version: int
    data: orjson.Fragment  # a JSON array of messages in the page's order
    has_more: bool
    last_version: int | None  # the page's last version: the next page's cursor


@dataclass(frozen=True)
class Message:
    version: int
    doc: orjson.Fragment


@dataclass(frozen=True)
class Window:
    view_version: int
    data: orjson.Fragment
    token_count: int
    from_version: int | None
    to_version: int | None
    truncated: bool


class Messages:
    """Append to, page through and cut windows from a context's view."""

    def __init__(self, db: Database, roots: Roots, tokenizer: Tokenizer) -> None:
        self.db = db
        self.roots = roots
        self.count_tokens = tokenizer.count

    def append(self, tenant: str, context_id: UUID, messages: list[dict[str, Any]],
               if_match: list[int] | None = None) -> Appended:
        """Append a batch, all or nothing, in one statement. Messages without a
        token_count are counted here. if_match: the heads the append may happen
        on (None for any); PreconditionFailed names the current head otherwise."""
        count = self.count_tokens
        token_counts = [m["token_count"] if "token_count" in m else count(m["content"]) for m in messages]
        dumps = orjson.dumps
        with self.db.connection() as conn:
            root = self.roots.pin(conn, context_id)
            row = QUERIES.insert_messages.run(
                conn,
                tenant=tenant,
                context_id=context_id,
                root_id=root,
                count=len(messages),
                batch_tokens=sum(token_counts),
                if_match=if_match,
                roles=[m["role"] for m in messages],
                contents=[m["content"] for m in messages],
                token_counts=token_counts,
                embeddings=[None if m.get("embedding") is None else dumps(m["embedding"]).decode() for m in messages],
                metadata=[dumps(m.get("metadata") or {}).decode() for m in messages],
            )
        status = row["status"]
        if status == "missing":
            raise missing(context_id)
        if status == "stale":
            head = row["head_version"]
            raise PreconditionFailed(f"The head is version {head}; If-Match did not match it. Nothing was written.", head)
        return Appended(row["head_version"], row["total_tokens"], row["data"])

    def get(self, tenant: str, context_id: UUID, version: int, *, include_embedding: bool = False) -> Message:
        """One message of the context's view by version."""
        row = self.db.read(lambda conn: QUERIES.get_message.run(
            conn, tenant=tenant, context_id=context_id, root_id=self.roots.pin(conn, context_id), version=version,
            include_embedding=include_embedding,
        ))
        if row["status"] == "missing":
            raise missing(context_id)
        if row["status"] == "no_version":
            raise NotFound(f"Context {context_id} has no version {version} (its head is {row['head_version']}).")
        return Message(version, row["doc"])

    def list(self, tenant: str, context_id: UUID, *, limit: int, descending: bool = False,
             after: int | None = None, before: int | None = None, as_of_version: int | None = None,
             as_of: datetime | None = None, include_embedding: bool = False) -> MessagePage:
        """A keyset page of the view (as of a version or time): at most limit
        messages after `after` and before `before`, in version order or reversed."""
        statement = QUERIES.list_messages_desc if descending else QUERIES.list_messages_asc
        row = self.db.read(lambda conn: statement.run(
            conn,
            tenant=tenant,
            context_id=context_id,
            root_id=self.roots.pin(conn, context_id),
            limit=limit,
            after=after or 0,
            before=MAX_VERSION if before is None else before,
            as_of_version=as_of_version,
            as_of=as_of,
            include_embedding=include_embedding,
        ))
        check_view(row, context_id)
        return MessagePage(row["view_version"], row["data"], row["has_more"], row["last_version"])

    def window(self, tenant: str, context_id: UUID, *, max_tokens: int, pin_system: bool = False,
               as_of_version: int | None = None, as_of: datetime | None = None) -> Window:
        """The most recent messages of the view that fit max_tokens (see cs_window_v1)."""
        row = self.db.read(lambda conn: QUERIES.get_window.run(
            conn,
            tenant=tenant,
            context_id=context_id,
            root_id=self.roots.pin(conn, context_id),
            max_tokens=max_tokens,
            pin_system=pin_system,
            as_of_version=as_of_version,
            as_of=as_of,
        ))
        check_view(row, context_id)
        return Window(
            row["view_version"], row["data"], row["token_count"], row["from_version"], row["to_version"],
            row["truncated"],
        )
