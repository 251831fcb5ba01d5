"""The raw mode: the service's own named SQL statements through psycopg, without HTTP.

Every statement a raw cell runs goes through one function per operation below
(`create`, `append`, `last`, `window`, `get`, `fork`): when the service's queries
become store objects, these functions are the one place to call the store's methods
instead. Parameters are built here only, the way the service's query layer builds
them today; the EXPLAIN section reads the read statements from `*_statement` so that
it runs exactly what the raw cells run.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any, Callable
from uuid import UUID

import orjson

from bench.driver import message_batch
from service.ids import uuid7
from service.sql import QUERIES, Statement

TENANT = "default"  # the single tenant of a server without API keys


def connect(url: str):
    """A connection set up like the service's pooled ones (service/db.py): pgvector,
    raw JSON, statement timeout, psycopg preparing statements from their 6th run,
    autocommit (each statement is its own transaction, as the pool runs it)."""
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg.types.json import set_json_loads

    conn = psycopg.connect(url, prepare_threshold=5, application_name="context-store-bench-raw", autocommit=True)
    register_vector(conn)
    set_json_loads(orjson.Fragment, conn)
    QUERIES.configure_session.run(conn, statement_timeout="10000ms")
    conn.commit()
    return conn


def _run(conn, statement: Statement, params: dict[str, Any]) -> Any:
    result = statement.run(conn, **params)
    conn.commit()  # a no-op in autocommit; kept so a transactional connection measures the same
    return result


@lru_cache(maxsize=1)
def _max_lineage_depth() -> int:
    from service.config import Settings

    return Settings().max_lineage_depth


# ---------------------------------------------------------------- one function per operation


def create(conn) -> Any:
    """Create one context; the new row."""
    return _run(conn, QUERIES.insert_context, dict(id=uuid7(), tenant=TENANT, metadata='{"bench":"create"}'))


def append(conn, context_id: UUID, batch: list[dict[str, Any]]) -> Any:
    """Append a batch of messages to a context; None when nothing was written."""
    # token counts given, or the service's fallback estimate: raw cells never run the tokenizer
    counts = [m.get("token_count", (len(m["content"].encode()) + 3) // 4) for m in batch]
    return _run(conn, QUERIES.insert_messages, dict(
        tenant=TENANT, context_id=context_id, count=len(batch), batch_tokens=sum(counts), if_match=None,
        roles=[m["role"] for m in batch], contents=[m["content"] for m in batch], token_counts=counts,
        embeddings=[None] * len(batch), metadata=["{}"] * len(batch),
    ))


def last_statement(context_id: UUID, limit: int) -> tuple[Statement, dict[str, Any]]:
    # the service asks for one more row than the page, to tell has_more
    return QUERIES.list_messages_desc, dict(
        tenant=TENANT, context_id=context_id, limit=limit + 1, after=0, before=2**62,
        as_of_version=None, as_of=None, include_embedding=False)


def last(conn, context_id: UUID, limit: int) -> Any:
    """The newest `limit` messages of a context (and one more); their rows."""
    return _run(conn, *last_statement(context_id, limit))


def window_statement(context_id: UUID, max_tokens: int) -> tuple[Statement, dict[str, Any]]:
    return QUERIES.get_window, dict(
        tenant=TENANT, context_id=context_id, max_tokens=max_tokens, pin_system=False,
        as_of_version=None, as_of=None)


def window(conn, context_id: UUID, max_tokens: int) -> Any:
    """The newest messages of a context within max_tokens; their rows."""
    return _run(conn, *window_statement(context_id, max_tokens))


def get_statement(context_id: UUID, version: int) -> tuple[Statement, dict[str, Any]]:
    return QUERIES.get_message, dict(tenant=TENANT, context_id=context_id, version=version,
                                     include_embedding=False)


def get(conn, context_id: UUID, version: int) -> Any:
    """One message of a context by version; its row or None."""
    return _run(conn, *get_statement(context_id, version))


def fork(conn, parent_id: UUID) -> Any:
    """Fork a context at its head; the new row or None."""
    return _run(conn, QUERIES.insert_fork, dict(
        id=uuid7(), tenant=TENANT, parent_id=parent_id, at_version=None, metadata=None,
        max_segments=_max_lineage_depth()))


# ---------------------------------------------------------------- cells


def operation(spec: dict[str, Any], conn, rng: random.Random) -> Callable[[], None]:
    """A zero-argument callable doing one operation of the cell; raises on failure."""
    op = spec["op"]
    args = spec["args"]
    if op == "append":
        context_id = UUID(args["context_id"])
        batch = message_batch(args["batch_size"], args["seed"], True)

        def do_append() -> None:
            if append(conn, context_id, batch) is None:
                raise RuntimeError("insert_messages wrote nothing")

        return do_append
    if op == "list":
        context_id, limit = UUID(args["context_id"]), args["limit"]

        def do_list() -> None:
            if not last(conn, context_id, limit):
                raise RuntimeError("list_messages_desc returned no row")

        return do_list
    if op == "window":
        context_id, max_tokens = UUID(args["context_id"]), args["max_tokens"]

        def do_window() -> None:
            if not window(conn, context_id, max_tokens):
                raise RuntimeError("get_window returned no row")

        return do_window
    if op == "get":
        context_id, head = UUID(args["context_id"]), args["head"]

        def do_get() -> None:
            if not get(conn, context_id, rng.randint(1, head)):
                raise RuntimeError("get_message returned no row")

        return do_get
    if op == "fork":
        parent_id = UUID(args["parent_id"])

        def do_fork() -> None:
            if fork(conn, parent_id) is None:
                raise RuntimeError("insert_fork wrote nothing")

        return do_fork
    if op == "create":

        def do_create() -> None:
            create(conn)

        return do_create
    raise ValueError(f"unknown operation {op!r}")
