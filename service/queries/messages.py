"""Messages and token windows: sql/queries/messages.sql."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from psycopg import Connection

from ..sql import QUERIES


def append_messages(
    conn: Connection,
    *,
    tenant: str,
    context_id: UUID,
    messages: list[dict[str, Any]],
    if_match: list[int] | None,
) -> dict[str, Any] | None:
    """Append a batch (each message with its token_count) in one statement.

    Returns head_version, total_tokens and created_at, or None when nothing was
    written (missing context, or its head not in if_match).
    """
    dumps = orjson.dumps
    embeddings = [m.get("embedding") for m in messages]
    return QUERIES.insert_messages.run(
        conn,
        tenant=tenant,
        context_id=context_id,
        count=len(messages),
        batch_tokens=sum(m["token_count"] for m in messages),
        if_match=if_match,
        roles=[m["role"] for m in messages],
        contents=[m["content"] for m in messages],
        token_counts=[m["token_count"] for m in messages],
        embeddings=[None if e is None else dumps(e).decode() for e in embeddings],
        metadata=[dumps(m.get("metadata") or {}).decode() for m in messages],
    )


def get_message(
    conn: Connection, *, tenant: str, context_id: UUID, version: int, include_embedding: bool
) -> list[dict[str, Any]]:
    """[] when the context is missing; one row, with version None when the message is."""
    return QUERIES.get_message.run(
        conn, tenant=tenant, context_id=context_id, version=version, include_embedding=include_embedding
    )


def list_messages(
    conn: Connection,
    *,
    tenant: str,
    context_id: UUID,
    limit: int,
    descending: bool,
    after: int | None,
    before: int | None,
    as_of_version: int | None,
    as_of: datetime | None,
    include_embedding: bool,
) -> list[dict[str, Any]]:
    """A keyset page of up to limit rows (see list_messages_asc in messages.sql)."""
    statement = QUERIES.list_messages_desc if descending else QUERIES.list_messages_asc
    return statement.run(
        conn,
        tenant=tenant,
        context_id=context_id,
        limit=limit,
        after=after or 0,
        before=before if before is not None else 2**62,
        as_of_version=as_of_version,
        as_of=as_of,
        include_embedding=include_embedding,
    )


def get_window(
    conn: Connection,
    *,
    tenant: str,
    context_id: UUID,
    max_tokens: int,
    pin_system: bool,
    as_of_version: int | None,
    as_of: datetime | None,
) -> list[dict[str, Any]]:
    """The window's messages in version order (rows as in list_messages)."""
    return QUERIES.get_window.run(
        conn,
        tenant=tenant,
        context_id=context_id,
        max_tokens=max_tokens,
        pin_system=pin_system,
        as_of_version=as_of_version,
        as_of=as_of,
    )
