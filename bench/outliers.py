"""Slow single requests in a long sequential run of single-message appends, and
what happened at the same moment.

    python -m bench.outliers --requests 20000            # about 1 minute
    python -m bench.outliers --requests 20000 --threshold-ms 20 --service-env LOG_LEVEL=info

It starts an embedded PostgreSQL with log_checkpoints, log_autovacuum_min_duration=0
and log_min_duration_statement (--statement-ms) on, and the service (2 workers, as
bench/run.py starts it, access lines at info), creates one context, and sends
--requests appends of one message (token count left to the server) one after the
other on one keep-alive connection, each with its own X-Request-Id. For every
request slower than --threshold-ms it prints the client's latency, the duration
the service's access line gives for the same request id (the time inside the
Falcon app: pool, statement, tokenizer, our Python) and the PostgreSQL and
service log lines within a second of it (checkpoints, autovacuum, slow
statements, pool messages). Loopback only, bounded by --requests, everything
stopped in a `finally`.
"""

from __future__ import annotations

import argparse
import calendar
import http.client
import os
import re
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import orjson

from bench import services
from bench.common import log

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
ACCESS = re.compile(r"^(\S+ \S+) \d+ INFO context_store\.access: POST \S+ (\d+) ([0-9.]+)ms request_id=(\S+)$")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--threshold-ms", type=float, default=20.0, help="report requests slower than this")
    parser.add_argument("--statement-ms", type=int, default=20, help="PostgreSQL's log_min_duration_statement")
    parser.add_argument("--checkpoint-seconds", type=int, default=0,
                        help="PostgreSQL's checkpoint_timeout (30..3600; default: the server's, 5 min)")
    parser.add_argument("--code-dir", type=Path, default=None,
                        help="run the service from this copy of service/ and sql/ (e.g. git archive REF service sql)")
    parser.add_argument("--service-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 200_000:
        parser.error("--requests must be within 1..200000")
    if args.checkpoint_seconds and not 30 <= args.checkpoint_seconds <= 3600:
        parser.error("--checkpoint-seconds must be within 30..3600")
    return args


def configure_postgres(url: str, statement_ms: int, checkpoint_seconds: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if checkpoint_seconds:
            conn.execute(f"ALTER SYSTEM SET checkpoint_timeout = {int(checkpoint_seconds)}")
        conn.execute("ALTER SYSTEM SET log_checkpoints = on")
        conn.execute("ALTER SYSTEM SET log_autovacuum_min_duration = 0")
        conn.execute(f"ALTER SYSTEM SET log_min_duration_statement = {int(statement_ms)}")
        conn.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] '")
        conn.execute("ALTER SYSTEM SET log_timezone = 'UTC'")
        conn.execute("ALTER SYSTEM SET log_lock_waits = on")
        conn.execute("SELECT pg_reload_conf()")


def postgres_lines(pgdata: Path) -> list[tuple[float, str]]:
    """(epoch seconds, line) of every timestamped line of the server's log files (UTC, see configure_postgres)."""
    out = []
    stamp = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) UTC ")
    # pgserver starts the server with `-l pgdata/log`; a logging collector would write under log/.
    paths = [pgdata / "log"] if (pgdata / "log").is_file() else sorted(pgdata.rglob("*.log"))
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            match = stamp.match(line)
            if match:
                when = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
                out.append((when, f"{path.name}: {line}"))
    return out


def service_lines(path: Path) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """(request id -> app duration in ms, (epoch seconds, line) of every other line)."""
    durations, others = {}, []
    stamp = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
    for line in path.read_text(errors="replace").splitlines():
        match = ACCESS.match(line)
        if match:
            durations[match.group(4)] = float(match.group(3))
            continue
        when = stamp.match(line)
        if when:
            seconds = time.mktime(time.strptime(when.group(1), "%Y-%m-%d %H:%M:%S")) + int(when.group(2)) / 1000
            others.append((seconds, line))
    return durations, others


def main(argv=None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="cs-outliers-"))
    embedded = svc = None
    samples: list[tuple[float, float, str]] = []  # (epoch start, ms, request id)
    try:
        embedded, url = services.start_embedded(home)
        configure_postgres(url, args.statement_ms, args.checkpoint_seconds)
        code = args.code_dir.resolve() if args.code_dir is not None else REPO
        svc = services.Service("current" if args.code_dir is None else str(code), code, url, home,
                               OUT_DIR / f"outliers-{stamp}.log")
        svc.start(SimpleNamespace(workers=2, threads=None, log_level="info", service_env=args.service_env),
                  require_own_code=args.code_dir is not None)
        context = svc.api.call("POST", "/v1/contexts", {}, expected=201)["id"]
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=60)
        path = f"/v1/contexts/{context}/messages"
        body = orjson.dumps({"messages": [{"role": "user", "content": "An ordinary message of a dozen words or so."}]})
        log(f"{args.requests} sequential appends to {context}")
        for n in range(args.requests):
            rid = f"outlier-{n}"
            started_wall = time.time()
            started = time.perf_counter()
            conn.request("POST", path, body, {"Content-Type": "application/json", "X-Request-Id": rid})
            response = conn.getresponse()
            response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if response.status != 201:
                raise RuntimeError(f"append {n}: {response.status}")
            samples.append((started_wall, elapsed, rid))
        conn.close()
    finally:
        if svc is not None:
            svc.stop()
        if embedded is not None:
            embedded.stop()
    durations, service_log = service_lines(svc.log_path)
    pg_log = postgres_lines(home / "pgdata")
    shutil.rmtree(home, ignore_errors=True)
    latencies = sorted(ms for _, ms, _ in samples)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    lines = [
        (f"# bench.outliers {stamp}: {len(samples)} sequential single-message appends, "
         f"load average {os.getloadavg()[0]:.2f}"),
        (f"p50 {statistics.median(latencies):.2f} ms, p99 {pct(0.99):.2f}, p99.9 {pct(0.999):.2f}, "
         f"max {latencies[-1]:.1f} ms; checkpoints logged: "
         f"{sum('checkpoint complete' in line for _, line in pg_log)}"),
    ]
    slow = [(when, ms, rid) for when, ms, rid in samples if ms > args.threshold_ms]
    lines.append(f"{len(slow)} requests over {args.threshold_ms:g} ms:")
    for when, ms, rid in slow:
        inside = durations.get(rid)
        lines.append(f"- {datetime.fromtimestamp(when).strftime('%H:%M:%S.%f')[:-3]} {rid}: client {ms:.1f} ms, "
                     f"in the app {inside if inside is not None else '?'} ms")
        for at, line in [*pg_log, *service_log]:
            if when - 1.0 <= at <= when + ms / 1000 + 1.0:
                lines.append(f"    {line[:200]}")
    report = "\n".join(lines)
    print(report)
    (OUT_DIR / f"outliers-{stamp}.txt").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
