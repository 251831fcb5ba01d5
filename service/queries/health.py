"""What /health reports: sql/queries/session.sql."""

from __future__ import annotations

import time

from ..db import Database
from ..sql import QUERIES
from ..tokens import Tokenizer


class Health:
    def __init__(self, db: Database, tokenizer: Tokenizer) -> None:
        self.db = db
        self.tokenizer = tokenizer.name

    def database_latency_ms(self, timeout: float) -> float:
        """One round trip to the database, in milliseconds; Unavailable when no
        connection comes within timeout seconds."""
        started = time.perf_counter()
        with self.db.connection(timeout=timeout) as conn:
            QUERIES.ping.run(conn)
        return round((time.perf_counter() - started) * 1000, 3)
