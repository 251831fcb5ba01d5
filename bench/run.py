"""Benchmark of Context Store: the service under gunicorn, and its own SQL without HTTP.

    python -m bench.run --quick            # smoke run, about 1-2 minutes
    python -m bench.run                    # default run, under 10 minutes on 2 cores
    python -m bench.run --full             # adds a 1,000,000-message context (window only)
    python -m bench.run --write-results    # also rewrites bench/RESULTS.md

What it does, in order (see bench/README.md for the columns):

1. starts an embedded PostgreSQL on a fresh temporary CONTEXT_STORE_HOME, then the
   service under gunicorn (2 workers) on a free loopback port with DATABASE_URL
   pointing at that server, and waits for /health;
2. bulk-loads contexts of 1,000 / 10,000 / 100,000 messages through the API in
   batches of 1000, and a chain of 32 forks;
3. runs every operation at 1 and 8 concurrent clients, each client its own process
   with one keep-alive HTTP/1.1 connection to 127.0.0.1 ("service"), then the same
   named SQL statements straight through psycopg, one connection per process ("raw");
   every cell is bounded by a request count and a duration;
4. prints the table, the service/raw ratios, the ratio targets of issue 5 with
   pass/fail, worker memory and the database size per million messages, and writes
   them as markdown under bench/out/ (and bench/RESULTS.md with --write-results);
5. stops gunicorn (SIGTERM to the master) and the embedded server, whatever happened.
"""

from __future__ import annotations

import argparse
import http.client
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from bench import driver  # noqa: E402
from service.sql import QUERIES  # noqa: E402  (loaded once, before the service starts)

OUT_DIR = REPO / "bench" / "out"
RESULTS_MD = REPO / "bench" / "RESULTS.md"
HOST = "127.0.0.1"
FORK_DEPTHS = (1, 8, 32)
FORK_SEGMENT_MESSAGES = 10  # appended at each level of the fork chain
FORK_WINDOW_TOKENS = 8000
LOAD_BATCH = 1000


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark Context Store under gunicorn against its own SQL run directly.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: sizes 1000,10000, 0.5 s per cell (about 1-2 minutes)")
    parser.add_argument("--full", action="store_true",
                        help="also load a 1,000,000-message context and measure the window on it")
    parser.add_argument("--sizes", type=_int_list, default=None,
                        help="context sizes in messages (default 1000,10000,100000; --quick 1000,10000)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per cell, at most (default 3; --quick 0.5)")
    parser.add_argument("--max-requests", type=int, default=None,
                        help="requests per cell across all clients, at most (default 20000; --quick 2000)")
    parser.add_argument("--clients", type=_int_list, default=[1, 8],
                        help="concurrency levels (default 1,8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (WEB_CONCURRENCY, default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per gunicorn worker (GUNICORN_THREADS; default: the service's)")
    parser.add_argument("--service-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the service, e.g. DB_POOL_CHECK=false (repeatable)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="the service's LOG_LEVEL (default info, as deployed; logs go to bench/out/)")
    parser.add_argument("--only", type=_str_list, default=None,
                        help="run only operations whose key starts with one of these "
                             "(create, append, list, window, get, fork, forkwin)")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw SQL cells")
    parser.add_argument("--no-explain", action="store_true",
                        help="skip EXPLAIN ANALYZE of the read statements on the largest context")
    parser.add_argument("--write-results", action="store_true", help="also rewrite bench/RESULTS.md")
    parser.add_argument("--rounds", type=int, default=None,
                        help="paired rounds for the size-ratio targets: the small and the large context "
                             "alternate, 1 client, 1 s each, and the median of the per-round p50 ratios "
                             "is reported (default 5; --quick 2; 0 to use the table's cells)")
    args = parser.parse_args(argv)
    args.sizes = sorted(set(args.sizes or ([1000, 10000] if args.quick else [1000, 10000, 100000])))
    args.duration = args.duration if args.duration is not None else (0.5 if args.quick else 3.0)
    args.max_requests = args.max_requests if args.max_requests is not None else (2000 if args.quick else 20000)
    args.clients = sorted(set(args.clients))
    args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    if not 0 <= args.rounds <= 50:
        parser.error("--rounds: 0..50")
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--sizes: give positive message counts")
    if args.duration <= 0 or args.duration > 120:
        parser.error("--duration: 0 < seconds <= 120")
    if not 1 <= args.max_requests <= 1_000_000:
        parser.error("--max-requests: 1..1000000")
    if not args.clients or min(args.clients) < 1 or max(args.clients) > 64:
        parser.error("--clients: 1..64")
    for item in args.service_env:
        if "=" not in item:
            parser.error(f"--service-env {item!r}: expected NAME=VALUE")
    return args


def _int_list(raw: str) -> list[int]:
    return [int(x.replace("_", "")) for x in raw.split(",") if x.strip()]


def _str_list(raw: str) -> list[str]:
    return [x.strip() for x in raw.split(",") if x.strip()]


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tiktoken_dir() -> str | None:
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return os.environ["TIKTOKEN_CACHE_DIR"]
    for candidate in (REPO.parent / "shared" / "tiktoken", Path("/work/shared/tiktoken")):
        if candidate.is_dir():
            return str(candidate)
    return None


def start_service(args, database_url: str, home: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(
        HOST=HOST,
        PORT=str(port),
        WEB_CONCURRENCY=str(args.workers),
        DATABASE_URL=database_url,
        CONTEXT_STORE_HOME=str(home),
        LOG_LEVEL=args.log_level,
    )
    if args.threads is not None:
        env["GUNICORN_THREADS"] = str(args.threads)
    vocab = tiktoken_dir()
    if vocab:
        env["TIKTOKEN_CACHE_DIR"] = vocab
    for item in args.service_env:
        name, value = item.split("=", 1)
        env[name] = value
    log_file = open(log_path, "ab")
    try:
        # its own session: a Ctrl-C here reaches the orchestrator only, which then
        # stops gunicorn in order (SIGTERM to the master)
        return subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True,
        )
    finally:
        log_file.close()


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        log("gunicorn did not stop within 30 s; killing its process group")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class Api:
    """The orchestrator's own client, for loading and probing (not measured)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=120)

    def call(self, method: str, path: str, body: Any = None, expected: int = 200) -> Any:
        data = None if body is None else orjson.dumps(body)
        for attempt in range(2):  # one reconnect when keep-alive expired between calls
            try:
                self.conn.request(method, path, body=data, headers=driver.HEADERS)
                response = self.conn.getresponse()
                payload = response.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                if attempt:
                    raise
        if response.status != expected:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")
        return orjson.loads(payload) if payload else None

    def close(self) -> None:
        self.conn.close()


def wait_for_health(proc: subprocess.Popen, port: int, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode} before /health answered")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/health")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status == 200:
                return orjson.loads(body)
            last = f"{response.status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"/health did not answer 200 within {timeout:.0f} s ({last})")


class Clients:
    """The load-driving processes, started once and reused by every cell."""

    def __init__(self, count: int, port: int, database_url: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=driver.client_main, args=(child, port, database_url), daemon=True)
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


class CellFailed(RuntimeError):
    pass


# ---------------------------------------------------------------- data


def fmt_n(n: int) -> str:
    return f"{n:,}"


def load_context(api: Api, size: int, seed: int) -> str:
    context = api.call("POST", "/v1/contexts", {"metadata": {"bench": f"size-{size}"}}, 201)
    cid = context["id"]
    batches = math.ceil(size / LOAD_BATCH)
    for index in range(batches):
        count = min(LOAD_BATCH, size - index * LOAD_BATCH)
        batch = driver.message_batch(count, seed * 1_000_003 + index, explicit_tokens=True)
        api.call("POST", f"/v1/contexts/{cid}/messages", {"messages": batch}, 201)
    return cid


def build_fork_chain(api: Api, root: str, depth: int) -> dict[int, str]:
    """Forks of forks: level d is a fork of level d-1 with FORK_SEGMENT_MESSAGES of its own."""
    chain: dict[int, str] = {}
    parent = root
    for level in range(1, depth + 1):
        fork = api.call("POST", f"/v1/contexts/{parent}/forks", {}, 201)
        batch = driver.message_batch(FORK_SEGMENT_MESSAGES, 7_000_000 + level, explicit_tokens=True)
        api.call("POST", f"/v1/contexts/{fork['id']}/messages", {"messages": batch}, 201)
        chain[level] = parent = fork["id"]
    return chain


# ---------------------------------------------------------------- the plan


@dataclass
class Operation:
    key: str  # stable id, used by --only and the ratio checks
    label: str  # what the table shows
    op: str  # driver operation
    msgs: int | None  # messages written or returned per request (None: not applicable)
    args: Callable[[int], list[dict[str, Any]]]  # clients -> per-client args


@dataclass
class Result:
    requests: int
    errors: int
    wall: float
    latencies: list[float]
    first_error: str | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.wall if self.wall > 0 else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        index = max(0, math.ceil(q * len(self.latencies)) - 1)
        return self.latencies[index] * 1000.0


@dataclass
class Run:
    args: argparse.Namespace
    started: datetime
    results: dict[tuple[str, str, int], Result] = field(default_factory=dict)
    operations: list[Operation] = field(default_factory=list)
    load_rate: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    explain: list[tuple[str, str]] = field(default_factory=list)
    # (large key, small key) -> per-round p50 ratios, measured back to back
    paired: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def plan(api: Api, sizes: list[int], contexts: dict[int, str], heads: dict[int, int],
         chain: dict[int, str], window_only: list[int]) -> list[Operation]:
    ops: list[Operation] = []

    def fresh(batch: int, explicit: bool) -> Callable[[int], list[dict[str, Any]]]:
        def make(clients: int) -> list[dict[str, Any]]:
            # one fresh context per client: appends to different contexts never wait
            out = []
            for i in range(clients):
                cid = api.call("POST", "/v1/contexts", {"metadata": {"bench": f"append-{batch}"}}, 201)["id"]
                out.append({"context_id": cid, "batch_size": batch, "seed": 100 + i, "explicit_tokens": explicit})
            return out
        return make

    def same(**kw: Any) -> Callable[[int], list[dict[str, Any]]]:
        return lambda clients: [dict(kw) for _ in range(clients)]

    def returned(path: str) -> int:
        return len(api.call("GET", path)["data"])

    ops.append(Operation("create", "create context", "create", None, same()))
    ops.append(Operation("append1", "append 1 msg", "append", 1, fresh(1, False)))
    ops.append(Operation("append50", "append 50 msgs", "append", 50, fresh(50, False)))
    ops.append(Operation("append1000", "append 1000 msgs (token_count given)", "append", 1000, fresh(1000, True)))
    for size in sizes + window_only:
        cid = contexts[size]
        n = fmt_n(size)
        if size not in window_only:
            ops.append(Operation(f"list@{size}", f"last 50 of {n}", "list",
                                 returned(f"/v1/contexts/{cid}/messages?order=desc&limit=50"),
                                 same(context_id=cid, limit=50)))
        for tokens in (2000, 8000):
            ops.append(Operation(f"window{tokens // 1000}k@{size}", f"window {tokens // 1000}k tok of {n}",
                                 "window", returned(f"/v1/contexts/{cid}/window?max_tokens={tokens}"),
                                 same(context_id=cid, max_tokens=tokens)))
        if size not in window_only:
            ops.append(Operation(f"get@{size}", f"get random version of {n}", "get", 1,
                                 same(context_id=cid, head=heads[size])))
    for size in sorted({sizes[0], sizes[-1]}):
        ops.append(Operation(f"fork@{size}", f"fork of {fmt_n(size)}", "fork", None,
                             same(parent_id=contexts[size])))
    for depth, cid in chain.items():
        ops.append(Operation(f"forkwin@d{depth}", f"window 8k tok, fork depth {depth}", "window",
                             returned(f"/v1/contexts/{cid}/window?max_tokens={FORK_WINDOW_TOKENS}"),
                             same(context_id=cid, max_tokens=FORK_WINDOW_TOKENS)))
    return ops


def measure(run: Run, clients: Clients, operation: Operation, mode: str, concurrency: int) -> Result:
    args = run.args
    per_client = max(1, math.ceil(args.max_requests / concurrency))
    specs = [
        {"mode": mode, "op": operation.op, "args": a, "max_requests": per_client,
         "duration": args.duration, "seed": 1000 * concurrency + i}
        for i, a in enumerate(operation.args(concurrency))
    ]
    for i, spec in enumerate(specs):
        spec["args"].setdefault("seed", 100 + i)
    try:
        answers = clients.run(specs, args.duration)
    except CellFailed as exc:
        log(f"{operation.key} {mode} x{concurrency} failed to start: {exc.args[0].strip().splitlines()[-1]}")
        return Result(0, concurrency, 0.0, [], exc.args[0].strip().splitlines()[-1])
    latencies = array("d")
    errors, first_error = 0, None
    for answer in answers:
        latencies.frombytes(answer["latencies"])
        errors += answer["errors"]
        first_error = first_error or answer["first_error"]
    wall = max(a["end"] for a in answers) - min(a["start"] for a in answers)
    result = Result(len(latencies), errors, wall, sorted(latencies), first_error)
    if errors:
        log(f"{operation.key} {mode} x{concurrency}: {errors} errors, first: {first_error}")
    return result


def size_pairs(run: Run) -> list[tuple[str, str]]:
    """(large key, small key) of every size-ratio target whose cells this run has."""
    sizes = run.args.sizes
    small, large = sizes[0], sizes[-1]
    bigs = [large] + ([1_000_000] if large != 1_000_000 else [])
    pairs = []
    for big in bigs:
        for prefix in ("window2k", "window8k", "list", "get", "fork"):
            pairs.append((f"{prefix}@{big}", f"{prefix}@{small}"))
    keys = {o.key for o in run.operations}
    return [(a, b) for a, b in pairs if a in keys and b in keys]


def measure_pairs(run: Run, clients: Clients) -> None:
    """The size-ratio targets compare two p50s; measured an hour apart on a shared
    2-core machine they swing by half. Here the two contexts alternate, one client,
    1 s each, and each round gives one ratio."""
    rounds = run.args.rounds
    if not rounds:
        return
    by_key = {o.key: o for o in run.operations}
    short = argparse.Namespace(**{**vars(run.args), "duration": 1.0})
    paired_run = Run(short, run.started)
    for large, small in size_pairs(run):
        ratios = []
        for _ in range(rounds):
            b = measure(paired_run, clients, by_key[small], "http", 1)
            a = measure(paired_run, clients, by_key[large], "http", 1)
            if a.requests and b.requests:
                ratios.append(a.pct(0.5) / b.pct(0.5))
        run.paired[(large, small)] = ratios
        log(f"paired {large} / {small}: " + ", ".join(f"{r:.2f}" for r in ratios))


# ---------------------------------------------------------------- database facts


def database_facts(url: str, largest: str, largest_size: int, chain: dict[int, str], explain: bool):
    import psycopg

    facts: dict[str, Any] = {}
    plans: list[tuple[str, str]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        facts["pg_version"] = conn.execute("select version()").fetchone()[0]
        facts["pg_settings"] = ", ".join(
            f"{name}={conn.execute(f'show {name}').fetchone()[0]}"
            for name in ("shared_buffers", "work_mem", "synchronous_commit", "fsync", "jit")
        )
        rows, table, indexes, total = conn.execute(
            "select count(*), pg_relation_size('messages'), pg_indexes_size('messages'),"
            " pg_total_relation_size('messages') from messages"
        ).fetchone()
        facts["messages_rows"] = rows
        facts["messages_bytes"] = {"heap": table, "indexes": indexes, "total": total}
        if explain:
            tenant = driver.TENANT
            from uuid import UUID

            cid = UUID(largest)
            cases = [
                (f"get_window max_tokens=8000 on {fmt_n(largest_size)} messages", QUERIES.get_window,
                 dict(tenant=tenant, context_id=cid, max_tokens=8000, pin_system=False,
                      as_of_version=None, as_of=None)),
                (f"list_messages_desc limit=51 on {fmt_n(largest_size)} messages", QUERIES.list_messages_desc,
                 dict(tenant=tenant, context_id=cid, limit=51, after=0, before=2**62,
                      as_of_version=None, as_of=None, include_embedding=False)),
                (f"get_message version={largest_size // 2} on {fmt_n(largest_size)} messages", QUERIES.get_message,
                 dict(tenant=tenant, context_id=cid, version=largest_size // 2, include_embedding=False)),
            ]
            if chain:
                depth = max(chain)
                cases.append((f"get_window max_tokens=8000 on a fork of depth {depth}", QUERIES.get_window,
                              dict(tenant=tenant, context_id=UUID(chain[depth]), max_tokens=8000,
                                   pin_system=False, as_of_version=None, as_of=None)))
            for title, statement, params in cases:
                try:
                    for _ in range(3):  # warm the cache and the plan first
                        statement.run(conn, **params)
                    text = "\n".join(r[0] for r in conn.execute(
                        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement.text, params).fetchall())
                    plans.append((title, text + "\n" + plan_cache(url, statement, params)))
                except psycopg.Error as exc:  # e.g. sql/ edited since the service started
                    log(f"EXPLAIN {statement.name} failed: {exc}")
                    plans.append((title, f"failed: {type(exc).__name__}: {exc}"))
    return facts, plans


def plan_cache(url: str, statement, params: dict[str, Any], runs: int = 20) -> str:
    """How PostgreSQL's plan cache treats the statement once psycopg prepares it, as
    the service's connections do (prepare_threshold 5): generic plans are reused,
    custom plans are planned again on every execution."""
    conn = driver.raw_connect(url)  # a fresh session: this statement is its only prepared one
    try:
        for _ in range(runs):
            statement.run(conn, **params)
            conn.commit()
        rows = conn.execute("select generic_plans, custom_plans from pg_prepared_statements").fetchall()
        conn.commit()
    finally:
        conn.close()
    if len(rows) != 1:
        return f"Plan cache after {runs} runs: {len(rows)} prepared statements (expected 1)"
    generic, custom = rows[0]
    return (f"Plan cache over {runs} runs (psycopg prepares from the 6th): {generic} generic plans (reused), "
            f"{custom} custom plans (each planned anew)")


def worker_memory(proc: subprocess.Popen) -> list[tuple[str, int, int]]:
    """(process, RSS, PSS): RSS counts pages shared copy-on-write with the master (the
    tokenizer's vocabulary among them) in every process; PSS splits them."""
    import psutil

    def sizes(p: psutil.Process) -> tuple[int, int]:
        full = p.memory_full_info()
        return full.rss, getattr(full, "pss", full.rss)

    master = psutil.Process(proc.pid)
    out = [(f"master {master.pid}", *sizes(master))]
    for child in master.children(recursive=False):
        try:
            out.append((f"worker {child.pid}", *sizes(child)))
        except psutil.Error:
            pass
    return out


def machine() -> dict[str, str]:
    import psutil

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    return {
        "cores": str(os.cpu_count()),
        "cpu": model or "unknown",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "load": ", ".join(f"{x:.2f}" for x in load),
    }


# ---------------------------------------------------------------- reporting


def _f(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def table_rows(run: Run) -> tuple[list[str], list[list[str]]]:
    header = ["operation", "clients", "svc req/s", "svc msg/s", "svc p50 ms", "svc p99 ms",
              "raw req/s", "raw p50 ms", "raw p99 ms", "svc/raw", "errors"]
    rows = []
    for operation in run.operations:
        for concurrency in run.args.clients:
            svc = run.results.get((operation.key, "http", concurrency))
            raw = run.results.get((operation.key, "raw", concurrency))
            if svc is None and raw is None:
                continue
            msgs = svc.rps * operation.msgs if (svc and operation.msgs) else None
            ratio = svc.rps / raw.rps if (svc and raw and raw.rps) else None
            errors = (svc.errors if svc else 0) + (raw.errors if raw else 0)
            rows.append([
                operation.label, str(concurrency),
                _f(svc.rps if svc else None), _f(msgs), _f(svc.pct(0.5) if svc else None, 2),
                _f(svc.pct(0.99) if svc else None, 2),
                _f(raw.rps if raw else None), _f(raw.pct(0.5) if raw else None, 2),
                _f(raw.pct(0.99) if raw else None, 2), _f(ratio, 2), str(errors),
            ])
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def checks(run: Run) -> list[tuple[str, str, bool | None]]:
    """(what, measured, passed) for each target of issue 5; passed None when not measured."""
    results, sizes = run.results, run.args.sizes
    small, large = sizes[0], sizes[-1]
    out: list[tuple[str, str, bool | None]] = []

    def get(key: str, mode: str, clients: int) -> Result | None:
        r = results.get((key, mode, clients))
        return r if r is not None and r.requests else None

    def p50_ratio(what: str, key_large: str, key_small: str) -> None:
        rounds = run.paired.get((key_large, key_small))
        if rounds:
            ratio = statistics.median(rounds)
            spread = ", ".join(f"{r:.2f}" for r in rounds)
            out.append((what, f"{ratio:.2f}x (median of {len(rounds)} paired rounds: {spread}; target <= 1.30x)",
                        ratio <= 1.3))
            return
        a, b = get(key_large, "http", 1), get(key_small, "http", 1)
        if a is None or b is None:
            out.append((what, "not measured", None))
            return
        ratio = a.pct(0.5) / b.pct(0.5)
        out.append((what, f"{ratio:.2f}x ({a.pct(0.5):.2f} ms vs {b.pct(0.5):.2f} ms; target <= 1.30x)",
                    ratio <= 1.3))

    vs = f"{fmt_n(large)} vs {fmt_n(small)} messages, p50 at 1 client"
    for tokens in ("2k", "8k"):
        p50_ratio(f"window {tokens} tok, {vs}", f"window{tokens}@{large}", f"window{tokens}@{small}")
    p50_ratio(f"last 50, {vs}", f"list@{large}", f"list@{small}")
    p50_ratio(f"get by version, {vs}", f"get@{large}", f"get@{small}")
    p50_ratio(f"fork, {vs}", f"fork@{large}", f"fork@{small}")
    if any(key == f"window2k@{1_000_000}" for key, _, _ in results) and large != 1_000_000:
        for tokens in ("2k", "8k"):
            p50_ratio(f"window {tokens} tok, 1,000,000 vs {fmt_n(small)} messages, p50 at 1 client",
                      f"window{tokens}@1000000", f"window{tokens}@{small}")
    throughput_keys = [("append1", "single appends")] + [
        (f"window{t}@{large}", f"window {t} tok of {fmt_n(large)}") for t in ("2k", "8k")]
    for key, what in throughput_keys:
        for clients in run.args.clients:
            svc, raw = get(key, "http", clients), get(key, "raw", clients)
            label = f"service/raw throughput, {what}, {clients} client{'s' if clients > 1 else ''}"
            if svc is None or raw is None:
                out.append((label, "not measured", None))
                continue
            ratio = svc.rps / raw.rps
            out.append((label, f"{ratio:.2f} ({svc.rps:,.0f} vs {raw.rps:,.0f} req/s; target >= 0.50)",
                        ratio >= 0.5))
    for clients in run.args.clients:
        single, batch = get("append1", "http", clients), get("append1000", "http", clients)
        label = f"batch of 1000 vs single appends, messages/s, {clients} client{'s' if clients > 1 else ''}"
        if single is None or batch is None:
            out.append((label, "not measured", None))
            continue
        ratio = batch.rps * 1000 / single.rps
        out.append((label, f"{ratio:.1f}x ({batch.rps * 1000:,.0f} vs {single.rps:,.0f} msg/s; target >= 20x)",
                    ratio >= 20))
    return out


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def command_line() -> str:
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None and spec.name else "python bench/run.py"
    return " ".join([head, *map(shlex.quote, sys.argv[1:])])


def render_markdown(run: Run) -> str:
    info = run.info
    header, rows = table_rows(run)
    m = info.get("machine", {})
    lines = [
        f"# Context Store benchmark, {run.started.strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"- command: `{info.get('command')}`",
        f"- machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('memory')} memory, {m.get('os')}; "
        f"load average at start {m.get('load')}",
        f"- PostgreSQL: {info.get('pg_version', '?')} ({info.get('pg_settings', '')})",
        f"- Python {m.get('python')}; service {info.get('service_version', '?')} under gunicorn, "
        f"{run.args.workers} workers (gthread), tokenizer {info.get('tokenizer', '?')}, LOG_LEVEL={run.args.log_level}"
        + (f", {' '.join(run.args.service_env)}" if run.args.service_env else ""),
        f"- cells: at most {fmt_n(run.args.max_requests)} requests and {run.args.duration:g} s each, "
        f"clients {', '.join(map(str, run.args.clients))}; sizes {', '.join(fmt_n(s) for s in run.args.sizes)}"
        + (", window on 1,000,000" if run.args.full else ""),
        f"- load: {'; '.join(run.load_rate)}",
        "",
        "svc = through HTTP (gunicorn, keep-alive connections to 127.0.0.1); raw = the same SQL statements "
        "through psycopg, one connection per client process. msg/s counts messages written (appends) or "
        "returned (reads). svc/raw compares requests/s.",
        "",
        md_table(header, rows),
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {what} | {value} | {verdict(ok)} |" for what, value, ok in checks(run)]
    lines += ["", "## Memory and storage", ""]
    for name, rss, pss in info.get("memory", []):
        lines.append(f"- gunicorn {name}: RSS {rss / 2**20:.1f} MiB, PSS {pss / 2**20:.1f} MiB")
    size = info.get("db_size")
    if size:
        lines.append(f"- messages: {size}")
    if run.explain:
        lines += ["", "## EXPLAIN ANALYZE on the largest context", ""]
        for title, text in run.explain:
            lines += [f"### {title}", "", "```", text, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def print_report(run: Run) -> None:
    header, rows = table_rows(run)
    print()
    print(text_table(header, rows))
    print()
    print("Targets (issue 5):")
    for what, value, ok in checks(run):
        print(f"  [{verdict(ok)}] {what}: {value}")
    print()
    for name, rss, pss in run.info.get("memory", []):
        print(f"gunicorn {name}: RSS {rss / 2**20:.1f} MiB, PSS {pss / 2**20:.1f} MiB")
    if run.info.get("db_size"):
        print(f"messages: {run.info['db_size']}")
    print(f"PostgreSQL: {run.info.get('pg_version', '?')}")
    sys.stdout.flush()


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args=args, started=datetime.now(timezone.utc))
    run.info["command"] = command_line()
    run.info["machine"] = machine()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = run.started.strftime("%Y%m%d-%H%M%S")
    service_log = OUT_DIR / f"gunicorn-{stamp}.log"
    home = Path(tempfile.mkdtemp(prefix="context-store-bench-"))
    embedded = proc = clients = api = None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        from service.embedded import EmbeddedPostgres

        log(f"starting embedded PostgreSQL in {home}")
        embedded = EmbeddedPostgres(home)
        database_url = embedded.start()
        port = free_port()
        log(f"starting gunicorn ({args.workers} workers) on {HOST}:{port}; log {service_log}")
        proc = start_service(args, database_url, home, port, service_log)
        health = wait_for_health(proc, port)
        run.info["service_version"] = health.get("version")
        run.info["tokenizer"] = health.get("tokenizer") or (health.get("tokens") or {}).get("tokenizer") or "?"
        api = Api(port)

        window_only = [1_000_000] if args.full and 1_000_000 not in args.sizes else []
        contexts, heads = {}, {}
        for index, size in enumerate(args.sizes + window_only):
            started = time.monotonic()
            contexts[size] = load_context(api, size, seed=index + 1)
            heads[size] = size
            took = time.monotonic() - started
            run.load_rate.append(f"{fmt_n(size)} msgs in {took:.1f} s ({size / took:,.0f} msg/s)")
            log(f"loaded {fmt_n(size)} messages in {took:.1f} s ({size / took:,.0f} msg/s)")
        largest = args.sizes[-1]
        chain_all = build_fork_chain(api, contexts[largest], max(FORK_DEPTHS))
        chain = {d: chain_all[d] for d in FORK_DEPTHS}
        log(f"fork chain of depth {max(FORK_DEPTHS)} on the {fmt_n(largest)}-message context ready")

        import psycopg

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) messages, contexts")  # what autovacuum would have done

        run.operations = plan(api, args.sizes, contexts, heads, chain, window_only)
        if args.only:
            run.operations = [o for o in run.operations if any(o.key.startswith(p) for p in args.only)]
        log(f"starting {max(args.clients)} client processes")
        clients = Clients(max(args.clients), port, database_url)
        modes = ["http"] if args.no_raw else ["http", "raw"]
        total = len(run.operations) * len(args.clients) * len(modes)
        done = 0
        for operation in run.operations:
            for concurrency in args.clients:
                for mode in modes:
                    result = measure(run, clients, operation, mode, concurrency)
                    run.results[(operation.key, mode, concurrency)] = result
                    done += 1
                    log(f"[{done}/{total}] {operation.label} {mode} x{concurrency}: "
                        f"{result.rps:,.0f} req/s p50 {result.pct(0.5):.2f} ms p99 {result.pct(0.99):.2f} ms")

        measure_pairs(run, clients)
        run.info["memory"] = worker_memory(proc)
        try:
            facts, plans = database_facts(database_url, contexts[largest], largest, chain, not args.no_explain)
        except Exception as exc:  # the table is worth printing anyway
            log(f"reading the database facts failed: {type(exc).__name__}: {exc}")
            facts, plans = {}, []
        run.info.update(facts)
        run.explain = plans
        if facts:
            rows, sizes = facts["messages_rows"], facts["messages_bytes"]
            per_million = sizes["total"] / rows * 1e6 / 2**20 if rows else 0
            run.info["db_size"] = (
                f"{fmt_n(rows)} rows, {sizes['total'] / 2**20:.1f} MiB with indexes "
                f"(heap {sizes['heap'] / 2**20:.1f} MiB, indexes {sizes['indexes'] / 2**20:.1f} MiB): "
                f"{sizes['total'] / rows if rows else 0:.0f} bytes per message, "
                f"{per_million:,.0f} MiB per million messages"
            )

        print_report(run)
        markdown = render_markdown(run)
        out_path = OUT_DIR / f"results-{stamp}.md"
        out_path.write_text(markdown, encoding="utf-8")
        print(f"\nwrote {out_path.relative_to(REPO)}")
        if args.write_results:
            RESULTS_MD.write_text(
                "<!-- Written by `python -m bench.run --write-results`; the latest run replaces it. -->\n"
                + markdown, encoding="utf-8")
            print(f"wrote {RESULTS_MD.relative_to(REPO)}")
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if api is not None:
            api.close()
        if clients is not None:
            clients.stop()
        if proc is not None:
            log("stopping gunicorn")
            stop_service(proc)
        if embedded is not None:
            log("stopping embedded PostgreSQL")
            embedded.stop()
        shutil.rmtree(home, ignore_errors=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
