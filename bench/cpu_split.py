"""Where the machine's CPU goes per request at N clients: the load generator, the
gunicorn workers, PostgreSQL.

    python -m bench.cpu_split                                   # get, 8 clients, this tree
    python -m bench.cpu_split --ref 1f68318 --op window --rounds 4
    python -m bench.cpu_split --clients 1 --op list
    python -m bench.cpu_split --op append --raw                 # single appends, and the same store calls raw
    python -m bench.cpu_split --compare-env GUNICORN_THREADS=2  # this tree twice, the second with that setting

At 8 clients the two cores of this machine are full, and throughput is set by the
CPU each request costs in all: the client processes of bench/driver.py (libcurl, or
`http.client` with `--http-client http.client`),
the service's workers, the embedded PostgreSQL. This starts the embedded server, the
service (2 workers; and with `--ref REF` a second service running a git ref, exported
as compare mode does), loads one context of `--size` messages into each, and runs
`--rounds` cells of `--seconds` per service, alternating which goes first; per cell it
reads user + system CPU time (psutil) of each process group before and after and
divides by the requests served. PostgreSQL is the embedded postmaster and its
children only (other sessions' servers on a shared machine are not counted). The
table gives medians over the rounds. Loopback only, stopped in a `finally`.

`--op append` is bench.run's `append 1 msg` cell: each client appends one message
(no token_count: the service counts) to a fresh context of its own. `--raw` adds a
row of the raw mode on the current tree's database (bench/raw.py: the same store
calls in the client processes, no HTTP; its "clients" are the store's Python),
alternating with the services, so a svc/raw ratio splits into process groups.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import driver, load, services
from bench.cells import Result
from bench.cli import export_tree, resolve_ref
from bench.common import REPO, interrupt, log, uninterrupted

OPS = {
    "get": lambda context, size: {"context_id": context, "head": size},
    "list": lambda context, size: {"context_id": context, "limit": 50},
    "window": lambda context, size: {"context_id": context, "max_tokens": 2000},
    "append": lambda context, size: {"context_id": context, "batch_size": 1, "explicit_tokens": False},
}
GROUPS = ("clients", "workers", "postgres")


def _cpu(processes: list[psutil.Process]) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds per pid, of the processes still alive."""
    times = {}
    for process in processes:
        try:
            cpu = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        times[process.pid] = (cpu.user, cpu.system)
    return times


def _spent(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]) -> tuple[float, float]:
    """(user, system) CPU seconds a group spent between two readings; a process that
    started in between (a PostgreSQL backend for a new connection) counts from zero."""
    user = sum(u - before.get(pid, (0.0, 0.0))[0] for pid, (u, _) in after.items())
    system = sum(s - before.get(pid, (0.0, 0.0))[1] for pid, (_, s) in after.items())
    return user, system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_split", description=__doc__.split("\n")[0])
    parser.add_argument("--op", default="get", choices=sorted(OPS))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--http-client", choices=sorted(driver.HTTP_CLIENTS), default=driver.DEFAULT_HTTP_CLIENT,
                        help="the load generator's HTTP library (bench/driver.py)")
    parser.add_argument("--seconds", type=float, default=6.0, help="per cell (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="cells per service (default 3)")
    parser.add_argument("--size", type=int, default=1000, help="messages in the context read (default 1000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ref", help="also run this git ref's service, alternating with the current tree")
    parser.add_argument("--compare-env", action="append", default=[], metavar="NAME=VALUE",
                        help="also run a second service (--ref's code, else the current tree's) with this "
                             "environment; repeatable")
    parser.add_argument("--raw", action="store_true", help="also run the raw mode (bench/raw.py) on the current "
                        "tree's database, alternating with the services")
    args = parser.parse_args(argv)
    for item in args.compare_env:
        if "=" not in item:
            parser.error(f"expected NAME=VALUE, not {item!r}")
    home = Path(tempfile.mkdtemp(prefix="bench-cpu-split-"))
    service_args = argparse.Namespace(workers=args.workers, threads=None, log_level="info", service_env=[])
    embedded, url = services.start_embedded(home / "pg")
    started: list[tuple[services.Service, str]] = []
    clients = None
    previous_term = signal.signal(signal.SIGTERM, interrupt)
    try:
        # postmaster.pid's first line is the postmaster's pid (PostgreSQL's own file)
        postmaster = psutil.Process(int((embedded.pgdata / "postmaster.pid").read_text().split()[0]))
        trees = [("current", REPO)]
        if args.ref:
            folder = home / "ref"
            folder.mkdir()
            export_tree(resolve_ref(args.ref), folder)
            trees.append((args.ref, folder))
        elif args.compare_env:
            trees.append(("current", REPO))
        for index, (name, code) in enumerate(trees):
            if index == 1 and args.compare_env:
                name = f"{name} {' '.join(args.compare_env)}"
            service = services.Service(name=name, code_dir=code,
                                       database_url=services.create_database(url, f"cpu_split_{index}"),
                                       home=home / f"service{index}", log_path=home / f"service{index}.log")
            extra = args.compare_env if index == 1 else []
            service.start(argparse.Namespace(**{**vars(service_args), "service_env": extra}),
                          require_own_code=code != REPO)
            assert service.api is not None
            started.append((service, _contexts(service.api, args)))
        # Raw clients run the store on the current tree's database (its contexts).
        clients = driver.Clients(args.clients, started[0][0].database_url, args.http_client)
        cells: list[tuple[str, services.Service, list[str]]] = [(s.name, s, c) for s, c in started]
        if args.raw:
            cells.insert(1, ("raw", started[0][0], started[0][1]))
        rows: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in cells}
        load_at_start = psutil.getloadavg()[0]
        for round_ in range(args.rounds):
            for cell, service, contexts in cells if round_ % 2 == 0 else cells[::-1]:
                assert service.proc is not None
                mode = "raw" if cell == "raw" else "http"
                groups = {
                    "clients": lambda: [psutil.Process(p.pid) for p in clients.procs],
                    "workers": lambda: psutil.Process(service.proc.pid).children() if mode == "http" else [],
                    "postgres": lambda: [postmaster, *postmaster.children()],
                }
                specs = [{"mode": mode, "op": args.op, "port": service.port, "seed": 100 + k,
                          "args": {**OPS[args.op](contexts[k], args.size), "seed": 100 + k},
                          "max_requests": 10**9, "duration": args.seconds} for k in range(args.clients)]
                before = {name: _cpu(group()) for name, group in groups.items()}
                began = time.monotonic()
                results = clients.run(specs, args.seconds)
                wall = time.monotonic() - began
                spent = {name: _spent(before[name], _cpu(group())) for name, group in groups.items()}
                served = Result.of_answers(results).requests
                row = {"req/s": served / wall}
                for name in GROUPS:
                    row[name] = 1e6 * sum(spent[name]) / served
                row["workers system"] = 1e6 * spent["workers"][1] / served
                row["cores busy"] = sum(row[name] for name in GROUPS) * served / wall / 1e6
                rows[cell].append(row)
                log(f"round {round_ + 1} {cell}: " + ", ".join(f"{k} {v:.0f}" if k != "cores busy"
                                                                      else f"{k} {v:.2f}" for k, v in row.items()))
        print(f"# bench.cpu_split {time.strftime('%Y-%m-%d %H:%M')} UTC: {args.op} of a context of {args.size} "
              f"messages, {args.clients} {args.http_client} clients, {args.rounds} rounds of {args.seconds:g} s, "
              f"load average {load_at_start:.2f} at start; medians of the rounds, CPU in µs per request")
        print("| service | req/s | clients | workers | of which system | postgres | all | cores busy |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name in rows:
            def median(key: str, name: str = name) -> float:
                return statistics.median(r[key] for r in rows[name])
            total = statistics.median(sum(r[g] for g in GROUPS) for r in rows[name])
            print(f"| {name} | {median('req/s'):,.0f} | {median('clients'):.0f} | {median('workers'):.0f} | "
                  f"{median('workers system'):.0f} | {median('postgres'):.0f} | {total:.0f} | "
                  f"{median('cores busy'):.2f} |")
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        with uninterrupted():
            if clients is not None:
                clients.stop()
            for service, _ in started:
                service.stop()
            embedded.stop()
            shutil.rmtree(home, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous_term)


def _contexts(api: services.Api, args: argparse.Namespace) -> list[str]:
    """The context each client works on: one loaded context of --size messages for
    every reader; a fresh empty one per client for appends (as bench.run's cells)."""
    if args.op == "append":
        return [api.call("POST", "/v1/contexts", {"metadata": {"bench": "cpu-split"}}, 201)["id"]
                for _ in range(args.clients)]
    return [load.load_context(api, args.size, seed=1)] * args.clients


if __name__ == "__main__":
    sys.exit(main())
