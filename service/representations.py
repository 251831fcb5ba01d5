"""Context documents and list cursors, built from store rows by hand (no
marshmallow on the way out: it costs more than the database round trip).
Message documents are built by PostgreSQL (cs_message_doc_v1).
schemas/responses.py describes the documents for the OpenAPI document."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any
from uuid import UUID

import orjson

from .errors import Invalid

UTC = timezone.utc


@lru_cache(maxsize=4096)
def timestamp(value: datetime) -> str:
    """RFC 3339 UTC with microseconds: 2026-01-01T00:00:00.000000Z (cs_time_v1 in SQL).

    Cached: a page of contexts made in one burst repeats its timestamps."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def context_doc(row: dict[str, Any]) -> dict[str, Any]:
    parent = row["parent_id"]
    return {
        "id": str(row["id"]),
        "metadata": row["metadata"],
        "parent_id": None if parent is None else str(parent),
        "fork_version": row["fork_version"],
        "head_version": row["head_version"],
        "total_tokens": row["total_tokens"],
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
    }


def encode_cursor(created_at: datetime, context_id: UUID) -> str:
    raw = orjson.dumps([created_at.astimezone(UTC).isoformat(), str(context_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The keyset position of a next_cursor; Invalid when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, context_id = orjson.loads(raw)
        position = datetime.fromisoformat(created_at), UUID(context_id)
    except (ValueError, TypeError, AttributeError) as exc:
        raise Invalid.parameter("after", "Not a cursor returned by this API.") from exc
    if position[0].tzinfo is None:
        raise Invalid.parameter("after", "Not a cursor returned by this API.")
    return position
