"""Where the service's own time goes per request, layer by layer.

    python -m bench.profile --op get --seconds 10                  # HTTP under py-spy, then in-process under cProfile
    python -m bench.profile --op all --sampler cprofile            # in-process only (no gunicorn)
    python -m bench.profile --op all --compare-dir /tmp/exp --rounds 6   # paired A/B: this tree vs a copy of it

It starts an embedded PostgreSQL and the service exactly as bench/services.py does
(`python -m service serve`, 2 workers), loads one context of 10,000 messages through
the API (bench/load.py), and then per operation:

1. **HTTP** (`--sampler py-spy`): one client, one keep-alive libcurl connection
   (`http.client`'s with `--http-client http.client`)
   to 127.0.0.1, for `--seconds`, while `py-spy record --rate 1000 --format raw
   --nonblocking` samples every gunicorn worker (after 1 s of warm-up load). py-spy
   leaves out most samples of threads it sees blocked in a system call; those it
   keeps with a waiting leaf (the event loop's select, threads waiting for work) are
   counted as idle. Each other sample is given to the innermost frame that belongs
   to a known layer (stdlib frames count for their caller); samples per layer /
   requests served ≈ µs per request. py-spy does not reach 1 kHz on every thread of
   a busy machine, so read the shares, and the µs as lower bounds.
2. **In-process**: the same requests through the Falcon app built by
   `service.app.create_app` over a `service.queries.Store` on a `Database` (what a
   worker builds), called with a WSGI environ: no HTTP, no gunicorn. First timed
   without a profiler (p50), then under cProfile, whose per-function own time is
   given to layers the same way (C functions count for their caller, except
   orjson and psycopg's wait on the socket, which are layers of their own).
3. **Raw**: the store method alone (bench/raw.py: `get`, `last`, `window`) on its
   own one-connection pool, timed (p50).

"ours" = HTTP p50 - raw p50; HTTP p50 - in-process p50 is gunicorn, the client and
loopback; in-process p50 - raw p50 is our Falcon app around the store call.

With `--compare-dir DIR` (a copy of the repository's `service/` and `sql/`, e.g. with
one candidate change), a second service runs DIR's code on its own database (same
data), and each operation is measured in `--rounds` paired rounds, alternating which
service goes first; the report gives both p50 medians, the median per-round ratio, and
each service's worker CPU per request (`--compare-env NAME=VALUE` instead, or as well:
B gets that environment).
Everything is loopback only, bounded in time, and stopped in a `finally`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable
from uuid import UUID

from bench import load, raw as rawmod, services
from bench.driver import DEFAULT_HTTP_CLIENT, HTTP_CLIENTS
from bench.common import HOST, OUT_DIR, REPO, log

SIZE = 10_000
OPS = ("get", "last50", "window2k", "window8k")

# ---------------------------------------------------------------- the operations


def http_path(op: str, cid: str, rng: random.Random) -> str:
    if op == "get":
        return f"/v1/contexts/{cid}/messages/{rng.randint(1, SIZE)}"
    if op == "last50":
        return f"/v1/contexts/{cid}/messages?order=desc&limit=50"
    if op == "window2k":
        return f"/v1/contexts/{cid}/window?max_tokens=2000"
    if op == "window8k":
        return f"/v1/contexts/{cid}/window?max_tokens=8000"
    raise ValueError(op)


def raw_call(op: str, store: rawmod.RawStore, cid: UUID, rng: random.Random) -> Any:
    if op == "get":
        return rawmod.get(store, cid, rng.randint(1, SIZE))
    if op == "last50":
        return rawmod.last(store, cid, 50)
    if op == "window2k":
        return rawmod.window(store, cid, 2000)
    if op == "window8k":
        return rawmod.window(store, cid, 8000)
    raise ValueError(op)


def timed_loop(call: Callable[[], Any], seconds: float, warmup: int = 50) -> list[float]:
    """Latencies in µs of call() repeated for `seconds` (after `warmup` calls)."""
    for _ in range(warmup):
        call()
    out: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds
    while True:
        started = clock()
        call()
        ended = clock()
        out.append((ended - started) * 1e6)
        if ended >= deadline or len(out) >= 1_000_000:
            return out


def http_load(port: int, op: str, cid: str, seconds: float, seed: int = 1, *, client_kind: str) -> list[float]:
    """One keep-alive client of --http-client's kind (bench/driver.py HTTP_CLIENTS)
    for `seconds`; latencies in µs."""
    rng = random.Random(seed)
    client = HTTP_CLIENTS[client_kind](port)
    client.headers = {"Accept": "application/json"}
    client.open()

    def one() -> None:
        status, body = client.call("GET", http_path(op, cid, rng))
        if status != 200:
            raise RuntimeError(f"{op}: {status} {body[:200]!r}")

    try:
        return timed_loop(one, seconds)
    finally:
        client.close()


def p50(values: list[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------- layers

DBWAIT = "psycopg: Connection.wait (PostgreSQL's answer, libpq C)"
IDLE = "idle (event loop select, threads waiting for work or a client's next request)"
# Leaves of a thread waiting for something to do: not a request's time. A thread
# holding a kept-alive connection waits in _next_request_here's recv (py-spy does
# not see that socket wait as idle); the function's own work around it is a few µs.
_IDLE_LEAVES = ("EpollSelector.select", "PollSelector.select", "Condition.wait", "Event.wait", "Queue.get",
                "SimpleQueue.get", "Thread.join", "_worker (concurrent/futures/thread.py:81)",
                "DeadlineWorker._next_request_here")
PSYCOPG = "psycopg + pool (Python)"
STORE = "store: service/queries, sql.py, db.py"
VALID = "query validation (marshmallow, service/schemas)"
SERIAL = "response: service/http.py send/cacheable (orjson)"
RESOURCE = "resource handler (service/resources)"
MIDDLE = "middleware: request id + access log call"
LOGGING = "logging (stdlib, access line)"
AUTH = "auth middleware (service/auth.py)"
FALCON = "Falcon: routing, Request/Response, middleware loop"
GPARSE = "gunicorn: HTTP parsing (gunicorn/http)"
GWRITE = "gunicorn: environ + response write (http/wsgi.py)"
GWORKER = "gunicorn: worker loop, threads, service/workers.py"
OTHER = "other"

_RULES = (
    ("psycopg/waiting.py", DBWAIT),
    ("psycopg_pool/", PSYCOPG),
    ("psycopg/", PSYCOPG),
    ("psycopg_binary", PSYCOPG),
    ("pgvector/", PSYCOPG),
    ("service/queries/", STORE),
    ("service/sql.py", STORE),
    ("service/db.py", STORE),
    ("marshmallow/", VALID),
    ("service/schemas/", VALID),
    ("service/http.py", SERIAL),
    ("service/resources/", RESOURCE),
    ("service/middleware.py", MIDDLE),
    ("service/logs.py", MIDDLE),
    ("/logging/", LOGGING),
    ("service/auth.py", AUTH),
    ("falcon/", FALCON),
    ("gunicorn/http/wsgi.py", GWRITE),
    ("gunicorn/http/", GPARSE),
    ("gunicorn/", GWORKER),
    ("service/workers.py", GWORKER),
    ("concurrent/futures/", GWORKER),
    ("selectors.py", GWORKER),
)
LAYERS = (GPARSE, GWRITE, GWORKER, FALCON, MIDDLE, LOGGING, AUTH, VALID, RESOURCE, STORE, PSYCOPG, DBWAIT,
          SERIAL, OTHER)


def layer_of_file(path: str, func: str = "") -> str | None:
    """The layer a frame of this file (and function) belongs to; None: count it for its caller."""
    path = path.replace("\\", "/")
    if path.endswith("psycopg/connection.py") and func.rsplit(".", 1)[-1] == "wait":
        # psycopg's C wait_c runs under this frame: poll() on the socket until
        # PostgreSQL answers, plus libpq's reads and writes
        return DBWAIT
    for needle, layer in _RULES:
        if needle in path:
            return layer
    return None


def layer_of_builtin(name: str) -> str | None:
    if "orjson" in name:
        return SERIAL
    if "psycopg" in name and "wait" in name:
        return DBWAIT
    return None


def table(title: str, per_layer: dict[str, float], requests: int, unit_total: float | None = None) -> str:
    """Rows of µs per request and share, for per_layer given in µs over `requests`."""
    idle = per_layer.get(IDLE, 0.0)
    per_layer = {k: v for k, v in per_layer.items() if k != IDLE}
    total = sum(per_layer.values())
    lines = [title, f"{'layer':55} {'µs/req':>8} {'share':>6}"]
    for layer in LAYERS:
        value = per_layer.get(layer, 0.0)
        if value:
            lines.append(f"{layer:55} {value / requests:8.1f} {value / total:6.1%}")
    lines.append(f"{'total (not idle)':55} {total / requests:8.1f} {1:6.0%}")
    if idle:
        lines.append(f"{IDLE:55} {idle / requests:8.1f}   (not counted)")
    return "\n".join(lines)


# ---------------------------------------------------------------- py-spy (HTTP)

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_frame(frame: str) -> tuple[str, str, str]:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), "", ""
    return match["func"], match["file"], match["line"] or ""


def read_raw(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy's raw (collapsed) output: stack (root first) -> samples."""
    stacks: Counter[tuple[str, ...]] = Counter()
    if not path.exists():
        return stacks
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def spy_layers(stacks: Counter[tuple[str, ...]]) -> tuple[dict[str, float], Counter[str], Counter[str]]:
    """(samples per layer, samples per leaf frame, samples per function anywhere on the stack)."""
    layers: dict[str, float] = defaultdict(float)
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        leaf = stack[-1]
        if parse_frame(leaf)[0] in _IDLE_LEAVES or any(leaf.startswith(i) for i in _IDLE_LEAVES if "(" in i):
            layers[IDLE] += count
            continue
        layer = OTHER
        for frame in reversed(stack):
            func, file, _ = parse_frame(frame)
            found = layer_of_file(file, func)
            if found is not None:
                layer = found
                break
        layers[layer] += count
        leaves[leaf] += count
        seen = set()
        for frame in stack:
            func, file, _ = parse_frame(frame)
            key = f"{func} ({file})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
    return layers, leaves, inclusive


def worker_pids(master_pid: int) -> list[int]:
    import psutil

    return [child.pid for child in psutil.Process(master_pid).children(recursive=False)]


def profile_http(svc: services.Service, op: str, cid: str, seconds: float, stamp: str, client_kind: str,
                 native: bool = False) -> tuple[str, float]:
    """py-spy on every worker while one client runs `op`; (report text, HTTP p50 µs).
    native: C frames too (py-spy then stops the process for each sample)."""
    # Every thread and pooled connection warm before sampling.
    http_load(svc.port, op, cid, 1.0, seed=99, client_kind=client_kind)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    assert svc.proc is not None
    spies = []
    outputs = []
    for pid in worker_pids(svc.proc.pid):
        out = OUT_DIR / f"pyspy-{stamp}-{op}-{pid}.txt"
        outputs.append(out)
        spies.append(subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", "1000", "--format", "raw",
             *(["--native"] if native else ["--nonblocking"]),
             "--duration", str(int(seconds + 2)), "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
    try:
        time.sleep(1.0)  # py-spy attaches
        latencies = http_load(svc.port, op, cid, seconds, client_kind=client_kind)
    finally:
        for proc in spies:
            try:
                proc.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=10)
    stacks: Counter[tuple[str, ...]] = Counter()
    for out in outputs:
        stacks.update(read_raw(out))
    layers, leaves, inclusive = spy_layers(stacks)
    n = len(latencies)
    per_layer_us = {k: v * 1000.0 for k, v in layers.items()}  # 1000 Hz: one sample is 1000 µs
    text = [
        f"HTTP {op}: {n} requests in {seconds:g} s, p50 {p50(latencies):.0f} µs, "
        f"p90 {statistics.quantiles(latencies, n=10)[-1]:.0f} µs; {sum(layers.values()):.0f} samples "
        f"(1 kHz) in the workers",
        table(f"sampled µs per request in the gunicorn workers, all threads ({op})", per_layer_us, n),
        "top leaf frames (samples/request × 1000 = µs):",
    ]
    for frame, count in leaves.most_common(25):
        text.append(f"  {count * 1000.0 / n:7.1f} µs  {frame}")
    text.append("top functions, inclusive (µs/request):")
    for frame, count in inclusive.most_common(40):
        text.append(f"  {count * 1000.0 / n:7.1f} µs  {frame}")
    return "\n".join(text), p50(latencies)


# ---------------------------------------------------------------- in-process (WSGI, cProfile)


class InProcess:
    """The worker's app in this process: create_app over a Store on a Database."""

    def __init__(self, url: str, log_path: Path) -> None:
        from service.app import create_app
        from service.config import Settings
        from service.db import Database
        from service.queries import Store
        from service.tokens import ESTIMATE, Tokenizer, estimate_tokens

        # The access line goes where a worker's goes (a file), in the worker's format.
        handler = logging.FileHandler(log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        settings = Settings(database_url=url)
        self.db = Database(settings, url)
        self.db.pool.open(wait=True)
        self.app = create_app(settings, Store.build(settings, self.db, Tokenizer(ESTIMATE, estimate_tokens)))

    def close(self) -> None:
        self.db.close()

    def caller(self, op: str, cid: str, rng: random.Random) -> Callable[[], None]:
        import falcon.testing

        app = self.app
        status_seen: list[str] = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> None:
            status_seen.append(status)

        def one() -> None:
            path, _, query = http_path(op, cid, rng).partition("?")
            environ = falcon.testing.create_environ(path=path, query_string=query, host=HOST, port=8000,
                                                    headers={"Accept": "application/json"})
            status_seen.clear()
            body = app(environ, start_response)
            b"".join(body)
            if hasattr(body, "close"):
                body.close()
            if not status_seen or not status_seen[0].startswith("200"):
                raise RuntimeError(f"{op}: {status_seen}")

        return one


def environ_cost(seconds: float) -> float:
    """p50 µs of building a WSGI environ with falcon.testing (not the app's cost)."""
    import falcon.testing

    return p50(timed_loop(lambda: falcon.testing.create_environ(
        path="/v1/contexts/x/window", query_string="max_tokens=2000", host=HOST, port=8000,
        headers={"Accept": "application/json"}), seconds))


def cprofile_layers(stats: pstats.Stats) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Own time (µs) per layer; C functions and unknown files count for their callers."""
    raw = stats.stats  # type: ignore[attr-defined]
    layers: dict[str, float] = defaultdict(float)

    def own_layer(func: tuple[str, int, str]) -> str | None:
        file, _, name = func
        if file == "~":
            return layer_of_builtin(name)
        return layer_of_file(file, name)

    def give(func: tuple[str, int, str], seconds: float, depth: int = 0) -> None:
        layer = own_layer(func)
        if layer is not None:
            layers[layer] += seconds
            return
        callers = raw.get(func, (0, 0, 0, 0, {}))[4]
        weight = sum(entry[2] for entry in callers.values())
        if depth > 30 or not callers or weight <= 0:
            layers[OTHER] += seconds
            return
        for caller, entry in callers.items():
            give(caller, seconds * entry[2] / weight, depth + 1)

    top = []
    for func, (_cc, _nc, tt, _ct, _callers) in raw.items():
        give(func, tt)
        file, line, name = func
        top.append((tt, f"{name} ({file}:{line})" if file != "~" else name))
    top.sort(reverse=True)
    return {k: v * 1e6 for k, v in layers.items()}, top


def profile_inprocess(app: InProcess, op: str, cid: str, seconds: float, use_cprofile: bool) -> tuple[str, float]:
    rng = random.Random(2)
    call = app.caller(op, cid, rng)
    latencies = timed_loop(call, seconds)
    text = [f"in-process {op}: {len(latencies)} calls, p50 {p50(latencies):.0f} µs (includes building the "
            f"environ with falcon.testing, see below)"]
    if use_cprofile:
        profiler = cProfile.Profile()
        count = 0
        deadline = time.perf_counter() + seconds
        profiler.enable()
        while time.perf_counter() < deadline:
            call()
            count += 1
        profiler.disable()
        stats = pstats.Stats(profiler)
        per_layer, top = cprofile_layers(stats)
        text.append(table(f"cProfile own time per request, in-process ({op}, {count} calls; cProfile inflates "
                          f"Python-heavy layers, read shares)", per_layer, count))
        text.append("top functions by own time (µs/request under cProfile):")
        for tt, name in top[:25]:
            text.append(f"  {tt * 1e6 / count:7.1f} µs  {name}")
        buffer = io.StringIO()
        stats.stream = buffer  # type: ignore[attr-defined]
        stats.sort_stats("cumulative").print_stats(30)
        text.append("cumulative (pstats, whole run):")
        text.append("\n".join(buffer.getvalue().splitlines()[6:40]))
    return "\n".join(text), p50(latencies)


def raw_p50(url: str, op: str, cid: str, seconds: float) -> float:
    store = rawmod.connect(url)
    try:
        rng = random.Random(3)
        key = UUID(cid)
        return p50(timed_loop(lambda: raw_call(op, store, key, rng), seconds))
    finally:
        store.close()


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--op", default="all", choices=(*OPS, "all"))
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (default 10)")
    parser.add_argument("--sampler", default="py-spy", choices=("py-spy", "cprofile"),
                        help="py-spy: HTTP under py-spy and in-process under cProfile; cprofile: no py-spy")
    parser.add_argument("--native", action="store_true",
                        help="py-spy --native (C frames; py-spy then stops the workers at each sample)")
    parser.add_argument("--log-level", default="info", help="the service's LOG_LEVEL (default info, as deployed)")
    parser.add_argument("--service-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--compare-dir", type=Path, help="paired A/B against a copy of service/ and sql/ in DIR")
    parser.add_argument("--compare-env", action="append", default=[], metavar="NAME=VALUE",
                        help="paired A/B: more environment for B only (B is this tree unless --compare-dir)")
    parser.add_argument("--rounds", type=int, default=6, help="paired rounds per operation (A/B)")
    parser.add_argument("--http-client", choices=sorted(HTTP_CLIENTS), default=DEFAULT_HTTP_CLIENT,
                        help="the client of the HTTP measurements: curl (libcurl through pycurl, the default) "
                             "or http.client")
    parser.add_argument("--own-rounds", type=int, default=1,
                        help="rounds of the HTTP / in-process / raw p50s per operation (medians reported)")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 120:
        parser.error("--seconds must be within (0, 120]")
    for item in (*args.service_env, *args.compare_env):
        if "=" not in item:
            parser.error(f"expected NAME=VALUE, not {item!r}")
    if not 1 <= args.rounds <= 40 or not 1 <= args.own_rounds <= 40:
        parser.error("--rounds and --own-rounds must be within 1..40")
    return args


def service_args(args: argparse.Namespace, extra: list[str] = ()) -> SimpleNamespace:
    return SimpleNamespace(workers=2, threads=None, log_level=args.log_level,
                           service_env=[*args.service_env, *extra])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ops = OPS if args.op == "all" else (args.op,)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="cs-profile-"))
    embedded = None
    started: list[services.Service] = []
    report: list[str] = [f"# bench.profile {stamp}: ops {', '.join(ops)}, {args.seconds:g} s each, "
                         f"HTTP client {args.http_client}, load average {os.getloadavg()[0]:.2f}"]
    try:
        embedded, url = services.start_embedded(home)
        svc = services.Service("current", REPO, url, home, OUT_DIR / f"profile-{stamp}.log")
        started.append(svc)
        svc.start(service_args(args))
        assert svc.api is not None
        cid = load.load_context(svc.api, SIZE, seed=2)
        exp = None
        if args.compare_dir is not None or args.compare_env:
            exp_url = services.create_database(url, "context_store_profile_exp")
            code = args.compare_dir.resolve() if args.compare_dir is not None else REPO
            exp = services.Service("exp", code, exp_url, home / "exp", OUT_DIR / f"profile-{stamp}-exp.log")
            started.append(exp)
            exp.start(service_args(args, args.compare_env), require_own_code=args.compare_dir is not None)
            assert exp.api is not None
            exp_cid = load.load_context(exp.api, SIZE, seed=2)
            services.vacuum(exp_url)
        services.vacuum(url)
        log(f"loaded {SIZE} messages into {cid}")

        if exp is not None:
            report.append(compare(svc, cid, exp, exp_cid, ops, args))
        else:
            app = InProcess(url, OUT_DIR / f"profile-{stamp}-inprocess.log")
            try:
                # The three p50s of an operation back to back, without any profiler:
                # minutes apart, a shared machine's load would differ between them.
                for round_ in range(args.own_rounds):
                    for op in ops:
                        log(f"p50 of HTTP, in-process and raw: {op} (round {round_ + 1} of {args.own_rounds})")
                        over_http = p50(http_load(svc.port, op, cid, args.seconds, seed=5 + round_,
                                                   client_kind=args.http_client))
                        report.append(f"summary-http {op} {over_http:.0f}")
                        calls = timed_loop(app.caller(op, cid, random.Random(6 + round_)), args.seconds)
                        report.append(f"summary-inprocess {op} {p50(calls):.0f}")
                        report.append(f"summary-raw {op} {raw_p50(url, op, cid, args.seconds):.0f}")
                if args.sampler == "py-spy":
                    for op in ops:
                        log(f"HTTP + py-spy: {op}")
                        report.append(profile_http(svc, op, cid, args.seconds, stamp, args.http_client, args.native)[0])
                        report.append("")
                report.append(f"building a WSGI environ (falcon.testing, part of every in-process call): "
                              f"p50 {environ_cost(1.0):.1f} µs")
                for op in ops:
                    log(f"in-process + cProfile: {op}")
                    report.append(profile_inprocess(app, op, cid, args.seconds, True)[0])
                    report.append("")
            finally:
                app.close()
            report.append(summary(report))
    finally:
        for service in reversed(started):
            service.stop()
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(home, ignore_errors=True)
    text = "\n".join(report)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


def summary(report: list[str]) -> str:
    """The p50 table: HTTP, in-process, raw and the differences; with several
    rounds (--own-rounds), medians of the rounds, each difference taken within
    its round (the three run back to back), and the per-round HTTP - raw."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for line in report:
        if line.startswith("summary-"):
            kind, op, value = line.split()
            values[(kind.removeprefix("summary-"), op)].append(float(value))
    ops = sorted({op for _, op in values}, key=lambda o: OPS.index(o))
    rounds = max(len(v) for v in values.values())
    lines = [f"p50 µs per operation (one client; compare within a row only; median of {rounds} round(s))",
             f"{'op':10} {'HTTP':>7} {'in-proc':>8} {'raw':>7} {'HTTP-raw':>9} {'HTTP-inproc':>12} {'inproc-raw':>11}"
             "  HTTP-raw per round"]
    nan = [float("nan")]
    for op in ops:
        h, i, r = (values.get((k, op), nan) for k in ("http", "inprocess", "raw"))
        ours = [a - b for a, b in zip(h, r)]
        lines.append(f"{op:10} {statistics.median(h):7.0f} {statistics.median(i):8.0f} {statistics.median(r):7.0f} "
                     f"{statistics.median(ours):9.0f} {statistics.median(a - b for a, b in zip(h, i)):12.0f} "
                     f"{statistics.median(a - b for a, b in zip(i, r)):11.0f}  "
                     + " ".join(f"{v:.0f}" for v in ours))
    return "\n".join(lines)


def worker_cpu(svc: services.Service) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by the service's workers."""
    import psutil

    assert svc.proc is not None
    user = system = 0.0
    for child in psutil.Process(svc.proc.pid).children(recursive=False):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        user += times.user
        system += times.system
    return user, system


def compare(a: services.Service, a_cid: str, b: services.Service, b_cid: str, ops: tuple[str, ...],
            args: argparse.Namespace) -> str:
    """Paired rounds: A then B, B then A, ...; p50 medians and the median ratio B/A,
    and the workers' CPU per request (user + system, psutil), which a busy machine
    disturbs far less than latency."""
    lines = [f"A/B: A = {a.module_file}, B = {b.module_file} with {' '.join(args.compare_env) or 'the same environment'}"
             f"; {args.rounds} paired rounds of {args.seconds:g} s",
             f"{'op':10} {'A p50':>7} {'B p50':>7} {'B/A':>6} {'A cpu/req':>10} {'B cpu/req':>10} {'B-A cpu':>8}"
             "  per-round p50 B/A | per-round cpu B-A (µs)"]
    system_share: dict[str, list[float]] = {a.name: [], b.name: []}
    for op in ops:
        pairs = []
        cpus = []
        for index in range(args.rounds):
            order = [(a, a_cid), (b, b_cid)] if index % 2 == 0 else [(b, b_cid), (a, a_cid)]
            got = {}
            cpu = {}
            for svc, cid in order:
                before = worker_cpu(svc)
                latencies = http_load(svc.port, op, cid, args.seconds, seed=index, client_kind=args.http_client)
                after = worker_cpu(svc)
                cpu[svc.name] = (after[0] - before[0] + after[1] - before[1]) * 1e6 / len(latencies)
                system_share[svc.name].append((after[1] - before[1]) / max(1e-9, sum(after) - sum(before)))
                got[svc.name] = p50(latencies)
            pairs.append((got[a.name], got[b.name]))
            cpus.append((cpu[a.name], cpu[b.name]))
        ratios = [bp / ap for ap, bp in pairs]
        diffs = [bc - ac for ac, bc in cpus]
        lines.append(f"{op:10} {statistics.median(p[0] for p in pairs):7.0f} "
                     f"{statistics.median(p[1] for p in pairs):7.0f} {statistics.median(ratios):6.3f} "
                     f"{statistics.median(c[0] for c in cpus):10.0f} {statistics.median(c[1] for c in cpus):10.0f} "
                     f"{statistics.median(diffs):+8.0f}  "
                     + " ".join(f"{r:.2f}" for r in ratios) + " | " + " ".join(f"{d:+.0f}" for d in diffs))
        log(lines[-1])
    lines.append(f"system (kernel) share of the workers' CPU, median: A {statistics.median(system_share[a.name]):.0%}, "
                 f"B {statistics.median(system_share[b.name]):.0%}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
