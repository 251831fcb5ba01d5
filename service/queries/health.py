"""What /health reports: a round trip to the database and where its schema stands."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..db import Database
from ..migrate import discover, schema_state
from ..tokens import Tokenizer


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
    def __init__(self, db: Database, tokenizer: Tokenizer) -> None:
        self.db = db
        self.tokenizer = tokenizer.name
        self.migrations = discover()

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
