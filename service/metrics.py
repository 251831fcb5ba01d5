"""Prometheus metrics across all gunicorn workers (prometheus_client's
multiprocess mode): requests by route and status, latency by route, the database
pool, errors by kind, slow clients dropped.

prometheus_client picks its storage when it is first imported: the master calls
`prepare_multiprocess()` before anything imports it, so that every forked worker
writes its samples to files in one folder, which GET /metrics reads whole. Without
that (tests, a single process) the metrics live in this process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import falcon

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a token window is a few ms, a batch of 1000 messages about 100 ms.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POOL_EVERY = 1.0  # seconds between readings of the pool's state, per worker


def prepare_multiprocess() -> str:
    """Master, before fork (and before prometheus_client is imported): a fresh
    folder for the workers' samples, unless the operator named one (then emptied).
    Returns the folder."""
    folder = os.environ.get(VARIABLE)
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        folder = tempfile.mkdtemp(prefix="context-store-metrics-")
        os.environ[VARIABLE] = folder
    return folder


def release_multiprocess(folder: str | None) -> None:
    """Master, on exit: remove a folder prepare_multiprocess made."""
    if folder and Path(folder).name.startswith("context-store-metrics-"):
        shutil.rmtree(folder, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """Master, when a worker exits: its live gauges stop counting."""
    if os.environ.get(VARIABLE):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class Instruments:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "context_store_requests", "HTTP requests answered", ["route", "method", "status"]
        )
        self.latency = Histogram(
            "context_store_request_duration_seconds", "Time to answer a request", ["route", "method"],
            buckets=BUCKETS,
        )
        self.pool = Gauge(
            "context_store_db_pool_connections", "Database connections of the workers' pools by state",
            ["state"], multiprocess_mode="livesum",
        )
        self.errors = Counter("context_store_errors", "Requests that failed on the service's side", ["kind"])
        self.slow_clients = Counter(
            "context_store_slow_client_drops", "Connections dropped for missing a client deadline"
        )
        self.replica_reads = Counter(
            "context_store_replica_reads",
            "Reads of a deployment with replicas, by the server that answered and why: caught_up (a replica "
            "had replayed far enough), behind, down or failed (the primary instead)",
            ["served_by", "reason"],
        )


_instruments: Instruments | None = None
_instruments_lock = threading.Lock()


def instruments() -> Instruments:
    """This process's metrics, made once: a new worker's threads may ask together,
    and prometheus_client refuses a family registered twice."""
    global _instruments
    if _instruments is None:
        with _instruments_lock:
            if _instruments is None:
                _instruments = Instruments()
    return _instruments


def count_error(kind: str) -> None:
    """kind: unavailable (503), internal (500)."""
    instruments().errors.labels(kind).inc()


def count_read(served_by: str, reason: str) -> None:
    """served_by: replica or primary; reason: caught_up, behind, down, failed."""
    instruments().replica_reads.labels(served_by, reason).inc()


def slow_client_dropped() -> None:
    instruments().slow_clients.inc()


def render() -> bytes:
    """The exposition of every worker's samples (or this process's)."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    instruments()  # the families exist (at zero) before the first request
    if os.environ.get(VARIABLE):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class RequestMetrics:
    """Middleware: one sample per request, and the pool's state now and then."""

    def __init__(self, pool_stats: Any) -> None:
        self.pool_stats = pool_stats  # () -> psycopg_pool's get_stats() of this worker
        self._next_pool_reading = 0.0
        self._lock = threading.Lock()
        # (route, method, status) -> its counter and histogram: labels() takes a lock
        # and builds a key on every call (measured: 22 us a request, 12.5 cached).
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        started = req.context.get("started")
        if started is None:
            return
        now = time.perf_counter()
        route = req.uri_template or "unmatched"
        # A client can send any method token: only known ones become labels.
        method = req.method if req.method in falcon.COMBINED_METHODS else "OTHER"
        key = (route, method, resp.status_code)
        series = self._series.get(key)
        tools = instruments()
        if series is None:
            series = self._series[key] = (
                tools.requests.labels(route, method, str(resp.status_code)),
                tools.latency.labels(route, method),
            )
        series[0].inc()
        series[1].observe(now - started)
        if now >= self._next_pool_reading and self._lock.acquire(blocking=False):
            try:
                self._next_pool_reading = now + POOL_EVERY
                stats = self.pool_stats()
                size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
                tools.pool.labels("in_use").set(size - idle)
                tools.pool.labels("idle").set(idle)
                tools.pool.labels("waiting").set(stats.get("requests_waiting", 0))
            finally:
                self._lock.release()
