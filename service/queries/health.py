"""What /health reports: sql/queries/session.sql and embeddings.sql."""

from __future__ import annotations

import threading
import time

from ..db import Database
from ..embeddings import Embedder
from ..sql import QUERIES
from ..tokens import Tokenizer

# The backlog is counted up to this many messages, and at most every few seconds
# per process: /health stays one cheap round trip however often it is probed.
BACKLOG_CAP = 100_000
BACKLOG_FRESH_SECONDS = 5.0


class Health:
    def __init__(self, db: Database, tokenizer: Tokenizer, embedder: Embedder | None = None) -> None:
        self.db = db
        self.tokenizer = tokenizer.name
        self.embedder = embedder
        self._backlog: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def database_latency_ms(self, timeout: float) -> float:
        """One round trip to the database, in milliseconds; Unavailable when no
        connection comes within timeout seconds."""
        started = time.perf_counter()
        with self.db.connection(timeout=timeout) as conn:
            QUERIES.ping.run(conn)
        return round((time.perf_counter() - started) * 1000, 3)

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
