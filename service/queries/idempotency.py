"""Idempotency keys: sql/queries/idempotency.sql.

A POST with an Idempotency-Key runs in one transaction that first claims the key
(a transaction-level advisory lock, so it also holds behind PgBouncer in
transaction mode), then does its write, then records its response; all of it
commits together or not at all. A retry finds the recorded response.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

from ..db import Database
from ..errors import DomainError, IdempotencyKeyInUse, IdempotencyKeyReused
from ..sql import QUERIES

log = logging.getLogger("context_store")

# Expired keys are removed by the requests themselves, in short batches, at most
# once per interval per worker (sooner while a batch comes back full).
CLEANUP_BATCH = 500
CLEANUP_INTERVAL_SECONDS = 30.0


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class Scope:
    """One claimed key inside its transaction: `stored` is the first response
    (None for a first request, which then calls `record`)."""

    def __init__(self, conn, params: dict[str, Any], fingerprint: bytes, stored: StoredResponse | None,
                 ttl_seconds: float) -> None:
        self._conn = conn
        self._params = params
        self._fingerprint = fingerprint
        self.stored = stored
        self._ttl = ttl_seconds

    def record(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """Keep a successful response; it commits with the write it describes."""
        QUERIES.record_idempotency_key.run(
            self._conn,
            **self._params,
            request_hash=self._fingerprint,
            status=status,
            headers=orjson.dumps(headers).decode(),
            body=body,
            ttl_seconds=self._ttl,
        )


class Idempotency:
    def __init__(self, db: Database, *, ttl_seconds: float) -> None:
        self.db = db
        self.ttl_seconds = ttl_seconds
        self._next_cleanup = 0.0
        self._cleanup_lock = threading.Lock()

    @contextmanager
    def scope(self, tenant: str, key: str, method: str, path: str, fingerprint: bytes) -> Iterator[Scope]:
        """Claim `key` for this request in a transaction that store methods called
        inside join (Database.transaction). IdempotencyKeyInUse while another
        request holds it; IdempotencyKeyReused when it answered a different request."""
        params = {"tenant": tenant, "key": key, "method": method, "path": path}
        with self.db.transaction() as conn:
            row = QUERIES.claim_idempotency_key.run(conn, **params)
            if row["status"] == "in_use":
                raise IdempotencyKeyInUse("A request with this Idempotency-Key is still running; retry shortly.")
            stored = None
            if row["status"] == "stored":
                if row["request_hash"] != fingerprint:
                    raise IdempotencyKeyReused(
                        "This Idempotency-Key was used for a different request (another body or precondition)."
                    )
                stored = StoredResponse(row["response_status"], orjson.loads(row["headers"]), bytes(row["body"]))
            yield Scope(conn, params, fingerprint, stored, self.ttl_seconds)
        self._clean_up()

    def _clean_up(self) -> None:
        now = time.monotonic()
        if now < self._next_cleanup or not self._cleanup_lock.acquire(blocking=False):
            return
        # Housekeeping after the request's own work committed: its failure must not
        # become the request's answer, and it waits for the next interval either way.
        self._next_cleanup = now + CLEANUP_INTERVAL_SECONDS
        try:
            with self.db.connection() as conn:
                removed = QUERIES.delete_expired_idempotency_keys.run(conn, batch=CLEANUP_BATCH)
        except (DomainError, psycopg.Error) as exc:
            log.warning("removing expired idempotency keys failed (%s); trying again later", type(exc).__name__)
            return
        finally:
            self._cleanup_lock.release()
        if removed >= CLEANUP_BATCH:  # more are waiting: the next keyed request goes on
            self._next_cleanup = now
        if removed:
            log.debug("removed %d expired idempotency keys", removed)
