"""The operations table and how one cell is measured.

An Operation is one row of the table: what each client sends through HTTP (driver.py)
and what it runs in the raw mode (raw.py), with per-client arguments. A cell is one
operation at one concurrency in one mode, bounded by a request budget and a duration.

The writes group (`measure_writes`) measures single-message appends three ways in
paired rounds: plain, with a fresh Idempotency-Key per request, and on a second
service whose database holds an API key, with `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import argparse
import math
import statistics
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from bench.common import fmt_n, log
from bench.driver import CellFailed, Clients
from bench.load import Dataset
from bench.services import Api

FORK_WINDOW_TOKENS = 8000


@dataclass
class Operation:
    key: str  # stable id, used by --only, the ratio checks and compare mode
    label: str  # what the table shows
    op: str  # driver operation
    msgs: int | None  # messages written or returned per request (None: not applicable)
    args: Callable[[int], list[dict[str, Any]]]  # clients -> per-client args
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request of its HTTP cells


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

    @staticmethod
    def of_answers(answers: list[dict[str, Any]]) -> "Result":
        """One cell's result from its clients' answers (bench/driver.py)."""
        latencies = array("d")
        for answer in answers:
            latencies.frombytes(answer["latencies"])
        first = next((a["first_error"] for a in answers if a["first_error"]), None)
        wall = max(a["end"] for a in answers) - min(a["start"] for a in answers)
        return Result(len(latencies), sum(a["errors"] for a in answers), wall, sorted(latencies), first)

    @staticmethod
    def merged(parts: list["Result"]) -> "Result":
        """Several short runs of one cell as one: requests and wall time add up."""
        latencies = sorted(x for part in parts for x in part.latencies)
        first = next((p.first_error for p in parts if p.first_error), None)
        return Result(sum(p.requests for p in parts), sum(p.errors for p in parts),
                      sum(p.wall for p in parts), latencies, first)


@dataclass
class CompareCell:
    """One operation at one concurrency on both services (compare mode)."""

    key: str
    label: str
    clients: int
    current: Result
    ref: Result
    round_ratios: list[float]  # per-round p50 current/ref
    rps_ratios: list[float] = field(default_factory=list)  # per-round req/s current/ref


@dataclass
class Compare:
    ref: str  # as given on the command line
    commit: str  # its full hash
    current_module: str = "?"
    ref_module: str = "?"
    openapi: str = "?"
    cells: list[CompareCell] = field(default_factory=list)
    memory: list[tuple[str, int, int]] = field(default_factory=list)
    load_rate: list[str] = field(default_factory=list)


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
    # (key, clients) -> per-round svc/raw req/s ratios (--svc-raw-rounds)
    svc_raw: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    compare: Compare | None = None
    writes: Writes | None = None


# ---------------------------------------------------------------- the writes group

PLAIN_APPEND = "append1"
IDEMPOTENT_APPEND = "append1-idem"
AUTH_APPEND = "append1-auth"
WRITE_KEYS = (IDEMPOTENT_APPEND, AUTH_APPEND)


@dataclass
class WriteRow:
    """One variant of the single-message append at one concurrency, over all rounds."""

    key: str
    label: str
    mode: str  # "http" or "raw"
    clients: int
    result: Result
    base: Result  # the plain append of the same mode, measured in the same rounds
    round_ratios: list[float]  # per-round p50 of this variant / p50 of the plain append


@dataclass
class Writes:
    rounds: int
    auth: str  # how the API-key service was set up, for the report
    rows: list[WriteRow] = field(default_factory=list)
    recorded: int | None = None  # idempotency keys the keyed cells left in the database
    keyed_requests: int = 0  # measured keyed requests (warm-up requests are keyed too)


def write_keys(args: argparse.Namespace) -> list[str]:
    """The keyed append variants this run measures (none: no writes group). Selected
    by `--only` like the operations; skipped by --no-write-keys and in compare mode."""
    if args.no_write_keys or args.compare is not None:
        return []
    only = args.only
    return [key for key in WRITE_KEYS if not only or any(key.startswith(prefix) for prefix in only)]


def fresh_contexts(api: Api, batch: int, explicit: bool, **extra: Any) -> Callable[[int], list[dict[str, Any]]]:
    """Per-client append args: one fresh context per client, so appends to different
    contexts never wait on each other; `extra` goes into every client's args."""
    def make(clients: int) -> list[dict[str, Any]]:
        out = []
        for i in range(clients):
            cid = api.call("POST", "/v1/contexts", {"metadata": {"bench": f"append-{batch}"}}, 201)["id"]
            out.append({"context_id": cid, "batch_size": batch, "seed": 100 + i, "explicit_tokens": explicit,
                        **extra})
        return out
    return make


def plan(api: Api, sizes: list[int], data: Dataset, only: list[str] | None = None) -> list[Operation]:
    """The table's rows on the service behind `api`, in order; with `only`, the rows
    whose key starts with one of its prefixes."""
    ops: list[Operation] = []
    contexts, heads, chain, window_only = data.contexts, data.heads, data.chain, data.window_only

    def fresh(batch: int, explicit: bool) -> Callable[[int], list[dict[str, Any]]]:
        return fresh_contexts(api, batch, explicit)

    def same(**kw: Any) -> Callable[[int], list[dict[str, Any]]]:
        return lambda clients: [dict(kw) for _ in range(clients)]

    def returned(path: str) -> int:
        return len(api.call("GET", path)["data"])

    def wanted(key: str) -> bool:
        return not only or any(key.startswith(prefix) for prefix in only)

    def add(key: str, label: str, op: str, msgs: Callable[[], int | None], args) -> None:
        if wanted(key):  # msgs is a request to the service: only for the rows that run
            ops.append(Operation(key, label, op, msgs(), args))

    add("create", "create context", "create", lambda: None, same())
    add("append1", "append 1 msg", "append", lambda: 1, fresh(1, False))
    add("append50", "append 50 msgs", "append", lambda: 50, fresh(50, False))
    add("append1000", "append 1000 msgs (token_count given)", "append", lambda: 1000, fresh(1000, True))
    for size in sizes + window_only:
        cid = contexts[size]
        n = fmt_n(size)
        if size not in window_only:
            add(f"list@{size}", f"last 50 of {n}", "list",
                lambda: returned(f"/v1/contexts/{cid}/messages?order=desc&limit=50"),
                same(context_id=cid, limit=50))
        for tokens in (2000, 8000):
            add(f"window{tokens // 1000}k@{size}", f"window {tokens // 1000}k tok of {n}", "window",
                lambda: returned(f"/v1/contexts/{cid}/window?max_tokens={tokens}"),
                same(context_id=cid, max_tokens=tokens))
        if size not in window_only:
            add(f"get@{size}", f"get random version of {n}", "get", lambda: 1,
                same(context_id=cid, head=heads[size]))
    for size in sorted({sizes[0], sizes[-1]}):
        add(f"fork@{size}", f"fork of {fmt_n(size)}", "fork", lambda: None, same(parent_id=contexts[size]))
    for depth, cid in chain.items():
        add(f"forkwin@d{depth}", f"window 8k tok, fork depth {depth}", "window",
            lambda: returned(f"/v1/contexts/{cid}/window?max_tokens={FORK_WINDOW_TOKENS}"),
            same(context_id=cid, max_tokens=FORK_WINDOW_TOKENS))
    return ops


def measure(args: argparse.Namespace, clients: Clients, operation: Operation, mode: str, concurrency: int,
            port: int, duration: float | None = None, max_requests: int | None = None) -> Result:
    """One cell: `concurrency` clients run `operation` in `mode` ("http" to the service
    on `port`, or "raw") until the budget or the duration runs out."""
    duration = args.duration if duration is None else duration
    max_requests = args.max_requests if max_requests is None else max_requests
    per_client = max(1, math.ceil(max_requests / concurrency))
    specs = [
        {"mode": mode, "op": operation.op, "args": a, "max_requests": per_client, "port": port,
         "duration": duration, "seed": 1000 * concurrency + i, "headers": operation.headers}
        for i, a in enumerate(operation.args(concurrency))
    ]
    for i, spec in enumerate(specs):
        spec["args"].setdefault("seed", 100 + i)
    try:
        answers = clients.run(specs, duration)
    except CellFailed as exc:
        log(f"{operation.key} {mode} x{concurrency} failed to start: {exc.args[0].strip().splitlines()[-1]}")
        return Result(0, concurrency, 0.0, [], exc.args[0].strip().splitlines()[-1])
    result = Result.of_answers(answers)
    if result.errors:
        log(f"{operation.key} {mode} x{concurrency}: {result.errors} errors, first: {result.first_error}")
    return result


def describe(result: Result) -> str:
    return f"{result.rps:,.0f} req/s p50 {result.pct(0.5):.2f} ms p99 {result.pct(0.99):.2f} ms"


def measure_table(run: Run, clients: Clients, port: int, skip: frozenset[str] = frozenset()) -> None:
    """Every cell of the table, in order: each operation, each concurrency, each mode;
    but not the operations in `skip` (measured elsewhere, by the writes group)."""
    args = run.args
    modes = ["http"] if args.no_raw else ["http", "raw"]
    operations = [o for o in run.operations if o.key not in skip]
    total = len(operations) * len(args.clients) * len(modes)
    done = 0
    rounds = getattr(args, "svc_raw_rounds", 1) if len(modes) == 2 else 1
    for operation in operations:
        for concurrency in args.clients:
            if rounds > 1:
                _measure_svc_raw_rounds(run, clients, operation, concurrency, port, rounds)
                done += 2
                for mode in modes:
                    result = run.results[(operation.key, mode, concurrency)]
                    log(f"[{done}/{total}] {operation.label} {mode} x{concurrency}: {describe(result)}")
                continue
            for mode in modes:
                result = measure(args, clients, operation, mode, concurrency, port)
                run.results[(operation.key, mode, concurrency)] = result
                done += 1
                log(f"[{done}/{total}] {operation.label} {mode} x{concurrency}: {describe(result)}")


def _measure_svc_raw_rounds(run: Run, clients: Clients, operation: Operation, concurrency: int, port: int,
                            rounds: int) -> None:
    """One operation at one concurrency in both modes, split into `rounds` rounds of
    the cell's budget, the modes alternating (and which goes first alternating too):
    raw alone moved from 2,333 to 3,568 req/s between two runs of one cell minutes
    apart, so a svc/raw ratio of two cells measured one after the other swings with
    the machine. Each round gives one ratio; the table keeps the merged cells."""
    args = run.args
    duration, budget = args.duration / rounds, math.ceil(args.max_requests / rounds)
    parts: dict[str, list[Result]] = {"http": [], "raw": []}
    ratios = []
    for index in range(rounds):
        got = {}
        for mode in ("http", "raw") if index % 2 == 0 else ("raw", "http"):
            got[mode] = measure(args, clients, operation, mode, concurrency, port, duration, budget)
            parts[mode].append(got[mode])
        if got["raw"].rps:
            ratios.append(got["http"].rps / got["raw"].rps)
    for mode, results in parts.items():
        run.results[(operation.key, mode, concurrency)] = Result.merged(results)
    run.svc_raw[(operation.key, concurrency)] = ratios


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


def measure_pairs(run: Run, clients: Clients, port: int) -> None:
    """The size-ratio targets compare two p50s; measured an hour apart on a shared
    2-core machine they swing by half. Here the two contexts alternate, one client,
    1 s each, and each round gives one ratio."""
    rounds = run.args.rounds
    if not rounds:
        return
    by_key = {o.key: o for o in run.operations}
    for large, small in size_pairs(run):
        ratios = []
        for _ in range(rounds):
            b = measure(run.args, clients, by_key[small], "http", 1, port, duration=1.0)
            a = measure(run.args, clients, by_key[large], "http", 1, port, duration=1.0)
            if a.requests and b.requests:
                ratios.append(a.pct(0.5) / b.pct(0.5))
        run.paired[(large, small)] = ratios
        log(f"paired {large} / {small}: " + ", ".join(f"{r:.2f}" for r in ratios))


def measure_compare(run: Run, clients: Clients, current_port: int, ref_ops: list[Operation], ref_port: int) -> None:
    """Every cell on both services, alternating: the current tree and the ref run back
    to back, and which goes first alternates from cell to cell (and from round to
    round), so a slow minute of the machine hits both sides alike. Every cell is
    split into `--compare-rounds` rounds of the cell's budget, each giving one p50
    ratio and one req/s ratio (on a shared machine a single run of a cell moves by
    a third from one minute to the next); the merged rounds are the cell's result."""
    assert run.compare is not None
    args = run.args
    ref_by_key = {o.key: o for o in ref_ops}
    total = len(run.operations) * len(args.clients)
    index = 0
    for operation in run.operations:
        ref_operation = ref_by_key[operation.key]
        for concurrency in args.clients:
            rounds = args.compare_rounds
            duration = args.duration / rounds
            budget = max(1, math.ceil(args.max_requests / rounds))
            mine, theirs, ratios, rps_ratios = [], [], [], []
            for r in range(rounds):
                sides = [("current", operation, current_port), ("ref", ref_operation, ref_port)]
                if (index + r) % 2:
                    sides.reverse()
                got = {}
                for side, op, port in sides:
                    got[side] = measure(args, clients, op, "http", concurrency, port, duration, budget)
                mine.append(got["current"])
                theirs.append(got["ref"])
                if got["current"].requests and got["ref"].requests:
                    ratios.append(got["current"].pct(0.5) / got["ref"].pct(0.5))
                    rps_ratios.append(got["current"].rps / got["ref"].rps)
            index += 1
            current, ref = Result.merged(mine), Result.merged(theirs)
            run.results[(operation.key, "http", concurrency)] = current
            run.compare.cells.append(CompareCell(operation.key, operation.label, concurrency, current, ref, ratios,
                                                 rps_ratios))
            log(f"[{index}/{total}] {operation.label} x{concurrency}: current {describe(current)}; "
                f"ref {describe(ref)}" + (f"; p50 ratio median {statistics.median(ratios):.2f}, req/s ratio median "
                                          f"{statistics.median(rps_ratios):.2f}" if ratios else ""))


def measure_writes(run: Run, clients: Clients, api: Api, port: int, auth_api: Api | None, auth_port: int,
                   keys: list[str]) -> None:
    """The writes group: single-message appends without a key (the table's
    "append 1 msg" cells, measured here), with a fresh Idempotency-Key per request,
    and on the API-key service with its Bearer key, in `--compare-rounds` rounds of
    each cell's budget per concurrency. In a round the variants run back to back (then
    the raw plain and keyed appends); the order reverses from round to round (ABC, CBA,
    ...), so a slow second of the machine hits every variant alike. Each round gives
    each variant's p50 over the plain append's of the same mode."""
    assert run.writes is not None
    args = run.args
    plain = Operation(PLAIN_APPEND, "append 1 msg, no key", "append", 1, fresh_contexts(api, 1, False))
    keyed = Operation(IDEMPOTENT_APPEND, "append 1 msg, fresh Idempotency-Key", "append", 1,
                      fresh_contexts(api, 1, False, idempotency_keys=True))
    variants: list[tuple[Operation, str, int]] = [(plain, "http", port)]
    if IDEMPOTENT_APPEND in keys:
        variants.append((keyed, "http", port))
    if AUTH_APPEND in keys and auth_api is not None:
        auth = Operation(AUTH_APPEND, "append 1 msg, API keys on (Bearer)", "append", 1,
                         fresh_contexts(auth_api, 1, False), dict(auth_api.headers))
        variants.append((auth, "http", auth_port))
    if not args.no_raw:
        variants.append((Operation(PLAIN_APPEND, "raw: append 1 msg", "append", 1,
                                   fresh_contexts(api, 1, False)), "raw", port))
        if IDEMPOTENT_APPEND in keys:
            variants.append((Operation(IDEMPOTENT_APPEND, "raw: key scope + append, one transaction", "append", 1,
                                       fresh_contexts(api, 1, False, idempotency_keys=True)), "raw", port))
    rounds = run.writes.rounds
    duration = args.duration / rounds
    budget = max(1, math.ceil(args.max_requests / rounds))
    index = 0
    for concurrency in args.clients:
        got: dict[tuple[str, str], list[Result]] = {(o.key, mode): [] for o, mode, _ in variants}
        ratios: dict[tuple[str, str], list[float]] = {(o.key, mode): [] for o, mode, _ in variants}
        for _ in range(rounds):
            order = variants if index % 2 == 0 else variants[::-1]
            index += 1
            this_round = {}
            for operation, mode, target in order:
                result = measure(args, clients, operation, mode, concurrency, target, duration, budget)
                got[(operation.key, mode)].append(result)
                this_round[(operation.key, mode)] = result
            for (key, mode), result in this_round.items():
                base = this_round[(PLAIN_APPEND, mode)]
                if result.requests and base.requests:
                    ratios[(key, mode)].append(result.pct(0.5) / base.pct(0.5))
        merged = {cell: Result.merged(parts) for cell, parts in got.items()}
        for operation, mode, _ in variants:
            result = merged[(operation.key, mode)]
            if operation.key == PLAIN_APPEND:  # the table's "append 1 msg" row
                run.results[(PLAIN_APPEND, mode, concurrency)] = result
            run.writes.rows.append(WriteRow(operation.key, operation.label, mode, concurrency, result,
                                            merged[(PLAIN_APPEND, mode)], ratios[(operation.key, mode)]))
            if operation.key == IDEMPOTENT_APPEND:
                run.writes.keyed_requests += result.requests
            log(f"[writes] {operation.label} x{concurrency}: {describe(result)}")
