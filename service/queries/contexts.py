"""Contexts and forks: sql/queries/contexts.sql."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import orjson
from psycopg import Connection

from ..ids import uuid7
from ..sql import QUERIES

# Keyset start for newest-first listing: before every real (created_at, id).
FIRST_PAGE = (datetime.max.replace(tzinfo=timezone.utc), UUID(int=(1 << 128) - 1))


def create_context(conn: Connection, *, tenant: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return QUERIES.insert_context.run(conn, id=uuid7(), tenant=tenant, metadata=orjson.dumps(metadata).decode())


def get_context(
    conn: Connection,
    *,
    tenant: str,
    context_id: UUID,
    as_of_version: int | None = None,
    as_of: datetime | None = None,
) -> dict[str, Any] | None:
    """The context with view_version / view_tokens as of a version or time, or None."""
    return QUERIES.get_context.run(
        conn, id=context_id, tenant=tenant, as_of_version=as_of_version, as_of=as_of
    )


def get_head(conn: Connection, *, tenant: str, context_id: UUID) -> int | None:
    """The head version of a live context, or None."""
    row = QUERIES.get_head.run(conn, id=context_id, tenant=tenant)
    return None if row is None else row["head_version"]


def list_contexts(
    conn: Connection,
    *,
    tenant: str,
    limit: int,
    after: tuple[datetime, UUID] | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Up to limit contexts, newest first, after a keyset position."""
    after_created_at, after_id = after or FIRST_PAGE
    params = {"tenant": tenant, "limit": limit, "after_created_at": after_created_at, "after_id": after_id}
    if metadata is None:
        return QUERIES.list_contexts.run(conn, **params)
    return QUERIES.list_contexts_by_metadata.run(conn, metadata=orjson.dumps(metadata).decode(), **params)


def patch_metadata(
    conn: Connection, *, tenant: str, context_id: UUID, patch: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Merge-patch the metadata (uncommitted: the caller's transaction decides);
    the context with metadata_text, or None when it is missing."""
    return QUERIES.patch_context_metadata.run(conn, id=context_id, tenant=tenant, patch=orjson.dumps(patch).decode())


def delete_context(conn: Connection, *, tenant: str, context_id: UUID) -> bool:
    return QUERIES.delete_context.run(conn, id=context_id, tenant=tenant) == 1


def fork_context(
    conn: Connection,
    *,
    tenant: str,
    parent_id: UUID,
    at_version: int | None,
    metadata: dict[str, Any] | None,
    max_segments: int,
) -> dict[str, Any] | None:
    """The new fork, or None when the parent is missing, at_version is past its
    head, or the lineage would exceed max_segments ancestor segments."""
    return QUERIES.insert_fork.run(
        conn,
        id=uuid7(),
        tenant=tenant,
        parent_id=parent_id,
        at_version=at_version,
        metadata=None if metadata is None else orjson.dumps(metadata).decode(),
        max_segments=max_segments,
    )
