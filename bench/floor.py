"""The HTTP floor: what one request costs through gunicorn when the app does nothing.

    python -m bench.floor                       # 3 rounds of 4 s per cell
    python -m bench.floor --rounds 5 --seconds 3

"Ours" in bench/profile.py is the service's p50 minus its statement's p50 (raw),
measured with one `http.client` keep-alive connection. Part of it is not the app's
at all: the client's own HTTP code, the loopback, and gunicorn's request handling.
This measures that part alone, with the same client, on gunicorn workers that
answer every request with a fixed body the size of a message document (no
database, no middleware):

- `wsgi`: a plain WSGI callable;
- `falcon`: a Falcon app with the service's message route and nothing else;

each under the service's worker (`service.workers.DeadlineWorker`), the same
worker with service/quickparse.py turned off (`GunicornParsing`: every request
through gunicorn's parser and `wsgi.create`), and gunicorn's own `gthread` and
`sync` workers, one worker of 4 threads (sync: one process, and a
new connection per request, since it does not keep connections alive). Per cell:
p50 and p90 of the client's request time, the worker's CPU per request (user and
system, psutil) and the client's own CPU per request. Cells alternate round by
round. Everything is loopback only and stopped in a `finally`.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import HOST, log
from bench.driver import HTTP_CLIENTS
from bench.services import free_port

APPS = '''
import falcon

from service.workers import DeadlineWorker


class GunicornParsing(DeadlineWorker):
    """The service's worker with every request parsed by gunicorn (no quickparse)."""

    quick_parsing = False

BODY = b'{"version":517,"role":"user","content":"' + b"x" * 200 + (
    b'","token_count":50,"metadata":{},"created_at":"2026-11-27T06:00:00.000000Z"}')


def wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))])
    return [BODY]


class Message:
    def on_get(self, req, resp, context_id, version):
        resp.data = BODY
        resp.content_type = "application/json"


falcon_app = falcon.App()
falcon_app.add_route("/v1/contexts/{context_id:uuid}/messages/{version:int}", Message())
'''
PATH = "/v1/contexts/01a21bce-2bb6-7e73-ac26-f46d5defe91f/messages/517"
WORKERS = ("service.workers.DeadlineWorker", "floor_apps.GunicornParsing", "gthread", "sync")
TARGETS = {"wsgi": "floor_apps:wsgi", "falcon": "floor_apps:falcon_app"}


def measure(worker: str, app: str, folder: Path, seconds: float, client: str = "http.client") -> dict[str, float]:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-k", worker, "-w", "1", "--threads", "4",
               "-b", f"{HOST}:{port}", "--chdir", str(folder), "--log-level", "warning", TARGETS[app]]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    keep_alive = worker != "sync"
    conn = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
                conn.request("GET", PATH)
                conn.getresponse().read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        (child,) = psutil.Process(server.pid).children()
        conn.close()
        conn = HTTP_CLIENTS[client](port)
        if client == "http.client":
            conn.headers = {}  # as the floor's tables before --http-client: no header of its own

        def one() -> None:
            if not keep_alive:
                conn.close()  # a new connection per request; the next call opens it
            status = conn.call("GET", PATH)[0]
            if status != 200:
                raise RuntimeError(f"{worker} {app}: {status}")

        for _ in range(300):
            one()
        before, client_before = child.cpu_times(), time.process_time()
        latencies = []
        end = time.perf_counter() + seconds
        while (start := time.perf_counter()) < end:
            one()
            latencies.append(time.perf_counter() - start)
        after, client_cpu = child.cpu_times(), time.process_time() - client_before
        n = len(latencies)
        latencies.sort()
        return {
            "requests": n,
            "p50": 1e6 * statistics.median(latencies),
            "p90": 1e6 * latencies[int(0.9 * (n - 1))],
            "user": 1e6 * (after.user - before.user) / n,
            "system": 1e6 * (after.system - before.system) / n,
            "client": 1e6 * client_cpu / n,
        }
    finally:
        if conn is not None:
            conn.close()
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per cell and round (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; cells alternate within each (default 3)")
    parser.add_argument("--http-client", choices=sorted(HTTP_CLIENTS), default="http.client",
                        help="the client: http.client (default, as in the floor's tables) or curl (libcurl)")
    args = parser.parse_args(argv)
    cells = [(worker, app) for worker in WORKERS for app in TARGETS]
    results: dict[tuple[str, str], list[dict[str, float]]] = {cell: [] for cell in cells}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as folder:
        Path(folder, "floor_apps.py").write_text(APPS)
        load = psutil.getloadavg()[0]
        for round_ in range(args.rounds):
            for worker, app in cells if round_ % 2 == 0 else cells[::-1]:
                log(f"round {round_ + 1}: {worker} {app}")
                results[worker, app].append(measure(worker, app, Path(folder), args.seconds, args.http_client))
    print(f"# bench.floor {time.strftime('%Y-%m-%d %H:%M')} UTC: {args.rounds} rounds of {args.seconds:g} s, "
          f"one {args.http_client} client, load average {load:.2f} at start; medians of the rounds")
    print("| worker | app | p50 µs | p90 µs | worker user µs/req | worker system µs/req | client µs/req |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for worker, app in cells:
        rounds = results[worker, app]

        def median(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        print(f"| {worker.rsplit('.', 1)[-1]} | {app} | {median('p50'):.0f} | {median('p90'):.0f} | "
              f"{median('user'):.0f} | {median('system'):.0f} | {median('client'):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
