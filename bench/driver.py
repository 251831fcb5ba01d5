"""The client processes that drive the load, and the orchestrator's handle on them.

Each client process is started once (multiprocessing, spawn) and then serves
benchmark cells sent by the orchestrator (`Clients`) over a pipe:

    ("cell", spec)  -> set up (open a keep-alive HTTP/1.1 connection to 127.0.0.1 on
                       the spec's port, or reuse its own psycopg connection for the raw
                       mode, bench/raw.py), warm up, answer ("ready", ...)
    ("go", None)    -> run until the cell's request count or its deadline, whichever
                       comes first, answer ("done", result)
    ("stop", None)  -> exit

A client never talks to anything but 127.0.0.1. Every loop here is bounded in
count and in time; a client idle for IDLE_LIMIT seconds exits by itself.
"""

from __future__ import annotations

import http.client
import io
import itertools
import multiprocessing
import random
import time
import traceback
import uuid
from array import array
from collections.abc import Iterator
from typing import Any

import orjson

HOST = "127.0.0.1"  # load goes to loopback only
IDLE_LIMIT = 1800.0  # seconds a client waits for its next command before giving up
WARMUP_REQUESTS = 5
WARMUP_SECONDS = 0.5
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
KEY_PREFIX = "bench-"  # of every Idempotency-Key the clients send


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


# ---------------------------------------------------------------- HTTP


class HttpClient:
    """One persistent HTTP/1.1 keep-alive connection to the service on loopback."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.headers = HEADERS  # every request's; a cell may add its own (Authorization)

    def open(self) -> None:
        self.close()
        self.conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        self.conn.connect()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def call(self, method: str, path: str, body: bytes | None = None,
             extra: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.conn is None:
            self.open()
        assert self.conn is not None
        headers = self.headers if extra is None else {**self.headers, **extra}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            self.close()  # reconnect on the next call; this one counts as an error
            raise


class CurlClient:
    """HttpClient's interface over libcurl (pycurl): one keep-alive HTTP/1.1
    connection, for about half of http.client's CPU per request (a one-client
    loop on a do-nothing app: 52-60 against 107-125 µs). At 8 clients on two
    cores, http.client's clients take a third of the CPU; with this one more of
    the machine measures the service (`--http-client curl`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.headers = HEADERS
        self.curl: Any = None
        self._body = io.BytesIO()

    def open(self) -> None:
        import pycurl

        self.close()
        curl = pycurl.Curl()
        curl.setopt(pycurl.WRITEFUNCTION, self._body.write)
        curl.setopt(pycurl.TIMEOUT, 60)
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        self.curl = curl
        self._base = f"http://{HOST}:{self.port}"
        # "Expect:" keeps libcurl from asking for 100-continue before a body over 1 KiB.
        self._lines = [f"{name}: {value}" for name, value in self.headers.items()] + ["Expect:"]

    def close(self) -> None:
        if self.curl is not None:
            self.curl.close()
            self.curl = None

    def call(self, method: str, path: str, body: bytes | None = None,
             extra: dict[str, str] | None = None) -> tuple[int, bytes]:
        import pycurl

        if self.curl is None:
            self.open()
        curl = self.curl
        self._body.seek(0)
        self._body.truncate()
        curl.setopt(pycurl.URL, self._base + path)
        lines = self._lines if extra is None else self._lines + [f"{k}: {v}" for k, v in extra.items()]
        curl.setopt(pycurl.HTTPHEADER, lines)
        if method == "GET" and body is None:
            curl.setopt(pycurl.HTTPGET, 1)
        else:
            curl.setopt(pycurl.POSTFIELDS, body or b"")
        # Set or cleared on every call: libcurl keeps options from one request to the next.
        curl.setopt(pycurl.CUSTOMREQUEST, None if method in ("GET", "POST") else method)
        try:
            curl.perform()
        except pycurl.error as exc:
            self.close()  # reconnect on the next call; this one counts as an error
            raise OSError(str(exc)) from None
        return curl.getinfo(pycurl.RESPONSE_CODE), self._body.getvalue()


HTTP_CLIENTS = {"http.client": HttpClient, "curl": CurlClient}
# The load generator of bench.run, bench.profile and bench.cpu_split unless told
# otherwise (--http-client). libcurl since 2026-11-27 12:00: at 8 clients on two
# cores, http.client's clients spent 400 µs of CPU per single append against
# libcurl's 174 (bench.cpu_split --op append), and that CPU, taken from the same
# cores, was counted against the service in every svc/raw and compare ratio.
DEFAULT_HTTP_CLIENT = "curl"


def http_operation(spec: dict[str, Any], client: HttpClient, rng: random.Random):
    """A zero-argument callable doing one request of the cell's operation; raises on failure."""
    op = spec["op"]
    args = spec["args"]
    if op == "append":
        path = f"/v1/contexts/{args['context_id']}/messages"
        batch = message_batch(args["batch_size"], args["seed"], args["explicit_tokens"])
        body = orjson.dumps({"messages": batch})
        if args.get("idempotency_keys"):
            return _keyed_request(client, path, body, 201)
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


def unique_keys() -> Iterator[str]:
    """Idempotency keys no other client, cell or run has used: every request is a
    first request, so each one writes (and records its response)."""
    prefix = f"{KEY_PREFIX}{uuid.uuid4().hex}-"
    return (f"{prefix}{n}" for n in itertools.count())


def _keyed_request(client: HttpClient, path: str, body: bytes, expected: int):
    keys = unique_keys()

    def call() -> None:
        status, data = client.call("POST", path, body, {"Idempotency-Key": next(keys)})
        if status != expected:
            raise RuntimeError(f"POST {path} with Idempotency-Key: {status} {data[:200]!r}")

    return call


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


def client_main(pipe, database_url: str, http_client_kind: str) -> None:
    """Entry point of one client process."""
    import os
    import sys

    # run from the repository root, like the orchestrator (spawn keeps sys.path)
    sys.path.insert(0, os.getcwd())
    http_client = HTTP_CLIENTS[http_client_kind](0)
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
                    http_client.port = spec["port"]
                    http_client.headers = {**HEADERS, **spec.get("headers", {})}
                    http_client.open()
                    operation = http_operation(spec, http_client, rng)
                else:
                    from bench import raw

                    if raw_conn is None:
                        raw_conn = raw.connect(database_url)
                    operation = raw.operation(spec, raw_conn, rng)
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


# ---------------------------------------------------------------- the orchestrator's side


class CellFailed(RuntimeError):
    """A client could not set up its part of a cell (the message is its traceback)."""


class Clients:
    """The load-driving processes, started once and reused by every cell."""

    def __init__(self, count: int, database_url: str, http_client: str = DEFAULT_HTTP_CLIENT) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(child, database_url, http_client), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def run(self, specs: list[dict[str, Any]], duration: float) -> list[dict[str, Any]]:
        """One cell: specs[i] goes to client i; all start together. Results per client."""
        pipes = self.pipes[: len(specs)]
        for pipe, spec in zip(pipes, specs):
            pipe.send(("cell", spec))
        ready, failure = [], None
        for pipe in pipes:
            answer = self._recv(pipe, 120)
            if answer[0] == "ready":
                ready.append(pipe)
            else:
                failure = answer[1]
        if failure is not None:
            for pipe in ready:
                pipe.send(("drop", None))
            raise CellFailed(failure)
        for pipe in pipes:
            pipe.send(("go", None))
        return [self._recv(pipe, duration + 120)[1] for pipe in pipes]

    def _recv(self, pipe, timeout: float):
        if not pipe.poll(timeout):
            raise RuntimeError(f"a client gave no answer within {timeout:.0f} s")
        return pipe.recv()

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("stop", None))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
