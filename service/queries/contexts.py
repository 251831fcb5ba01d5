"""Contexts and forks: sql/queries/contexts.sql."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import orjson

from ..db import Database
from ..errors import Invalid
from ..ids import uuid7
from ..sql import QUERIES
from .roots import Roots, missing

Row = dict[str, Any]

# Keyset start for newest-first listing: before every real (created_at, id).
FIRST_PAGE = (datetime.max.replace(tzinfo=timezone.utc), UUID(int=(1 << 128) - 1))


def check_view(row: Row, context_id: UUID) -> Row:
    """A read's row when its status is 'ok'; NotFound or Invalid (as_of_version
    past the head) as the statement reported."""
    status = row["status"]
    if status == "missing":
        raise missing(context_id)
    if status == "past_head":
        raise Invalid.parameter("as_of_version", f"The version is past the head ({row['view_version']}).")
    return row


@dataclass(frozen=True)
class ContextPage:
    rows: list[Row]
    next_position: tuple[datetime, UUID] | None  # keyset position of the next page


class Contexts:
    """Create, read, list, patch, delete and fork contexts of one tenant."""

    def __init__(self, db: Database, roots: Roots, *, max_metadata_bytes: int, max_lineage_depth: int) -> None:
        self.db = db
        self.roots = roots
        self.max_metadata_bytes = max_metadata_bytes
        self.max_lineage_depth = max_lineage_depth

    def create(self, tenant: str, metadata: dict[str, Any]) -> Row:
        context_id = uuid7()
        with self.db.connection() as conn:
            row = QUERIES.insert_context.run(conn, id=context_id, tenant=tenant,
                                             metadata=orjson.dumps(metadata).decode())
        # Cached even if an enclosing transaction later rolls back: the id is never
        # reused, and its root then only leads statements to find nothing.
        self.roots.remember(context_id, context_id)
        return row

    def get(self, tenant: str, context_id: UUID, *, as_of_version: int | None = None,
            as_of: datetime | None = None) -> Row:
        """The context as of a version or a time: head_version and total_tokens are
        those of the viewed version."""
        row = self.db.read(lambda conn: QUERIES.get_context.run(
            conn, id=context_id, root_id=self.roots.pin(conn, context_id), tenant=tenant,
            as_of_version=as_of_version, as_of=as_of,
        ))
        return check_view(row, context_id)

    def list(self, tenant: str, *, limit: int, after: tuple[datetime, UUID] | None = None,
             metadata: dict[str, Any] | None = None) -> ContextPage:
        """Up to limit live contexts, newest first, after a keyset position,
        optionally only those whose metadata contains `metadata`."""
        after_created_at, after_id = after or FIRST_PAGE
        params = {"tenant": tenant, "limit": limit + 1, "after_created_at": after_created_at, "after_id": after_id}
        if metadata is None:
            rows = self.db.read(lambda conn: QUERIES.list_contexts.run(conn, **params))
        else:
            filter_ = orjson.dumps(metadata).decode()
            rows = self.db.read(lambda conn: QUERIES.list_contexts_by_metadata.run(conn, metadata=filter_, **params))
        if len(rows) <= limit:
            return ContextPage(rows, None)
        rows = rows[:limit]
        return ContextPage(rows, (rows[-1]["created_at"], rows[-1]["id"]))

    def patch(self, tenant: str, context_id: UUID, patch: dict[str, Any] | None) -> Row:
        """Merge-patch (RFC 7396) the metadata; None empties it. Invalid, and
        nothing changed, when the result would exceed the metadata limit."""
        limit = self.max_metadata_bytes
        with self.db.connection() as conn, conn.transaction():
            row = QUERIES.patch_context_metadata.run(
                conn, id=context_id, root_id=self.roots.pin(conn, context_id), tenant=tenant,
                patch=orjson.dumps(patch).decode(),
            )
            if row is None:
                raise missing(context_id)
            # Sized as at creation (compact JSON); raising rolls the patch back.
            if len(orjson.dumps(orjson.loads(row["metadata_text"]))) > limit:
                raise Invalid.pointer("/metadata", f"The patched metadata would exceed {limit} bytes.")
        return row

    def delete(self, tenant: str, context_id: UUID) -> None:
        with self.db.connection() as conn:
            deleted = QUERIES.delete_context.run(conn, id=context_id, root_id=self.roots.pin(conn, context_id),
                                                 tenant=tenant)
        if deleted != 1:
            raise missing(context_id)

    def fork(self, tenant: str, context_id: UUID, *, at_version: int | None,
             metadata: dict[str, Any] | None) -> Row:
        """A new context reading the parent's view up to at_version (its head when
        None), with metadata (a copy of the parent's when None)."""
        fork_id = uuid7()
        with self.db.connection() as conn:
            root = self.roots.pin(conn, context_id)
            row = QUERIES.insert_fork.run(
                conn,
                id=fork_id,
                root_id=root,
                tenant=tenant,
                parent_id=context_id,
                at_version=at_version,
                metadata=None if metadata is None else orjson.dumps(metadata).decode(),
                max_segments=self.max_lineage_depth,
            )
        status = row["status"]
        if status == "missing":
            raise missing(context_id)
        if status == "past_head":
            raise Invalid.pointer("/at_version", f"Version {at_version} is past the head ({row['head_version']}).")
        if status == "too_deep":
            raise Invalid.pointer(
                "",
                f"The fork would read through more than {self.max_lineage_depth} ancestor segments "
                "(MAX_LINEAGE_DEPTH); fork an earlier version or a shallower context.",
            )
        self.roots.remember(fork_id, root)
        return row
