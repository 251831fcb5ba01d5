"""Many nodes through one PgBouncer: one `serve` against two, on one database.

    python -m bench.nodes                    # about 7 minutes on 2 cores
    python -m bench.nodes --write-results    # also writes its section of bench/RESULTS.md

One embedded PostgreSQL, one PgBouncer 1.18 in transaction mode on loopback in front
of it (an ini generated in a temporary folder), the schema migrated directly (not
through the pooler) and the role given the session settings the service checks at
start behind a transaction pooler. Then two `python -m service serve` (gunicorn,
`--workers` each, DB_POOLER=pgbouncer-transaction, MIGRATE_ON_START=false) on two
free loopback ports, both through the same PgBouncer. For every load and client
count the two topologies alternate, round by round:

    (a) one node: every client talks to node 1 (node 2 runs, idle);
    (b) two nodes: client i talks to node 1 + i % 2.

During each cell it records the CPU used by each group of processes (psutil: each
node's gunicorn master and workers, pgbouncer, the PostgreSQL server and its
backends, the load generator, and the rest of the machine), PgBouncer's SHOW POOLS
sampled every `--sample-interval` (clients waiting for a server connection) and the
difference of SHOW STATS over the cell (transactions, wait per transaction).
Everything it starts it stops, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/nodes.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql as pgsql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

from bench import load as bench_load  # noqa: E402
from bench import report, services  # noqa: E402
from bench.cells import Result, fresh_contexts  # noqa: E402
from bench.common import HOST, OUT_DIR, RESULTS_MD, interrupt, log, uninterrupted  # noqa: E402
from bench.driver import CellFailed, Clients  # noqa: E402

DATABASE = "context_store_nodes"
LOADS = ("get", "window2k", "append1", "mixed")
MIXED = ("get", "window2k", "append1")  # client i of a mixed cell runs MIXED[i % 3]
GROUPS = ("node 1", "node 2", "pgbouncer", "postgres", "load generator", "rest of machine")
SECTION = "# Many nodes through one PgBouncer"
SECTION_END = "<!-- end of: many nodes through one PgBouncer -->"
OTHER_SUITES = "<!-- other suites -->"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.nodes",
        description="One service node against two, through one PgBouncer in transaction mode, on one database.")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per cell, at most (default 4)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="requests per cell, at most")
    parser.add_argument("--clients", default="8,16", help="client counts (default 8,16)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (a, b) per load and client count (default 5)")
    parser.add_argument("--loads", default=",".join(LOADS), help=f"loads to run, of {','.join(LOADS)}")
    parser.add_argument("--size", type=int, default=10_000, help="messages in the context the reads use")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per node (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (the service's default)")
    parser.add_argument("--pool-size", type=int, default=16,
                        help="PgBouncer default_pool_size: server connections (default 16, the sum of "
                             "DB_POOL_MAX_SIZE 4 over the 4 workers of (b))")
    parser.add_argument("--service-env", action="append", default=[], metavar="NAME=VALUE",
                        help="more environment for both nodes (repeatable)")
    parser.add_argument("--log-level", default="info", help="the nodes' LOG_LEVEL (default info, as deployed)")
    parser.add_argument("--sample-interval", type=float, default=0.2, help="seconds between SHOW POOLS samples")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="logs and reports (default bench/out)")
    parser.add_argument("--json", type=Path, default=None, help="also write every cell as JSON here")
    parser.add_argument("--write-results", action="store_true", help="write this run's section of bench/RESULTS.md")
    args = parser.parse_args(argv)
    args.clients = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    args.loads = [name.strip() for name in args.loads.split(",") if name.strip()]
    unknown = [name for name in args.loads if name not in LOADS]
    if unknown or not args.loads:
        parser.error(f"--loads takes some of {','.join(LOADS)}, not {','.join(unknown) or 'nothing'}")
    if not args.clients or min(args.clients) < 1 or args.rounds < 1 or args.duration <= 0 or args.size < 1:
        parser.error("--clients, --rounds, --duration and --size must be positive")
    for item in args.service_env:
        if "=" not in item:
            parser.error(f"--service-env takes NAME=VALUE, not {item!r}")
    return args


# ---------------------------------------------------------------- PgBouncer


@dataclass
class Bouncer:
    """A PgBouncer this run started: its folder (ini, userlist, log), port and process."""

    folder: Path
    port: int
    user: str
    proc: subprocess.Popen

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection:
        """A connection to the admin console (simple queries only: no prepared statements)."""
        return psycopg.connect(f"host={HOST} port={self.port} user={self.user} dbname=pgbouncer",
                               autocommit=True, prepare_threshold=None, connect_timeout=5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            log("stopping pgbouncer")
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("no pgbouncer executable on PATH or in /usr/sbin (apt-get install pgbouncer)")
    return found


def start_pgbouncer(direct_url: str, pool_size: int) -> Bouncer:
    """PgBouncer in transaction mode on a free loopback port, in front of the server of
    `direct_url` (a Unix socket), with the bounds on waiting that tests/pgbouncer.ini
    and the README recommend; its admin console open to the server's user."""
    parts = conninfo_to_dict(direct_url)
    user = parts.get("user") or "postgres"
    host = parts.get("host") or "/tmp"
    folder = Path(tempfile.mkdtemp(prefix="context-store-nodes-pgbouncer-"))
    port = services.free_port()
    ini = f"""[databases]
* = host={host} port={parts.get('port') or 5432}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/userlist.txt
admin_users = {user}
logfile = {folder}/pgbouncer.log
log_connections = 0
log_disconnections = 0
pool_mode = transaction
max_client_conn = 200
default_pool_size = {pool_size}
query_wait_timeout = 4
server_connect_timeout = 3
server_login_retry = 1
"""
    (folder / "pgbouncer.ini").write_text(ini, encoding="utf-8")
    (folder / "userlist.txt").write_text(f'"{user}" ""\n', encoding="utf-8")
    command = [pgbouncer_binary(), str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root: run it as the owner of the server's
        # socket directory, who can reach the socket (as tests/conftest.py does).
        owner = os.stat(host).st_uid if host.startswith("/") else pwd.getpwnam("nobody").pw_uid
        for path in (folder, *folder.iterdir()):
            os.chown(path, owner, -1)
        command[1:1] = ["-u", pwd.getpwuid(owner).pw_name]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    bouncer = Bouncer(folder, port, user, proc)
    deadline = time.monotonic() + 10
    while True:
        try:
            with psycopg.connect(bouncer.url("postgres"), connect_timeout=2, prepare_threshold=None):
                return bouncer
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                logfile = folder / "pgbouncer.log"
                tail = logfile.read_text(errors="replace")[-1500:] if logfile.exists() else "(no log)"
                bouncer.stop()
                shutil.rmtree(folder, ignore_errors=True)
                raise RuntimeError(f"pgbouncer did not start: {tail}")
            time.sleep(0.1)


def prepare_database(direct_url: str, statement_timeout_ms: int = 10_000) -> str:
    """A fresh database migrated directly (never through the pooler), whose role
    carries the session settings `serve` checks behind a transaction pooler (README,
    Behind PgBouncer); its direct URL."""
    from service.migrate import migrate

    url = services.create_database(direct_url, DATABASE)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        role = conn.execute("SELECT current_user").fetchone()[0]
        for name, value in (("statement_timeout", f"{statement_timeout_ms}ms"),
                            ("plan_cache_mode", "force_generic_plan"), ("timezone", "UTC")):
            conn.execute(pgsql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
                pgsql.Identifier(role), pgsql.Identifier(DATABASE), pgsql.Identifier(name), pgsql.Literal(value)))
    return url


# ---------------------------------------------------------------- sampling


class CpuMeter:
    """CPU seconds (user + system) per group of processes between start() and stop().
    A process born during the interval counts from its birth; one that ended is lost
    (the groups' processes live through the whole run)."""

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups  # name -> callable returning that group's processes now
        self.before: dict[tuple[int, float], float] = {}
        self.machine_before = 0.0
        self.started = 0.0

    @staticmethod
    def _cpu(proc: psutil.Process) -> float | None:
        try:
            times = proc.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return None

    @staticmethod
    def _busy() -> float:
        # guest time is counted in user already; steal is the hypervisor's, not this machine's work
        times = psutil.cpu_times()
        skip = ("idle", "iowait", "steal", "guest", "guest_nice")
        return sum(getattr(times, name) for name in times._fields if name not in skip)

    def _snapshot(self) -> dict[str, dict[tuple[int, float], float]]:
        out: dict[str, dict[tuple[int, float], float]] = {}
        for name, members in self.groups.items():
            seen = out.setdefault(name, {})
            for proc in members():
                used = self._cpu(proc)
                if used is not None:
                    seen[(proc.pid, proc.create_time())] = used
        return out

    def start(self) -> None:
        self.before = {key: used for group in self._snapshot().values() for key, used in group.items()}
        self.machine_before = self._busy()
        self.started = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores used by each group (CPU seconds / wall seconds), the machine's whole
        busy time less ours as "rest of machine", and "all" for the machine."""
        after = self._snapshot()
        wall = max(time.monotonic() - self.started, 1e-6)
        machine = (self._busy() - self.machine_before) / wall
        cores = {name: sum(used - self.before.get(key, 0.0) for key, used in group.items()) / wall
                 for name, group in after.items()}
        cores["rest of machine"] = max(0.0, machine - sum(cores.values()))
        cores["all"] = machine
        return cores


def process_tree(pid: int):
    """A callable giving the process `pid` and its descendants (none once it is gone)."""
    def members() -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
    return members


class PoolSampler(threading.Thread):
    """SHOW POOLS for the run's database every `interval` s, and SHOW STATS at both ends."""

    def __init__(self, bouncer: Bouncer, interval: float) -> None:
        super().__init__(daemon=True)
        self.conn = bouncer.admin()
        self.interval = interval
        self.halt = threading.Event()
        self.samples: list[dict[str, Any]] = []
        self.stats_before: dict[str, float] = {}
        self.stats_after: dict[str, float] = {}

    def _rows(self, command: str) -> list[dict[str, Any]]:
        cur = self.conn.execute(command)
        names = [column.name for column in cur.description or []]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def _stats(self) -> dict[str, float]:
        for row in self._rows("SHOW STATS"):
            if row["database"] == DATABASE:
                return {k: float(v) for k, v in row.items() if k.startswith("total_")}
        return {}

    def run(self) -> None:
        while not self.halt.is_set():
            for row in self._rows("SHOW POOLS"):
                if row["database"] == DATABASE:
                    self.samples.append({k: row[k] for k in ("cl_active", "cl_waiting", "sv_active", "sv_idle",
                                                             "sv_used", "maxwait", "maxwait_us")})
            self.halt.wait(self.interval)

    def begin(self) -> None:
        self.stats_before = self._stats()
        self.start()

    def end(self) -> dict[str, float]:
        self.halt.set()
        self.join(timeout=10)
        self.stats_after = self._stats()
        self.conn.close()
        waiting = [s["cl_waiting"] for s in self.samples] or [0]
        active = [s["sv_active"] for s in self.samples] or [0]
        longest = max((s["maxwait"] + s["maxwait_us"] / 1e6 for s in self.samples), default=0.0)
        delta = {k: self.stats_after.get(k, 0.0) - self.stats_before.get(k, 0.0) for k in self.stats_after}
        xacts = delta.get("total_xact_count", 0.0)
        return {
            "samples": len(self.samples),
            "cl_waiting_max": max(waiting),
            "cl_waiting_mean": statistics.fmean(waiting),
            "sv_active_mean": statistics.fmean(active),
            "maxwait_ms": longest * 1000.0,
            "xacts": xacts,
            # total_wait_time: microseconds clients spent queued for a server connection
            "wait_us_per_xact": delta.get("total_wait_time", 0.0) / xacts if xacts else 0.0,
            "xact_us": delta.get("total_xact_time", 0.0) / xacts if xacts else 0.0,
        }


# ---------------------------------------------------------------- cells


@dataclass
class Cell:
    """One measured cell: a load, a client count, a topology ("a" or "b"), a round."""

    load: str
    clients: int
    topology: str
    round: int
    requests: int
    errors: int
    wall: float
    rps: float
    p50_ms: float
    p99_ms: float
    first_error: str | None
    per_node: dict[str, int]  # requests answered by each node ("1", "2"), as the clients counted them
    cpu: dict[str, float]  # cores used per group
    pools: dict[str, float]  # PgBouncer's view during the cell

    @property
    def cpu_ms_per_request(self) -> float:
        """CPU the serving side (nodes, PgBouncer, PostgreSQL) spent per request, in ms."""
        serving = sum(self.cpu.get(group, 0.0) for group in ("node 1", "node 2", "pgbouncer", "postgres"))
        return serving * 1000.0 / self.rps if self.rps else float("nan")


@dataclass
class Plan:
    """What the loads read: the context's id and head (the appends make their own)."""

    context_id: str
    head: int
    specs: dict[str, Any] = field(default_factory=dict)


def client_work(load: str, index: int, plan: Plan, appends: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(driver operation, its args) for client `index` of a `load` cell."""
    name = MIXED[index % len(MIXED)] if load == "mixed" else load
    if name == "get":
        return "get", {"context_id": plan.context_id, "head": plan.head}
    if name == "window2k":
        return "window", {"context_id": plan.context_id, "max_tokens": 2000}
    return "append", appends[index]


def run_cell(args: argparse.Namespace, clients: Clients, api: services.Api, meter: CpuMeter, bouncer: Bouncer,
             plan: Plan, load: str, concurrency: int, topology: str, ports: list[int], round_: int) -> Cell:
    """One cell: `concurrency` clients, client i on node i % len(ports) of the topology,
    all started together until the budget or `--duration` runs out."""
    appends = fresh_contexts(api, 1, False)(concurrency)  # a fresh context per client: appends never queue
    per_client = max(1, math.ceil(args.max_requests / concurrency))
    specs = []
    for i in range(concurrency):
        op, op_args = client_work(load, i, plan, appends)
        specs.append({"mode": "http", "op": op, "args": {"seed": 100 + i, **op_args}, "max_requests": per_client,
                      "port": ports[i % len(ports)], "duration": args.duration, "seed": 1000 * concurrency + i,
                      "headers": {}})
    sampler = PoolSampler(bouncer, args.sample_interval)
    sampler.begin()
    meter.start()
    try:
        answers = clients.run(specs, args.duration)
    except CellFailed as exc:
        raise RuntimeError(f"{load} x{concurrency} ({topology}) could not start: {exc.args[0]}") from exc
    finally:
        cpu = meter.stop()
        pools = sampler.end()
    result = Result.of_answers(answers)
    per_node = {str(n + 1): 0 for n in range(2)}
    node_of = {port: str(n + 1) for n, port in enumerate(args.node_ports)}
    for spec, answer in zip(specs, answers):
        per_node[node_of[spec["port"]]] += len(answer["latencies"]) // array("d").itemsize
    if result.errors:
        log(f"{load} x{concurrency} ({topology}): {result.errors} errors, first: {result.first_error}")
    return Cell(load, concurrency, topology, round_, result.requests, result.errors, result.wall, result.rps,
                result.pct(0.5), result.pct(0.99), result.first_error, per_node, cpu, pools)


def measure(args: argparse.Namespace, clients: Clients, api: services.Api, meter: CpuMeter, bouncer: Bouncer,
            plan: Plan) -> list[Cell]:
    """Every load at every client count, `--rounds` rounds of (a, b); which topology
    goes first alternates from pair to pair, so a slow second hits both alike."""
    node1, node2 = args.node_ports
    topologies = {"a": [node1], "b": [node1, node2]}
    out: list[Cell] = []
    pair = 0
    total = len(args.loads) * len(args.clients) * args.rounds * 2
    for load in args.loads:
        for concurrency in args.clients:
            for round_ in range(1, args.rounds + 1):
                order = ["a", "b"] if pair % 2 == 0 else ["b", "a"]
                pair += 1
                for topology in order:
                    cell = run_cell(args, clients, api, meter, bouncer, plan, load, concurrency, topology,
                                    topologies[topology], round_)
                    out.append(cell)
                    log(f"[{len(out)}/{total}] {load} x{concurrency} ({topology}) round {round_}: "
                        f"{cell.rps:,.0f} req/s p50 {cell.p50_ms:.2f} ms p99 {cell.p99_ms:.2f} ms, "
                        f"nodes {cell.per_node}, cl_waiting max {cell.pools['cl_waiting_max']:.0f}, "
                        f"cores: " + ", ".join(f"{g} {cell.cpu.get(g, 0):.2f}" for g in GROUPS))
    return out


# ---------------------------------------------------------------- report


def _median(cells: list[Cell], get) -> float:
    values = [get(c) for c in cells if c.requests]
    return statistics.median(values) if values else float("nan")


def summary(cells: list[Cell]) -> list[dict[str, Any]]:
    """Per load and client count: medians over the rounds of each topology, and b/a."""
    rows = []
    keys = list(dict.fromkeys((c.load, c.clients) for c in cells))
    for load, clients in keys:
        row: dict[str, Any] = {"load": load, "clients": clients}
        for topology in ("a", "b"):
            mine = [c for c in cells if (c.load, c.clients, c.topology) == (load, clients, topology)]
            row[topology] = {
                "rps": _median(mine, lambda c: c.rps),
                "p50_ms": _median(mine, lambda c: c.p50_ms),
                "p99_ms": _median(mine, lambda c: c.p99_ms),
                "errors": sum(c.errors for c in mine),
                "requests": sum(c.requests for c in mine),
                "cpu": {g: _median(mine, lambda c, g=g: c.cpu.get(g, 0.0)) for g in (*GROUPS, "all")},
                "cl_waiting_max": max((c.pools["cl_waiting_max"] for c in mine), default=0),
                "cl_waiting_mean": _median(mine, lambda c: c.pools["cl_waiting_mean"]),
                "sv_active_mean": _median(mine, lambda c: c.pools["sv_active_mean"]),
                "cpu_ms_per_request": _median(mine, lambda c: c.cpu_ms_per_request),
                "wait_us_per_xact": _median(mine, lambda c: c.pools["wait_us_per_xact"]),
                "xact_us": _median(mine, lambda c: c.pools["xact_us"]),
                "rounds_rps": [round(c.rps) for c in mine],
            }
        row["rps_ratio"] = row["b"]["rps"] / row["a"]["rps"] if row["a"]["rps"] else float("nan")
        # each round's (a) and (b) ran back to back: their ratio is the paired comparison
        by_round: dict[int, dict[str, Cell]] = {}
        for c in cells:
            if (c.load, c.clients) == (load, clients):
                by_round.setdefault(c.round, {})[c.topology] = c
        row["round_ratios"] = [pair["b"].rps / pair["a"].rps for _, pair in sorted(by_round.items())
                               if len(pair) == 2 and pair["a"].rps]
        row["p99_ratio"] = row["b"]["p99_ms"] / row["a"]["p99_ms"] if row["a"]["p99_ms"] else float("nan")
        rows.append(row)
    return rows


def _paragraph(text: str) -> str:
    return textwrap.fill(text, width=88, break_long_words=False, break_on_hyphens=False)


def render(args: argparse.Namespace, info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = info["machine"]
    lines = [
        SECTION,
        "",
        _paragraph(
            f"Measured {info['started']} with `{info['command']}`: {m.get('cores')} cores ({m.get('cpu')}), "
            f"load average before the run {info['load_before']}. One embedded PostgreSQL, one PgBouncer "
            f"{info['pgbouncer']} (transaction mode, default_pool_size {args.pool_size}, on loopback), two "
            f"`serve` nodes of {args.workers} gunicorn workers each ({info['threads']} threads, DB_POOL_MAX_SIZE "
            f"{info['pool_max']}) with DB_POOLER=pgbouncer-transaction. (a): every client on node 1; (b): client i "
            f"on node 1 + i % 2. Each client is its own process with one keep-alive connection; {args.rounds} "
            f"rounds of (a, b) per row, {args.duration:g} s a cell, the topology that goes first alternating. "
            f"Reads on a context of {args.size:,} messages; appends 1 message to a fresh context per client; "
            f"mixed: client i runs get, window 2k, append 1 by i % 3. Medians over the rounds."),
        "",
        "| load | clients | (a) req/s | (b) req/s | b/a req/s | (a) p50 ms | (b) p50 ms | (a) p99 ms | (b) p99 ms "
        "| b/a p99 | b/a req/s, each round | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        a, b = row["a"], row["b"]
        lines.append(
            f"| {row['load']} | {row['clients']} | {a['rps']:,.0f} | {b['rps']:,.0f} | {row['rps_ratio']:.2f} "
            f"| {a['p50_ms']:.2f} | {b['p50_ms']:.2f} | {a['p99_ms']:.2f} | {b['p99_ms']:.2f} "
            f"| {row['p99_ratio']:.2f} | {' '.join(f'{r:.2f}' for r in row['round_ratios'])} "
            f"| {a['errors'] + b['errors']} |")
    lines += [
        "",
        _paragraph(
            "Where the CPU goes: cores used during the cell by each group of processes (psutil, user + system; "
            "\"rest of machine\" is every other process, other sessions included; 2.00 is the whole machine), "
            "CPU of the serving side (nodes, PgBouncer, PostgreSQL) per request, and PgBouncer's view: clients "
            f"waiting for a server connection (SHOW POOLS every {args.sample_interval:g} s: the largest over the "
            "rounds / the median of the per-cell means), server connections in a transaction (mean), and per "
            "transaction the time queued and the time from its first statement to its end (SHOW STATS over the "
            "cell). Medians over the rounds."),
        "",
        "| load | clients | topo | node 1 | node 2 | pgbouncer | postgres | load gen | rest of machine | all "
        "| serving CPU ms/req | cl_waiting max / mean | sv_active | wait µs/xact | xact µs |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for topology in ("a", "b"):
            t = row[topology]
            c = t["cpu"]
            lines.append(
                f"| {row['load']} | {row['clients']} | {topology} | {c['node 1']:.2f} | {c['node 2']:.2f} "
                f"| {c['pgbouncer']:.2f} | {c['postgres']:.2f} | {c['load generator']:.2f} "
                f"| {c['rest of machine']:.2f} | {c['all']:.2f} | {t['cpu_ms_per_request']:.2f} "
                f"| {t['cl_waiting_max']:.0f} / {t['cl_waiting_mean']:.1f} | {t['sv_active_mean']:.1f} "
                f"| {t['wait_us_per_xact']:.0f} | {t['xact_us']:.0f} |")
    return "\n".join(lines) + "\n"


def write_results(section: str) -> None:
    """Put `section` into bench/RESULTS.md after the other-suites marker: replace this
    suite's previous section, keep everything else."""
    text = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.exists() else ""
    block = section.rstrip("\n") + "\n\n" + SECTION_END + "\n"
    if SECTION in text and SECTION_END in text:
        start = text.index(SECTION)
        end = text.index(SECTION_END, start) + len(SECTION_END) + 1
        text = text[:start] + block + text[end:]
    else:
        if OTHER_SUITES not in text:
            text = text.rstrip("\n") + "\n\n" + OTHER_SUITES + "\n"
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS_MD.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- main


def node_settings(service_args: SimpleNamespace):
    """The settings each node will read: this environment with the nodes' additions
    (as services.Service.environment builds it)."""
    from service.config import Settings

    env = dict(os.environ)
    env.update(item.split("=", 1) for item in service_args.service_env)
    if service_args.threads is not None:
        env["GUNICORN_THREADS"] = str(service_args.threads)
    return Settings.from_env(env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"), "command": report.command_line(),
        "machine": report.machine(), "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    home = Path(tempfile.mkdtemp(prefix="context-store-nodes-"))
    embedded = bouncer = clients = None
    nodes: list[services.Service] = []
    previous_term = signal.signal(signal.SIGTERM, interrupt)
    try:
        service_args = SimpleNamespace(
            workers=args.workers, threads=args.threads, log_level=args.log_level,
            service_env=["DB_POOLER=pgbouncer-transaction", "MIGRATE_ON_START=false", *args.service_env])
        settings = node_settings(service_args)
        info["threads"], info["pool_max"] = settings.threads, settings.pool_max_size
        log(f"starting embedded PostgreSQL in {home}")
        embedded, server_url = services.start_embedded(home)
        direct_url = prepare_database(server_url, settings.statement_timeout_ms)
        bouncer = start_pgbouncer(server_url, args.pool_size)
        info["pgbouncer"] = subprocess.run([pgbouncer_binary(), "--version"], capture_output=True, text=True,
                                           timeout=10).stdout.split("\n")[0].replace("PgBouncer ", "") or "?"
        log(f"pgbouncer {info['pgbouncer']} on {HOST}:{bouncer.port}, pool {args.pool_size}, log "
            f"{bouncer.folder / 'pgbouncer.log'}")
        nodes = [services.Service(f"node {n}", REPO, bouncer.url(DATABASE), home / f"node{n}",
                                  args.out_dir / f"gunicorn-nodes-{stamp}-node{n}.log") for n in (1, 2)]
        with ThreadPoolExecutor(2) as pool:  # both start at once: each waits for its /health
            for future in [pool.submit(node.start, service_args) for node in nodes]:
                future.result()
        args.node_ports = [node.port for node in nodes]
        api = nodes[0].api
        assert api is not None
        context_id = bench_load.load_context(api, args.size, seed=1)
        services.vacuum(direct_url)
        plan = Plan(context_id, args.size)
        health = nodes[0].health
        log(f"nodes on ports {args.node_ports}, version {health.get('version')}; {args.size:,} messages loaded")
        log(f"starting {max(args.clients)} client processes")
        # http.client, as in this suite's published tables (bench/RESULTS.md), which
        # compare one node with two, both measured with the same client.
        clients = Clients(max(args.clients), direct_url, "http.client")
        assert embedded._server is not None
        postmaster = embedded._server.get_postmaster_info().pid
        loadgen_pids = [os.getpid(), *(proc.pid for proc in clients.procs)]

        def loadgen() -> list[psutil.Process]:
            out = []
            for pid in loadgen_pids:
                try:
                    out.append(psutil.Process(pid))
                except psutil.Error:
                    pass
            return out

        assert nodes[0].proc is not None and nodes[1].proc is not None
        meter = CpuMeter({
            "node 1": process_tree(nodes[0].proc.pid), "node 2": process_tree(nodes[1].proc.pid),
            "pgbouncer": process_tree(bouncer.proc.pid), "postgres": process_tree(postmaster),
            "load generator": loadgen,
        })
        cells = measure(args, clients, api, meter, bouncer, plan)
        rows = summary(cells)
        section = render(args, info, rows)
        print("\n" + section)
        out_path = args.out_dir / f"nodes-{stamp}.md"
        out_path.write_text(section, encoding="utf-8")
        log(f"wrote {out_path}")
        if args.json is not None:
            document = {"info": info, "node_ports": args.node_ports, "pgbouncer_port": bouncer.port,
                        "summary": rows, "cells": [asdict(c) for c in cells]}
            args.json.write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
        if args.write_results:
            write_results(section)
            log(f"wrote its section of {RESULTS_MD}")
        errors = sum(c.errors for c in cells)
        if errors:
            log(f"{errors} requests failed")
            return 1
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        with uninterrupted():
            if clients is not None:
                clients.stop()
            for node in nodes:
                node.stop()
            if bouncer is not None:
                bouncer.stop()
                shutil.rmtree(bouncer.folder, ignore_errors=True)
            if embedded is not None:
                log("stopping embedded PostgreSQL")
                embedded.stop()
            shutil.rmtree(home, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous_term)


if __name__ == "__main__":
    sys.exit(main())
