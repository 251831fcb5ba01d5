"""`context-store worker`: embeds messages appended without an embedding.

Each batch is one transaction: claim the oldest waiting messages (FOR UPDATE SKIP
LOCKED, so several workers share the queue and never take the same message),
call the embeddings endpoint, write the vectors, commit. A worker killed at any
point leaves its batch waiting: the claim dies with its connection. Appends never
wait for any of this.

Calls are spaced to at most EMBEDDINGS_MAX_RPS. 429 and 5xx answers, time-outs
and lost connections release the batch and back off (Retry-After when the
endpoint gives one, else exponential with jitter, at most MAX_BACKOFF seconds).
A batch the endpoint refuses (400, 413, 422) is split until the refused messages
are alone; those are marked failed and leave the queue.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import psycopg
from psycopg import sql as pgsql

from .config import Settings
from .embeddings import Embedder, EmbeddingsMisconfigured, EmbeddingsRejected, EmbeddingsUnavailable
from .sql import QUERIES

log = logging.getLogger("context_store")

MAX_BACKOFF = 60.0
# A batch call may take longer than a search's query embedding.
BATCH_TIMEOUT = 60.0
IDLE_POLL = 1.0
# pg_advisory_lock key of ensure_indexes; the migration runner's is another.
INDEX_LOCK_KEY = 0x656D62656464  # "embedd"
_TSV = "to_tsvector({config}::regconfig, left(content, 200000))"


@dataclass
class Stats:
    embedded: int = 0
    failed: int = 0
    calls: int = 0


class Worker:
    """Embeds the queue over one database connection; `run` until stopped."""

    def __init__(self, settings: Settings, conninfo: str, embedder: Embedder,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.settings = settings
        self.conninfo = conninfo
        self.embedder = embedder
        self.batch_size = settings.embeddings_batch_size
        self.interval = 1.0 / settings.embeddings_max_rps
        self.stopping = threading.Event()
        self.sleep = sleep or self.stopping.wait
        self.stats = Stats()
        self._next_call = 0.0
        self._failures = 0

    def stop(self, *_args) -> None:
        self.stopping.set()

    def run(self, *, once: bool = False) -> Stats:
        """Embed until stopped (SIGTERM / SIGINT finish the batch in hand), or with
        once=True until the queue is empty."""
        conn = None
        while not self.stopping.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.conninfo, autocommit=True,
                                           prepare_threshold=self.settings.prepare_threshold,
                                           connect_timeout=self.settings.connect_timeout,
                                           application_name="context-store-worker")
                done = self.batch(conn)
            except psycopg.OperationalError as exc:
                log.warning("worker: database unavailable (%s); retrying", type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                self._back_off(None)
                continue
            if done == 0:
                if once:
                    break
                self.sleep(IDLE_POLL)
        if conn is not None:
            conn.close()
        return self.stats

    def batch(self, conn: psycopg.Connection) -> int | None:
        """Claim, embed and write one batch: the number of messages it took off the
        queue (0 when it was empty), None when the endpoint failed and the batch
        went back to the queue."""
        try:
            return self._batch(conn)
        except _Release:
            return None

    def _batch(self, conn: psycopg.Connection) -> int:
        # _Release raised inside the transaction block rolls the claim back.
        with conn.transaction():
            rows = QUERIES.claim_pending_embeddings.run(conn, limit=self.batch_size)
            if not rows:
                return 0
            try:
                vectors, refused = self._embed(rows)
            except EmbeddingsUnavailable as exc:
                log.warning("worker: %s; %d messages stay queued", exc, len(rows))
                self._back_off(exc.retry_after)
                raise _Release() from None
            except EmbeddingsMisconfigured as exc:
                log.error("worker: %s; nothing is embedded until that is fixed", exc)
                self._back_off(MAX_BACKOFF)
                raise _Release() from None
            if vectors:
                QUERIES.set_embeddings.run(
                    conn,
                    context_ids=[r["context_id"] for r, _ in vectors],
                    versions=[r["version"] for r, _ in vectors],
                    embeddings=[orjson.dumps(v).decode() for _, v in vectors],
                )
            if refused:
                QUERIES.mark_embeddings_failed.run(
                    conn, context_ids=[r["context_id"] for r in refused], versions=[r["version"] for r in refused]
                )
                log.warning("worker: the endpoint refused %d messages; they are marked failed", len(refused))
        self._failures = 0
        self.stats.embedded += len(vectors)
        self.stats.failed += len(refused)
        return len(rows)

    def _embed(self, rows: list[dict]) -> tuple[list[tuple[dict, list[float]]], list[dict]]:
        """(row, vector) for what the endpoint embedded, and the rows it refused."""
        blank = [r for r in rows if not r["content"].strip()]
        todo = [r for r in rows if r["content"].strip()]
        done: list[tuple[dict, list[float]]] = []
        refused = list(blank)  # nothing to embed: an endpoint refuses empty input
        pending = [todo] if todo else []
        while pending:
            part = pending.pop()
            self._pace()
            try:
                vectors = self.embedder.embed([r["content"] for r in part], timeout=BATCH_TIMEOUT)
            except EmbeddingsRejected:
                if len(part) == 1:
                    refused.extend(part)
                else:
                    half = len(part) // 2
                    pending.extend([part[:half], part[half:]])
                continue
            done.extend(zip(part, vectors))
        return done, refused

    def _pace(self) -> None:
        now = time.monotonic()
        if now < self._next_call:
            self.sleep(self._next_call - now)
        self._next_call = max(now, self._next_call) + self.interval
        self.stats.calls += 1

    def _back_off(self, retry_after: float | None) -> None:
        self._failures += 1
        if retry_after is None:
            retry_after = min(MAX_BACKOFF, 0.5 * 2 ** min(self._failures, 8)) * random.uniform(0.5, 1.0)
        self.sleep(min(MAX_BACKOFF, retry_after))


class _Release(Exception):
    """Rolls the claim back: the batch goes back to the queue untouched."""


def ensure_indexes(settings: Settings, conninfo: str, *, rewrite_words: bool) -> list[str]:
    """Create the HNSW index for EMBEDDING_DIM when missing (CONCURRENTLY: appends
    go on), and with rewrite_words re-express content_tsv with TEXT_SEARCH_CONFIG
    (rewrites the table under an exclusive lock: a maintenance window). Returns
    one line per thing done or found wrong, for the log."""
    said: list[str] = []
    dim = settings.embedding_dim
    name = f"messages_embedding_{dim}_idx"
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        # Workers starting together build an index once: the others wait here,
        # then find it. Session-level, hence the direct connection.
        QUERIES.lock_index_builds.run(conn, key=INDEX_LOCK_KEY)
        indexes = {row["dim"]: row for row in QUERIES.list_embedding_indexes.run(conn)}
        if dim in indexes and not indexes[dim]["valid"]:
            conn.execute(pgsql.SQL("DROP INDEX CONCURRENTLY {}").format(pgsql.Identifier(name)))
            said.append(f"dropped the invalid index {name} (an interrupted build)")
        if dim not in indexes or not indexes[dim]["valid"]:
            conn.execute(pgsql.SQL(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON messages "
                "USING hnsw ((embedding::vector({dim})) vector_cosine_ops) WHERE vector_dims(embedding) = {dim}"
            ).format(name=pgsql.Identifier(name), dim=pgsql.Literal(dim)))
            said.append(f"created {name}")
        for other, row in indexes.items():
            if other != dim and row["rows"] > 0:
                said.append(
                    f"EMBEDDING_DIM={dim} but about {int(row['rows'])} messages hold {other}-dimension embeddings: "
                    "they are found by words only until re-embedded (set their embedding to NULL and the worker "
                    "refills it)"
                )
        expression = QUERIES.get_text_search_config.run(conn) or ""
        wanted = f"to_tsvector('{settings.text_search_config}'::regconfig"
        if wanted not in expression:
            if rewrite_words:
                conn.execute(pgsql.SQL("ALTER TABLE messages ALTER COLUMN content_tsv SET EXPRESSION AS ({})").format(
                    pgsql.SQL(_TSV).format(config=pgsql.Literal(settings.text_search_config))))
                said.append(f"content_tsv re-indexed with TEXT_SEARCH_CONFIG={settings.text_search_config}")
            else:
                said.append(
                    f"TEXT_SEARCH_CONFIG={settings.text_search_config} differs from the indexed words' "
                    "configuration: `context-store worker --ensure-indexes` re-indexes them (rewrites messages)"
                )
    return said


def main(settings: Settings, conninfo: str, *, once: bool, only_indexes: bool) -> int:
    """The worker command: fix indexes, then embed until stopped."""
    for line in ensure_indexes(settings, conninfo, rewrite_words=only_indexes):
        log.warning("worker: %s", line)
    if only_indexes:
        return 0
    embedder = Embedder.from_settings(settings)
    if embedder is None:
        log.error("worker: EMBEDDINGS_URL is not set: there is nothing to embed with")
        return 2
    worker = Worker(settings, conninfo, embedder)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    log.info("worker: embedding with %s at most %g calls/s, %d messages a call",
             settings.embeddings_model, settings.embeddings_max_rps, settings.embeddings_batch_size)
    stats = worker.run(once=once)
    log.info("worker: stopped after %d embedded, %d refused, %d calls", stats.embedded, stats.failed, stats.calls)
    return 0
