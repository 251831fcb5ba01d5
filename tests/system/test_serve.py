"""`context-store serve` as an operator runs it: real gunicorn workers over the
embedded PostgreSQL, the database stopped and restarted under it, SIGTERM."""

from __future__ import annotations

import signal

import orjson
import pytest
from serving import get as _get
from serving import pg_ctl as _pg_ctl
from serving import postmaster_running as _postmaster_running
from serving import serve, start_postgres, wait_for as _wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served():
    """One server for the module; the SIGTERM test stops it and comes last."""
    with serve() as server:
        yield server.base, server.pgdata, server.proc


def test_serve_answers_health_and_routes_under_two_workers(served):
    base, pgdata, proc = served
    status, headers, body = _get(f"{base}/health")
    document = orjson.loads(body)
    assert status == 200
    assert document["status"] == "ok" and document["database"]["status"] == "ok"

    status, headers, body = _get(f"{base}/no/such/path", {"X-Request-Id": "trace-42"})
    assert status == 404
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["X-Request-Id"] == "trace-42"


def test_database_outage_gives_503_then_recovers_without_restart(served):
    base, pgdata, proc = served
    _pg_ctl(pgdata, "stop", "-m", "fast")
    status, headers, body = _get(f"{base}/health")
    assert status == 503
    assert headers["Content-Type"] == "application/json"  # the health shape, per API.md
    assert int(headers["Retry-After"]) >= 1
    assert orjson.loads(body)["status"] == "unavailable"
    status, headers, body = _get(f"{base}/v1/contexts")
    assert status == 503 and orjson.loads(body)["type"] == "/problems/service-unavailable"

    start_postgres(pgdata)
    # Every worker recovers (each has its own pool): several answers in a row.
    _wait_for(lambda: all(_get(f"{base}/health")[0] == 200 for _ in range(6)), 30, "recovery")
    assert proc.poll() is None


def test_sigterm_stops_workers_and_the_embedded_database(served):
    base, pgdata, proc = served
    assert _postmaster_running(pgdata)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    _wait_for(lambda: not _postmaster_running(pgdata), 15, "the embedded database to stop")
