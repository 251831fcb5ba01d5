"""The suite's command line and its order of work (see bench/README.md).

    python -m bench.run --quick            # smoke run, about 1-2 minutes
    python -m bench.run                    # default run, under 10 minutes on 2 cores
    python -m bench.run --full             # adds a 1,000,000-message context (window only)
    python -m bench.run --write-results    # also rewrites bench/RESULTS.md

What a run does, in order:

1. starts an embedded PostgreSQL on a fresh temporary CONTEXT_STORE_HOME, then the
   service under gunicorn (2 workers) on a free loopback port with DATABASE_URL
   pointing at that server, and waits for /health (services.py);
2. bulk-loads contexts of 1,000 / 10,000 / 100,000 messages through the API in
   batches of 1000, and a chain of 32 forks (load.py);
3. runs every operation (cells.py) at 1 and 8 concurrent clients, each client its own
   process with one keep-alive HTTP/1.1 connection to 127.0.0.1 (driver.py), then the
   same named SQL statements straight through psycopg (raw.py);
4. prints the table, the service/raw ratios, the targets with pass/fail, worker
   memory and the database size per million messages, and writes them
   as markdown under bench/out/ (and bench/RESULTS.md with --write-results) (report.py);
5. stops gunicorn (SIGTERM to the master) and the embedded server, whatever happened,
   and removes the temporary home.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from bench import cells, facts, load, report, services
from bench.common import OUT_DIR, REPO, RESULTS_MD, log
from bench.driver import Clients

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


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = cells.Run(args=args, started=datetime.now(timezone.utc))
    run.info["command"] = report.command_line()
    run.info["machine"] = report.machine()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = run.started.strftime("%Y%m%d-%H%M%S")
    home = Path(tempfile.mkdtemp(prefix="context-store-bench-"))
    embedded = clients = None
    started: list[services.Service] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        log(f"starting embedded PostgreSQL in {home}")
        embedded, database_url = services.start_embedded(home)
        current = services.Service("current", REPO, database_url, home, OUT_DIR / f"gunicorn-{stamp}.log")
        started.append(current)
        current.start(args)
        run.info["service_version"] = current.health.get("version")
        run.info["tokenizer"] = (current.health.get("tokenizer")
                                 or (current.health.get("tokens") or {}).get("tokenizer") or "?")
        assert current.api is not None
        data = load.load_all(current.api, args.sizes, args.full)
        run.load_rate = data.rates
        services.vacuum(database_url)
        run.operations = cells.plan(current.api, args.sizes, data, args.only)
        log(f"starting {max(args.clients)} client processes")
        clients = Clients(max(args.clients), database_url)
        cells.measure_table(run, clients, current.port)

        cells.measure_pairs(run, clients, current.port)
        assert current.proc is not None
        run.info["memory"] = services.worker_memory(current.proc)
        largest = args.sizes[-1]
        try:
            found, plans = facts.database_facts(database_url, data.contexts[largest], largest, data.chain,
                                                not args.no_explain)
        except Exception as exc:  # the table is worth printing anyway
            log(f"reading the database facts failed: {type(exc).__name__}: {exc}")
            found, plans = {}, []
        run.info.update(found)
        run.explain = plans
        if found:
            run.info["db_size"] = facts.storage_line(found)

        report.print_report(run)
        markdown = report.render_markdown(run)
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
        if clients is not None:
            clients.stop()
        for service in reversed(started):
            service.stop()
        if embedded is not None:
            log("stopping embedded PostgreSQL")
            embedded.stop()
        shutil.rmtree(home, ignore_errors=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
