"""The load-driving side of bench/run.py: one client per process.

Each client process is started once (multiprocessing, spawn) and then serves
benchmark cells sent by the orchestrator over a pipe:

    ("cell", spec)  -> set up (open a keep-alive HTTP/1.1 connection to 127.0.0.1, or
                       reuse its own psycopg connection), warm up, answer ("ready", ...)
    ("go", None)    -> run until the cell's request count or its deadline, whichever
                       comes first, answer ("done", result)
    ("stop", None)  -> exit

A client never talks to anything but 127.0.0.1. Every loop here is bounded in
count and in time; a client idle for IDLE_LIMIT seconds exits by itself.
"""

from __future__ import annotations

import http.client
import random
import time
import traceback
from array import array
from typing import Any
from uuid import UUID

import orjson

HOST = "127.0.0.1"  # load goes to loopback only
IDLE_LIMIT = 1800.0  # seconds a client waits for its next command before giving up
WARMUP_REQUESTS = 5
WARMUP_SECONDS = 0.5
TENANT = "default"  # the single tenant of a server without API keys
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


# ---------------------------------------------------------------- payloads


def message_batch(size: int, seed: int, explicit_tokens: bool) -> list[dict[str, Any]]:
    """size short messages; with token_count when explicit_tokens (else the server counts)."""
    rng = random.Random(seed)
    roles = ("user", "assistant")
    batch = []
    for i in range(size):
        message: dict[str, Any] = {
            "role": roles[i % 2],
            "content": f"bench message {seed}-{i}: the quick brown fox jumps over the lazy dog",
        }
        if explicit_tokens:
            message["token_count"] = rng.randint(1, 60)
        batch.append(message)
    return batch


def raw_append_params(batch: list[dict[str, Any]], context_id: str) -> dict[str, Any]:
    """insert_messages parameters for a batch, built the way service.queries.messages does."""
    counts = [m.get("token_count", (len(m["content"].encode()) + 3) // 4) for m in batch]
    return {
        "tenant": TENANT,
        "context_id": UUID(context_id),
        "count": len(batch),
        "batch_tokens": sum(counts),
        "if_match": None,
        "roles": [m["role"] for m in batch],
        "contents": [m["content"] for m in batch],
        "token_counts": counts,
        "embeddings": [None] * len(batch),
        "metadata": ["{}"] * len(batch),
    }


# ---------------------------------------------------------------- HTTP


class HttpClient:
    """One persistent HTTP/1.1 keep-alive connection to the service on loopback."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def open(self) -> None:
        self.close()
        self.conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        self.conn.connect()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.conn is None:
            self.open()
        assert self.conn is not None
        try:
            self.conn.request(method, path, body=body, headers=HEADERS)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            self.close()  # reconnect on the next call; this one counts as an error
            raise


def http_operation(spec: dict[str, Any], client: HttpClient, rng: random.Random):
    """A zero-argument callable doing one request of the cell's operation; raises on failure."""
    op = spec["op"]
    args = spec["args"]
    if op == "append":
        path = f"/v1/contexts/{args['context_id']}/messages"
        batch = message_batch(args["batch_size"], args["seed"], args["explicit_tokens"])
        body = orjson.dumps({"messages": batch})
        return _request(client, "POST", path, body, 201)
    if op == "list":
        path = f"/v1/contexts/{args['context_id']}/messages?order=desc&limit={args['limit']}"
        return _request(client, "GET", path, None, 200)
    if op == "window":
        path = f"/v1/contexts/{args['context_id']}/window?max_tokens={args['max_tokens']}"
        return _request(client, "GET", path, None, 200)
    if op == "get":
        prefix = f"/v1/contexts/{args['context_id']}/messages/"
        head = args["head"]

        def get() -> None:
            status, data = client.call("GET", f"{prefix}{rng.randint(1, head)}")
            if status != 200:
                raise RuntimeError(f"GET message: {status} {data[:200]!r}")

        return get
    if op == "fork":
        return _request(client, "POST", f"/v1/contexts/{args['parent_id']}/forks", b"{}", 201)
    if op == "create":
        return _request(client, "POST", "/v1/contexts", b'{"metadata":{"bench":"create"}}', 201)
    raise ValueError(f"unknown operation {op!r}")


def _request(client: HttpClient, method: str, path: str, body: bytes | None, expected: int):
    def call() -> None:
        status, data = client.call(method, path, body)
        if status != expected:
            raise RuntimeError(f"{method} {path}: {status} {data[:200]!r}")

    return call


# ---------------------------------------------------------------- raw SQL


def raw_connect(url: str):
    """A connection set up like the service's pooled ones (service/db.py)."""
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg.types.json import set_json_loads

    from service.sql import QUERIES

    conn = psycopg.connect(url, prepare_threshold=5, application_name="context-store-bench-raw", autocommit=True)
    register_vector(conn)
    set_json_loads(orjson.Fragment, conn)
    QUERIES.configure_session.run(conn, statement_timeout="10000ms")
    conn.commit()
    return conn


def raw_operation(spec: dict[str, Any], conn, rng: random.Random):
    """A zero-argument callable running the service's own statement for one operation,
    in autocommit mode as the service's pool runs it (commit() is then a no-op)."""
    from service.ids import uuid7
    from service.sql import QUERIES

    op = spec["op"]
    args = spec["args"]
    commit = conn.commit
    if op == "append":
        params = raw_append_params(message_batch(args["batch_size"], args["seed"], True), args["context_id"])
        statement = QUERIES.insert_messages

        def append() -> None:
            row = statement.run(conn, **params)
            commit()
            if row is None:
                raise RuntimeError("insert_messages wrote nothing")

        return append
    if op in {"list", "window", "get"}:
        context_id = UUID(args["context_id"])
        if op == "list":
            statement = QUERIES.list_messages_desc
            # the service asks for one more row than the page, to tell has_more
            params = dict(tenant=TENANT, context_id=context_id, limit=args["limit"] + 1, after=0,
                          before=2**62, as_of_version=None, as_of=None, include_embedding=False)
        elif op == "window":
            statement = QUERIES.get_window
            params = dict(tenant=TENANT, context_id=context_id, max_tokens=args["max_tokens"],
                          pin_system=False, as_of_version=None, as_of=None)
        else:
            statement = QUERIES.get_message
            params = dict(tenant=TENANT, context_id=context_id, version=1, include_embedding=False)
        head = args.get("head", 1)

        def read() -> None:
            if op == "get":
                params["version"] = rng.randint(1, head)
            rows = statement.run(conn, **params)
            commit()
            if not rows:
                raise RuntimeError(f"{statement.name} returned no row")

        return read
    if op == "fork":
        parent = UUID(args["parent_id"])
        from service.config import Settings

        statement = QUERIES.insert_fork

        def fork() -> None:
            row = statement.run(
                conn, id=uuid7(), tenant=TENANT, parent_id=parent, at_version=None, metadata=None,
                max_segments=Settings().max_lineage_depth,
            )
            commit()
            if row is None:
                raise RuntimeError("insert_fork wrote nothing")

        return fork
    if op == "create":
        statement = QUERIES.insert_context

        def create() -> None:
            statement.run(conn, id=uuid7(), tenant=TENANT, metadata='{"bench":"create"}')
            commit()

        return create
    raise ValueError(f"unknown operation {op!r}")


# ---------------------------------------------------------------- the client loop


def _warm_up(operation) -> None:
    deadline = time.perf_counter() + WARMUP_SECONDS
    for _ in range(WARMUP_REQUESTS):
        if time.perf_counter() >= deadline:
            break
        operation()


def _measure(operation, max_requests: int, duration: float) -> dict[str, Any]:
    latencies = array("d")
    errors = 0
    first_error = None
    clock = time.perf_counter
    start = time.monotonic()
    deadline = clock() + duration
    for _ in range(max_requests):
        t0 = clock()
        if t0 >= deadline:
            break
        try:
            operation()
        except Exception as exc:  # counted and reported, never retried
            errors += 1
            if first_error is None:
                first_error = f"{type(exc).__name__}: {exc}"[:300]
            continue
        latencies.append(clock() - t0)
    end = time.monotonic()
    return {
        "latencies": latencies.tobytes(),
        "errors": errors,
        "first_error": first_error,
        "start": start,
        "end": end,
    }


def client_main(pipe, port: int, database_url: str) -> None:
    """Entry point of one client process."""
    import os
    import sys

    # run from the repository root, like the orchestrator (spawn keeps sys.path)
    sys.path.insert(0, os.getcwd())
    http_client = HttpClient(port)
    raw_conn = None
    try:
        while pipe.poll(IDLE_LIMIT):
            command, spec = pipe.recv()
            if command == "stop":
                break
            if command != "cell":
                continue
            try:
                rng = random.Random(spec["seed"])
                if spec["mode"] == "http":
                    http_client.open()
                    operation = http_operation(spec, http_client, rng)
                else:
                    if raw_conn is None or raw_conn.closed:
                        raw_conn = raw_connect(database_url)
                    operation = raw_operation(spec, raw_conn, rng)
                _warm_up(operation)
            except Exception:
                pipe.send(("failed", traceback.format_exc(limit=5)))
                http_client.close()
                continue
            pipe.send(("ready", None))
            if not pipe.poll(120):
                break
            command, _ = pipe.recv()
            if command == "stop":
                break
            if command != "go":  # the orchestrator dropped this cell
                http_client.close()
                continue
            result = _measure(operation, spec["max_requests"], spec["duration"])
            http_client.close()
            pipe.send(("done", result))
    finally:
        http_client.close()
        if raw_conn is not None:
            raw_conn.close()
