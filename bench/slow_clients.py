"""Slow-client attack on `context-store serve`: /health latency with and without it.

    python -m bench.slow_clients            # gunicorn's gthread, then ours: about 1 minute
    python -m bench.slow_clients --worker gthread --seconds 20

For each worker class it starts the service (2 workers x 4 threads, embedded
database under a temporary directory), measures GET /health from one client
for --seconds, then again while --stall connections send a partial request
head and stop, and --drip connections send one byte every 0.5 s. An attacking
connection the server closes is opened again at once, so the pressure holds for
the whole phase. It prints a markdown table: /health p50/p99, answers that were
not 200 or took longer than --timeout, and slow clients the server dropped
(from its log) or the attacker saw closed. Everything goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\n"
DRIP_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Drip: " + b"d" * 200 + b"\r\n\r\n"
# A complete request; the client then keeps its end open after the answer.
LINGER_REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(home: Path, port: int, worker_class: str, log_path: Path, **env: str) -> subprocess.Popen:
    """`context-store serve` on 127.0.0.1:port; returns once /health answers 200."""
    environ = {
        **os.environ,
        "CONTEXT_STORE_HOME": str(home),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "4",
        "GUNICORN_WORKER_CLASS": worker_class,
        "LOG_LEVEL": "warning",
        **env,
    }
    environ.pop("DATABASE_URL", None)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=environ, stdout=log, stderr=log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited: {log_path.read_text()[-2000:]}")
        if health(port, 2.0)[0] == 200:
            return proc
        time.sleep(0.3)
    stop_service(proc)
    raise RuntimeError(f"the service did not answer /health: {log_path.read_text()[-2000:]}")


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def health(port: int, timeout: float) -> tuple[int | None, float]:
    """(status or None on time-out/error, seconds) of one GET /health on a new connection."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(max(timeout - (time.perf_counter() - started), 0.01))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None, time.perf_counter() - started
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
    return (int(match.group(1)) if match else None), time.perf_counter() - started


@dataclass
class Attack:
    """`stall` connections that send a partial head and wait, `drip` that send a
    byte every `interval` seconds, `linger` that send a whole request with
    "Connection: close" and never close their end; each one the server closes
    is reopened."""

    port: int
    stall: int
    drip: int
    linger: int = 0
    interval: float = 0.5
    reconnect: bool = True
    opened: int = 0
    closes: list[float] = field(default_factory=list)  # seconds from connect to the server's close
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Attack:
        selector = selectors.DefaultSelector()
        for kind in ["stall"] * self.stall + ["drip"] * self.drip + ["linger"] * self.linger:
            self._open(selector, kind)
        self._thread = threading.Thread(target=self._run, args=(selector,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _open(self, selector, kind: str) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        if kind == "stall":
            sock.send(PARTIAL_HEAD)
        elif kind == "linger":
            sock.send(LINGER_REQUEST)
        self.opened += 1
        # [socket, kind, connected at, bytes sent, next drip]
        selector.register(sock, selectors.EVENT_READ, [kind, time.monotonic(), 0, time.monotonic()])

    def _run(self, selector) -> None:
        held: list[socket.socket] = []
        reopen: list[float] = []
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    sock, (kind, connected, _sent, _next) = key.fileobj, key.data
                    try:
                        closed = sock.recv(65536) == b""
                    except BlockingIOError:
                        closed = False
                    except OSError:
                        closed = True
                    if closed and kind == "linger":
                        # Answered: keep this end open for good, and come back
                        # with another such request half a second later.
                        selector.unregister(sock)
                        held.append(sock)
                        reopen.append(time.monotonic() + self.interval)
                    elif closed:
                        self.closes.append(time.monotonic() - connected)
                        selector.unregister(sock)
                        sock.close()
                        if self.reconnect and not self._stop.is_set():
                            self._open(selector, kind)
                now = time.monotonic()
                while reopen and reopen[0] <= now and self.reconnect:
                    reopen.pop(0)
                    self._open(selector, "linger")
                for key in list(selector.get_map().values()):
                    state = key.data
                    if state[0] == "drip" and now >= state[3] and state[2] < len(DRIP_HEAD):
                        try:
                            key.fileobj.send(DRIP_HEAD[state[2] : state[2] + 1])
                            state[2] += 1
                        except OSError:
                            pass  # closed: the select above sees it
                        state[3] = now + self.interval
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()
            selector.close()
            for sock in held:
                sock.close()


def measure(port: int, seconds: float, timeout: float, pause: float = 0.02) -> list[tuple[int | None, float]]:
    """GET /health one after another for `seconds`."""
    results = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        results.append(health(port, timeout))
        time.sleep(pause)
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(results: list[tuple[int | None, float]], timeout: float) -> dict[str, float | int]:
    latencies = [seconds for _status, seconds in results]
    failed = sum(1 for status, seconds in results if status != 200 or seconds >= timeout)
    return {
        "requests": len(results),
        "failed": failed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def server_drops(log_path: Path) -> int:
    return len(re.findall(r"slow client \S+ dropped", log_path.read_text(errors="replace")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_clients", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--worker",
        action="append",
        choices=["gthread-stock", "gthread", "sync"],
        help="GUNICORN_WORKER_CLASS to measure (repeatable; default: gthread-stock, then gthread)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase (default 10)")
    parser.add_argument("--stall", type=int, default=50, help="connections that stop after a partial head")
    parser.add_argument("--drip", type=int, default=50, help="connections that send a byte every 0.5 s")
    parser.add_argument(
        "--linger", type=int, default=0, help='connections that never close after a "Connection: close" answer'
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="a /health slower than this counts as failed")
    args = parser.parse_args(argv)
    workers = args.worker or ["gthread-stock", "gthread"]

    tmp = Path(tempfile.mkdtemp(prefix="context-store-slow-"))
    rows = []
    try:
        for worker in workers:
            log_path = tmp / f"serve-{worker}.log"
            port = free_port()
            print(f"[{worker}] starting the service on port {port}", file=sys.stderr)
            proc = start_service(tmp / "home", port, worker, log_path)
            try:
                quiet = summarize(measure(port, args.seconds, args.timeout), args.timeout)
                rows.append((worker, "no attack", quiet, 0, "-"))
                before = server_drops(log_path)
                print(f"[{worker}] attack under way", file=sys.stderr)
                with Attack(port, args.stall, args.drip, args.linger) as attack:
                    time.sleep(0.5)  # let the attack take its threads first
                    loud = summarize(measure(port, args.seconds, args.timeout), args.timeout)
                closed = "0"
                if attack.closes:
                    closed = f"{len(attack.closes)} (median {percentile(attack.closes, 0.5):.1f} s)"
                rows.append((worker, "under attack", loud, server_drops(log_path) - before, closed))
            finally:
                stop_service(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\n/health from one client, {args.seconds:g} s per phase; attack: {args.stall} connections "
        f"stalled after a partial head + {args.drip} dripping a byte every 0.5 s + {args.linger} never "
        f"closing after a \"Connection: close\" answer, reopened when closed; "
        f"failed = not 200 or slower than {args.timeout:g} s.\n"
    )
    print("| worker | phase | requests | failed | p50 | p99 | dropped by the server | closed (attacker's view) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for worker, phase, s, drops, closed in rows:
        print(
            f"| {worker} | {phase} | {s['requests']} | {s['failed']} | {s['p50_ms']:.1f} ms | "
            f"{s['p99_ms']:.1f} ms | {drops} | {closed} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
