"""The lineage root of a context: the shard key every statement pins.

A request names a context; its statements need the root of the conversation too
(docs/SHARDING.md). A context's root never changes once it exists, so each worker
keeps the roots it has seen in a bounded LRU: a hit costs no round trip, a miss one
primary-key lookup on the request's own connection."""

from __future__ import annotations

import threading
from collections import OrderedDict
from uuid import UUID

import psycopg

from ..errors import NotFound
from ..sql import QUERIES


def missing(context_id: UUID) -> NotFound:
    return NotFound(f"Context {context_id} does not exist.")

# An entry holds about 300 bytes (two UUID objects, 100 each, and the ordered
# dict's slot, measured 84): 4096 of them stay near 1.2 MB per worker, and cover
# the conversations a worker is busy with.
ROOT_CACHE_SIZE = 4096


class Roots:
    """Context id -> root id, cached per worker, at most `size` entries (least
    recently used evicted). Only roots that exist are cached: an unknown id asks
    the database every time, and never takes a slot."""

    def __init__(self, size: int = ROOT_CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError("the root cache needs room for at least one entry")
        self.size = size
        self._cache: OrderedDict[UUID, UUID] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cache)

    def cached(self, context_id: UUID) -> UUID | None:
        """The cached root of a context, or None when it is not cached."""
        with self._lock:
            root = self._cache.get(context_id)
            if root is not None:
                self._cache.move_to_end(context_id)
            return root

    def remember(self, context_id: UUID, root_id: UUID) -> None:
        """Caches a context's root (a context just created, or one looked up)."""
        with self._lock:
            self._cache[context_id] = root_id
            self._cache.move_to_end(context_id)
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)

    def of(self, conn: psycopg.Connection, context_id: UUID) -> UUID | None:
        """The root of a context, or None when no context has that id (whatever
        its tenant or whether it is deleted: the caller's statement decides what
        the request may see). From the cache, else from context_roots in one
        round trip on the caller's connection."""
        root = self.cached(context_id)
        if root is not None:
            return root
        row = QUERIES.get_root.run(conn, id=context_id)
        if row is None:
            return None
        self.remember(context_id, row["root_id"])
        return row["root_id"]

    def pin(self, conn: psycopg.Connection, context_id: UUID) -> UUID:
        """The root of a context for a statement to pin; NotFound when no context
        has that id."""
        root = self.of(conn, context_id)
        if root is None:
            raise missing(context_id)
        return root
