"""The raw mode: the service's own store (service/queries) on a connection of its own,
without HTTP: the same statements, built by the same code, that a request runs.

Every raw cell goes through one function per operation below (`create`, `append`,
`keyed_append`, `last`, `window`, `get`, `fork`), each one call of a store method
(`keyed_append`: the idempotency scope around one). `captured` runs
one of them and records the statements it executed with their parameters, so the
EXPLAIN section explains exactly what the raw cells (and the service) run.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable
from uuid import UUID

import orjson

from bench.driver import message_batch, unique_keys
from service import sql
from service.config import Settings
from service.db import Database
from service.queries import Store
from service.tokens import ESTIMATE, Tokenizer, estimate_tokens

TENANT = "default"  # the single tenant of a server without API keys


class RawStore:
    """A store over a pool of one connection, set up as the service's pooled ones
    (pgvector, raw JSON, statement timeout, prepared statements from the 6th run).
    Raw cells never run the tokenizer: batches carry token counts, and the
    1-message appends use the service's fallback estimate."""

    def __init__(self, url: str) -> None:
        settings = Settings(database_url=url, pool_min_size=1, pool_max_size=1)
        self.db = Database(settings, url)
        self.db.pool.open(wait=True)
        self.store = Store.build(settings, self.db, Tokenizer(ESTIMATE, estimate_tokens))

    def close(self) -> None:
        self.db.close()


def connect(url: str) -> RawStore:
    return RawStore(url)


@contextmanager
def captured() -> Iterator[list[tuple[sql.Statement, dict[str, Any]]]]:
    """Record every named statement run inside the block, with its parameters."""
    seen: list[tuple[sql.Statement, dict[str, Any]]] = []
    original = sql.Statement.run

    def recording(self, conn, **params):
        seen.append((self, params))
        return original(self, conn, **params)

    sql.Statement.run = recording
    try:
        yield seen
    finally:
        sql.Statement.run = original


# ---------------------------------------------------------------- one function per operation


def create(raw: RawStore) -> Any:
    """Create one context; the new row."""
    return raw.store.contexts.create(TENANT, {"bench": "create"})


def append(raw: RawStore, context_id: UUID, batch: list[dict[str, Any]]) -> Any:
    """Append a batch of messages to a context."""
    return raw.store.messages.append(TENANT, context_id, batch)


def keyed_append(raw: RawStore, context_id: UUID, batch: list[dict[str, Any]], key: str) -> Any:
    """Append a batch under a fresh Idempotency-Key, as the service's keyed POST does
    (service/http.py `idempotent`): one transaction claims the key, appends, records
    the response it would send, and commits."""
    body = {"messages": batch}
    fingerprint = hashlib.sha256(orjson.dumps([body, None], option=orjson.OPT_SORT_KEYS)).digest()
    path = f"/v1/contexts/{context_id}/messages"
    with raw.store.idempotency.scope(TENANT, key, "POST", path, fingerprint) as scope:
        appended = raw.store.messages.append(TENANT, context_id, batch)
        response = {"data": appended.data, "head_version": appended.head_version,
                    "total_tokens": appended.total_tokens}
        scope.record(201, {"ETag": f'"{appended.head_version}"'}, orjson.dumps(response))
    return appended


def last(raw: RawStore, context_id: UUID, limit: int) -> Any:
    """The newest `limit` messages of a context."""
    return raw.store.messages.list(TENANT, context_id, limit=limit, descending=True)


def window(raw: RawStore, context_id: UUID, max_tokens: int) -> Any:
    """The newest messages of a context within max_tokens."""
    return raw.store.messages.window(TENANT, context_id, max_tokens=max_tokens)


def get(raw: RawStore, context_id: UUID, version: int) -> Any:
    """One message of a context by version."""
    return raw.store.messages.get(TENANT, context_id, version)


def fork(raw: RawStore, parent_id: UUID) -> Any:
    """Fork a context at its head; the new row."""
    return raw.store.contexts.fork(TENANT, parent_id, at_version=None, metadata=None)


# ---------------------------------------------------------------- cells


def operation(spec: dict[str, Any], conn: RawStore, rng: random.Random) -> Callable[[], None]:
    """A zero-argument callable doing one operation of the cell; raises on failure."""
    op = spec["op"]
    args = spec["args"]
    if op == "append":
        context_id = UUID(args["context_id"])
        batch = message_batch(args["batch_size"], args["seed"], True)
        if args.get("idempotency_keys"):
            keys = unique_keys()

            def do_keyed_append() -> None:
                keyed_append(conn, context_id, batch, next(keys))

            return do_keyed_append

        def do_append() -> None:
            append(conn, context_id, batch)

        return do_append
    if op == "list":
        context_id, limit = UUID(args["context_id"]), args["limit"]

        def do_list() -> None:
            last(conn, context_id, limit)

        return do_list
    if op == "window":
        context_id, max_tokens = UUID(args["context_id"]), args["max_tokens"]

        def do_window() -> None:
            window(conn, context_id, max_tokens)

        return do_window
    if op == "get":
        context_id, head = UUID(args["context_id"]), args["head"]

        def do_get() -> None:
            get(conn, context_id, rng.randint(1, head))

        return do_get
    if op == "fork":
        parent_id = UUID(args["parent_id"])

        def do_fork() -> None:
            fork(conn, parent_id)

        return do_fork
    if op == "create":

        def do_create() -> None:
            create(conn)

        return do_create
    raise ValueError(f"unknown operation {op!r}")
