"""The service's gunicorn worker and hooks where test_slow_clients.py does not
take them: a client that stops reading its answer, TLS (which keeps gunicorn's
own way of reading), and plain `gunicorn -c gunicorn.conf.py` meeting a database
it cannot use. Real gunicorn, real sockets, the embedded PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pytest
from serving import free_port, request, serve, stop
from support import database_url

from service import config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BODY_TIMEOUT = 0.5  # the shortest CLIENT_BODY_TIMEOUT the settings accept


def _most_the_kernel_buffers() -> int:
    """The largest send buffer TCP autotuning gives a socket (tcp_wmem's maximum)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024  # Linux's default


# An answer the server cannot hand to the kernel at once, whatever it buffers:
# its send buffer at most, and this client's small window (within MAX_METADATA_BYTES's 16 MiB).
BIG = min(_most_the_kernel_buffers() + 1024 * 1024, 16 * 1024 * 1024 - 1024)


@pytest.fixture(scope="module")
def served():
    env = {
        "WEB_CONCURRENCY": "1",
        "CLIENT_BODY_TIMEOUT": str(BODY_TIMEOUT),
        # Metadata, unlike message content, is stored without tokenizing: a big answer costs little.
        "MAX_METADATA_BYTES": str(BIG + 1024),
        "MAX_BODY_BYTES": str(BIG + 2048),
    }
    with serve(env) as running:
        yield running


def test_a_client_that_stops_reading_its_answer_is_dropped_at_the_body_deadline(served):
    status, _h, body = request(f"{served.base}/v1/contexts", "POST", orjson.dumps({"metadata": {"blob": "x" * BIG}}))
    assert status == 201, body[:300]
    context_id = orjson.loads(body)["id"]
    port = int(served.base.rsplit(":", 1)[1])
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET /v1/contexts/{context_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(BODY_TIMEOUT + 1.5)  # the thread's send times out meanwhile
        # The server gave up on the answer: what arrives is a prefix, then the end.
        sock.settimeout(5)
        received = 0
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert 0 < received < BIG
    logged = rf"slow client 127\.0\.0\.1:\d+ dropped: it read no response for {BODY_TIMEOUT:g}s"
    assert re.search(logged, served.log_path.read_text())
    # The thread came back: the worker (one, four threads) still answers.
    assert request(f"{served.base}/health")[0] == 200


@pytest.fixture(scope="module")
def certificate():
    folder = Path(tempfile.mkdtemp(prefix="context-store-tls-"))
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    yield cert, key
    for path in (cert, key):
        path.unlink()
    folder.rmdir()


def _https_health(port: int, context: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    return answer


def test_tls_is_served_by_gunicorns_own_reading_in_a_thread(certificate, postgresql):
    # The event loop cannot read a TLS record's request: such a connection goes to
    # a thread at once, which does the handshake and reads as gunicorn does.
    cert, key = certificate
    info = postgresql.info
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if k not in {variable for _f, variable, _p in config._SPEC}}
    home = Path(tempfile.mkdtemp(prefix="context-store-tls-home-"))
    log_path = home / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env={**clean, "DATABASE_URL": database_url(info.host, info.port, info.user, info.password, info.dbname),
                 "CONTEXT_STORE_HOME": str(home), "PORT": str(port), "WEB_CONCURRENCY": "1", "LOG_LEVEL": "warning",
                 "GUNICORN_CMD_ARGS": f"--certfile {cert} --keyfile {key}"},
            stdout=log, stderr=log,
        )  # fmt: skip
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # the certificate names 127.0.0.1 as its CN only
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = _https_health(port, context)
                break
            except (OSError, ssl.SSLError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(log_path.read_text()[-3000:]) from None
                time.sleep(0.2)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["status"] == "ok"
        # Plain HTTP on the TLS port gets no answer from the app.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                refused = plain.recv(65536)
            except ConnectionResetError:
                refused = b""
            assert not refused.startswith(b"HTTP/1.1 200")
    finally:
        stop(proc)
        shutil.rmtree(home, ignore_errors=True)


def test_plain_gunicorn_with_a_database_it_cannot_reach_exits_2_with_one_line():
    # `context-store serve` reports this before gunicorn starts; plain gunicorn
    # meets it in its on_starting hook, before any listener or worker exists.
    clean = {k: v for k, v in os.environ.items() if k not in {variable for _f, variable, _p in config._SPEC}}
    home = tempfile.mkdtemp(prefix="context-store-gunicorn-")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
            cwd=ROOT,
            env={**clean, "DATABASE_URL": "postgresql://ada:s3cret@127.0.0.1:1/cs_nowhere",
                 "CONTEXT_STORE_HOME": home, "PORT": str(free_port())},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.rmdir(home)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("context-store: ")]
    assert len(lines) == 1 and lines[0].startswith("context-store: cannot connect to database cs_nowhere"), done.stderr
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
    assert "Listening at" not in done.stderr and "Booting worker" not in done.stderr


def test_a_stopping_worker_ends_a_connection_its_thread_holds_after_an_answer_that_says_close():
    # A client sending request after request keeps its connection in one thread
    # (the next request arrives before the thread gives up waiting for it).
    with serve({"WEB_CONCURRENCY": "1"}) as running:
        port = int(running.base.rsplit(":", 1)[1])
        answers: list[tuple[int, str]] = []
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            buf = b""
            stopped_at = None
            while True:
                if len(answers) == 50:
                    running.proc.send_signal(signal.SIGTERM)
                    stopped_at = time.monotonic()
                try:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    break
                while b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                if b"\r\n\r\n" not in buf:
                    break
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                fields = dict(line.lower().split(": ", 1) for line in lines[1:])
                length = int(fields["content-length"])
                while len(buf) < length:
                    buf += sock.recv(65536)
                buf = buf[length:]
                answers.append((int(lines[0].split(" ")[1]), fields["connection"]))
                if fields["connection"] == "close":
                    assert sock.recv(1) == b""  # and the server closes it
                    break
        assert running.proc.wait(15) == 0
        assert stopped_at is not None and time.monotonic() - stopped_at < 12  # within the graceful timeout
    assert {status for status, _ in answers} == {200}
    # Every answer was whole; the last one told the client the connection ends.
    assert answers[-1][1] == "close"
    assert all(connection == "keep-alive" for _, connection in answers[:-1])
