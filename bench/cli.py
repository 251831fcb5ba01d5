"""The suite's command line and its order of work (see bench/README.md).

    python -m bench.run --quick            # smoke run, about 1-2 minutes
    python -m bench.run                    # default run, under 10 minutes on 2 cores
    python -m bench.run --full             # adds a 1,000,000-message context (window only)
    python -m bench.run --write-results    # also rewrites bench/RESULTS.md
    python -m bench.run --compare HEAD~3   # the same cells on the current tree and on a git ref

What a run does, in order:

1. starts an embedded PostgreSQL on a fresh temporary CONTEXT_STORE_HOME, then the
   service under gunicorn (2 workers) on a free loopback port with DATABASE_URL
   pointing at that server, and waits for /health (services.py); with --compare, also
   the ref's service, from its exported tree, on its own database of the same server;
   for the writes group, a service of the current tree on a database with an API key;
2. bulk-loads contexts of 1,000 / 10,000 / 100,000 messages through the API in
   batches of 1000, and a chain of 32 forks (load.py), on each compared service;
3. runs every operation (cells.py) at 1 and 8 concurrent clients, each client its own
   process with one keep-alive HTTP/1.1 connection to 127.0.0.1 (driver.py), then the
   same named SQL statements straight through psycopg (raw.py); with --compare, the
   HTTP cells only, alternating between the two services; then (not in compare mode)
   the writes group: single-message appends without a key, with a fresh
   Idempotency-Key per request, and on another service of the current tree whose
   database (of the same server) holds one API key, with its Bearer key, in paired
   rounds (cells.measure_writes);
4. prints the table, the service/raw ratios, the targets with pass/fail, the compare
   table, worker memory and the database size per million messages, and writes them
   as markdown under bench/out/ (and bench/RESULTS.md with --write-results) (report.py);
5. stops gunicorn (SIGTERM to the master) and the embedded server, whatever happened,
   and removes the temporary folders.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from bench import cells, facts, load, report, services
from bench.common import OUT_DIR, REPO, RESULTS_MD, interrupt, log, uninterrupted

# bench/RESULTS.md from this line on holds other suites' figures; --write-results keeps it.
OTHER_SUITES = "<!-- other suites -->"
from bench.driver import DEFAULT_HTTP_CLIENT, HTTP_CLIENTS, KEY_PREFIX, Clients

REF_DATABASE = "context_store_bench_ref"
AUTH_DATABASE = "context_store_bench_auth"


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
    parser.add_argument("--http-client", choices=sorted(HTTP_CLIENTS), default=DEFAULT_HTTP_CLIENT,
                        help="the HTTP clients' library: curl (libcurl through pycurl, the default since "
                             "2026-11-27 12:00) or http.client (every table before then; about twice the "
                             "client CPU per request)")
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
                             "(create, append, list, window, get, fork, forkwin; the writes group's "
                             "append1-idem and append1-auth)")
    parser.add_argument("--no-write-keys", action="store_true",
                        help="skip the writes group (appends with an Idempotency-Key and with API keys on, "
                             "and the service with a key)")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw SQL cells")
    parser.add_argument("--no-explain", action="store_true",
                        help="skip EXPLAIN ANALYZE of the read statements on the largest context")
    parser.add_argument("--write-results", action="store_true", help="also rewrite bench/RESULTS.md")
    parser.add_argument("--rounds", type=int, default=None,
                        help="paired rounds for the size-ratio targets: the small and the large context "
                             "alternate, 1 client, 1 s each, and the median of the per-round p50 ratios "
                             "is reported (default 5; --quick 2; 0 to use the table's cells)")
    parser.add_argument("--svc-raw-rounds", type=int, default=1,
                        help="split every cell into this many rounds of its budget, the service and raw "
                             "alternating round by round; the svc/raw targets then report the median of the "
                             "per-round ratios (default 1: each mode's cell whole, one after the other)")
    parser.add_argument("--compare", metavar="REF", default=None,
                        help="also start the service of git ref REF (its own database, same data) and run "
                             "every cell on both, alternating; prints a compare table (raw cells skipped)")
    parser.add_argument("--compare-rounds", type=int, default=None,
                        help="compare mode: every cell runs in this many rounds of the cell's budget, "
                             "alternating the two services, for median p50 and req/s ratios; the writes group's "
                             "cells too, alternating the variants (default 3; --quick 2)")
    args = parser.parse_args(argv)
    args.sizes = sorted(set(args.sizes or ([1000, 10000] if args.quick else [1000, 10000, 100000])))
    args.duration = args.duration if args.duration is not None else (0.5 if args.quick else 3.0)
    args.max_requests = args.max_requests if args.max_requests is not None else (2000 if args.quick else 20000)
    args.clients = sorted(set(args.clients))
    args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    if not 0 <= args.rounds <= 50:
        parser.error("--rounds: 0..50")
    if not 1 <= args.svc_raw_rounds <= 20:
        parser.error("--svc-raw-rounds: 1..20")
    args.compare_rounds = args.compare_rounds if args.compare_rounds is not None else (2 if args.quick else 3)
    if not 1 <= args.compare_rounds <= 20:
        parser.error("--compare-rounds: 1..20")
    if args.compare is not None:
        if not args.compare.strip() or args.compare.startswith("-"):
            parser.error("--compare: give a git ref, e.g. HEAD~3 or a commit hash")
        try:
            args.compare_commit = resolve_ref(args.compare)
        except RuntimeError as exc:
            parser.error(str(exc))
        args.no_raw = True  # the raw statements are the current tree's: nothing to compare
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


# ---------------------------------------------------------------- compare mode


def resolve_ref(ref: str) -> str:
    """The full commit hash of a git ref of this repository."""
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"--compare {ref}: not a commit of {REPO}")
    return out.stdout.strip()


def export_tree(commit: str, dest: Path) -> None:
    """The files of `commit` into `dest`, read from git's objects (no worktree is
    registered, nothing in the repository changes)."""
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                               stdout=subprocess.PIPE)
    try:
        subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True, timeout=300)
    finally:
        assert archive.stdout is not None
        archive.stdout.close()
        if archive.wait(timeout=60) != 0:
            raise RuntimeError(f"git archive {commit} failed with {archive.returncode}")


def check_two_codes(current: services.Service, ref: services.Service, compare: cells.Compare) -> None:
    """Record which code each service runs (Service.start already refused a ref whose
    `import service` left its exported tree). The OpenAPI documents are compared for
    the report only: a ref may well serve the same contract."""
    compare.current_module, compare.ref_module = current.module_file, ref.module_file
    if ref.module_file == current.module_file:
        raise RuntimeError(f"both services run {ref.module_file}: refusing to compare the code with itself")
    assert current.api is not None and ref.api is not None
    a, b = current.api.raw_call("GET", "/openapi.json"), ref.api.raw_call("GET", "/openapi.json")
    if a[0] == b[0] == 200:
        compare.openapi = ("identical in both" if a[1] == b[1]
                           else f"differs ({len(a[1]):,} vs {len(b[1]):,} bytes)")
    else:
        compare.openapi = f"answered {a[0]} (current) and {b[0]} (ref)"
    log(f"code: current {current.module_file}; {ref.name} {ref.module_file}; /openapi.json {compare.openapi}")


# ---------------------------------------------------------------- the writes group


def check_keyed_writes(run: cells.Run, database_url: str) -> None:
    """Count the idempotency keys the keyed cells left: at least one per measured
    keyed request, or those cells did not measure what they claim."""
    assert run.writes is not None
    if cells.IDEMPOTENT_APPEND not in {row.key for row in run.writes.rows}:
        return
    run.writes.recorded = services.recorded_keys(database_url, KEY_PREFIX)
    log(f"idempotency keys recorded: {run.writes.recorded:,} for {run.writes.keyed_requests:,} measured keyed "
        "requests (and their warm-up)")
    if run.writes.recorded < run.writes.keyed_requests:
        raise RuntimeError("the keyed appends recorded fewer idempotency keys than they sent requests")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = cells.Run(args=args, started=datetime.now(timezone.utc))
    run.info["command"] = report.command_line()
    run.info["machine"] = report.machine()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = run.started.strftime("%Y%m%d-%H%M%S")
    home = Path(tempfile.mkdtemp(prefix="context-store-bench-"))
    ref_dir: Path | None = None
    embedded = clients = None
    started: list[services.Service] = []
    previous_term = signal.signal(signal.SIGTERM, interrupt)
    try:
        if args.compare is not None:
            commit = args.compare_commit
            run.compare = cells.Compare(ref=args.compare, commit=commit)
            ref_dir = Path(tempfile.mkdtemp(prefix="context-store-ref-"))
            log(f"exporting {args.compare} ({commit}) into {ref_dir}")
            export_tree(commit, ref_dir)

        log(f"starting embedded PostgreSQL in {home}")
        embedded, database_url = services.start_embedded(home)
        current = services.Service("current", REPO, database_url, home, OUT_DIR / f"gunicorn-{stamp}.log")
        started.append(current)
        current.start(args)
        run.info["service_version"] = current.health.get("version")
        run.info["tokenizer"] = (current.health.get("tokenizer")
                                 or (current.health.get("tokens") or {}).get("tokenizer") or "?")
        write_keys = cells.write_keys(args)
        auth = None
        if cells.AUTH_APPEND in write_keys:
            # Its own database of the same server, with one key from before it starts:
            # every worker requires keys from its first request, whatever the cache TTL.
            auth_url = services.create_database(database_url, AUTH_DATABASE)
            auth = services.Service("auth", REPO, auth_url, home / "auth", OUT_DIR / f"gunicorn-{stamp}-auth.log",
                                    bearer=services.create_api_key(auth_url))
            started.append(auth)
            auth.start(args)
            services.require_keys(auth.port)
        if write_keys:
            run.writes = cells.Writes(
                rounds=args.compare_rounds,
                auth=("its own database (context_store_bench_auth) of the same server, one API key created "
                      "through the store before it started; clients send Authorization: Bearer <key>"
                      if auth is not None else "not measured"),
            )
        elif run.compare is not None and not args.no_write_keys:
            log("compare mode: the writes group (keyed appends, API keys) is not run")
        ref = None
        if run.compare is not None:
            assert ref_dir is not None
            ref_url = services.create_database(database_url, REF_DATABASE)
            ref = services.Service(args.compare, ref_dir, ref_url, home / "ref",
                                   OUT_DIR / f"gunicorn-{stamp}-ref.log")
            started.append(ref)
            ref.start(args, require_own_code=True)
            check_two_codes(current, ref, run.compare)

        assert current.api is not None
        data = load.load_all(current.api, args.sizes, args.full)
        run.load_rate = data.rates
        services.vacuum(database_url)
        run.operations = cells.plan(current.api, args.sizes, data, args.only)
        log(f"starting {max(args.clients)} client processes")
        clients = Clients(max(args.clients), database_url, args.http_client)
        if ref is not None and run.compare is not None:
            assert ref.api is not None
            ref_data = load.load_all(ref.api, args.sizes, args.full, name=ref.name)
            run.compare.load_rate = ref_data.rates
            services.vacuum(ref.database_url)
            ref_ops = cells.plan(ref.api, args.sizes, ref_data, args.only)
            cells.measure_compare(run, clients, current.port, ref_ops, ref.port)
        else:
            # with the writes group, the "append 1 msg" cells are its plain variant
            skip = frozenset({cells.PLAIN_APPEND}) if write_keys else frozenset()
            cells.measure_table(run, clients, current.port, skip)
            if write_keys:
                cells.measure_writes(run, clients, current.api, current.port,
                                     auth.api if auth is not None else None, auth.port if auth is not None else 0,
                                     write_keys)
                check_keyed_writes(run, database_url)

        cells.measure_pairs(run, clients, current.port)
        assert current.proc is not None
        run.info["memory"] = services.worker_memory(current.proc)
        if ref is not None and ref.proc is not None and run.compare is not None:
            run.compare.memory = services.worker_memory(ref.proc)
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
            # Sections other suites wrote (from the marker on) are kept as they are.
            kept = ""
            if RESULTS_MD.exists():
                previous = RESULTS_MD.read_text(encoding="utf-8")
                if OTHER_SUITES in previous:
                    kept = "\n" + previous[previous.index(OTHER_SUITES):]
            RESULTS_MD.write_text(
                "<!-- Written by `python -m bench.run --write-results`; the latest run replaces it"
                " up to the marker below. -->\n" + markdown + kept, encoding="utf-8")
            print(f"wrote {RESULTS_MD.relative_to(REPO)}")
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        with uninterrupted():
            if clients is not None:
                clients.stop()
            for service in reversed(started):
                service.stop()
            if embedded is not None:
                log("stopping embedded PostgreSQL")
                embedded.stop()
            shutil.rmtree(home, ignore_errors=True)
            if ref_dir is not None:
                shutil.rmtree(ref_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous_term)
