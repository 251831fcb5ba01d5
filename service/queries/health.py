"""What /health reports: a round trip to the database, where its schema stands, and
the embeddings queue (sql/queries/embeddings.sql)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ..db import Database
from ..embeddings import Embedder
from ..migrate import discover, schema_state
from ..sql import QUERIES
from ..tokens import Tokenizer

# The backlog is counted up to this many messages, and at most every few seconds
# per process: /health stays one cheap round trip however often it is probed.
BACKLOG_CAP = 100_000
BACKLOG_FRESH_SECONDS = 5.0


@dataclass(frozen=True)
class DatabaseHealth:
    latency_ms: float
    schema_version: int  # the last migration applied
    schema_expected: int  # the last migration this code knows
    pending: tuple[str, ...]  # migrations this code knows that the database has not applied

    @property
    def migrated(self) -> bool:
        return not self.pending


class Health:
    def __init__(self, db: Database, tokenizer: Tokenizer, embedder: Embedder | None = None) -> None:
        self.db = db
        self.tokenizer = tokenizer.name
        self.migrations = discover()
        self.embedder = embedder
        self._backlog: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def pool_stats(self) -> dict[str, int]:
        """This worker's pool, as psycopg_pool counts it (no round trip)."""
        return self.db.pool.get_stats()

    def database(self, timeout: float) -> DatabaseHealth:
        """The database's round-trip latency and schema version; Unavailable when
        no connection comes within timeout seconds."""
        started = time.perf_counter()
        with self.db.connection(timeout=timeout) as conn:
            state = schema_state(conn, migrations=self.migrations)
        latency = round((time.perf_counter() - started) * 1000, 3)
        return DatabaseHealth(latency, state.applied, state.latest, state.pending)

    def embeddings(self, timeout: float) -> dict[str, object]:
        """The embeddings endpoint's status (ok, unavailable, unknown; disabled
        without one) from its last call, and the messages waiting for an
        embedding (up to BACKLOG_CAP), counted at most every few seconds."""
        status = "disabled" if self.embedder is None else self.embedder.status()
        return {"status": status, "backlog": self._count_backlog(timeout)}

    def _count_backlog(self, timeout: float) -> int:
        cached = self._backlog
        if cached is not None and time.monotonic() - cached[0] < BACKLOG_FRESH_SECONDS:
            return cached[1]
        with self._lock:
            cached = self._backlog
            if cached is not None and time.monotonic() - cached[0] < BACKLOG_FRESH_SECONDS:
                return cached[1]
            with self.db.connection(timeout=timeout) as conn:
                count = QUERIES.count_embedding_backlog.run(conn, cap=BACKLOG_CAP)
            self._backlog = (time.monotonic(), count)
            return count
