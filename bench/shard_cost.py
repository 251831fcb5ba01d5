"""What carrying the shard key (messages.root_id, migration 0007) costs, paired.

Two databases on one embedded PostgreSQL: one migrated to 0006 and served by the
store of the release before 0007 (a git ref, extracted into a temporary folder and
imported as `service_base`), one migrated to 0007 and served by the current store.
Both are filled the same way (the same context ids, messages and times, straight
into the tables), then:

- storage: pg_total_relation_size of messages (heap, TOAST, every index) per
  million messages, and per thousand contexts for contexts (+ context_roots);
- latency: the p50 of an append of one message and of a 2000-token window through
  each store (Store.messages.append / .window), calls interleaved between the two
  stores in a shuffled order each round so that both see the same machine; the 0007 store with its root cache warm
  (the common case) and emptied before every call (a miss: one more lookup);
- the backfill: how long migrating the filled 0006 database to 0007 takes.

    python -m bench.shard_cost                      # 200,000 messages, 2 x 600 calls: a few minutes
    python -m bench.shard_cost --messages 50000 --calls 200   # smoke run

Everything it starts (the server, its temporary folder) is stopped and removed at
the end. Only the embedded server's socket is used.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

if __package__ in (None, ""):  # `python bench/shard_cost.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, log  # noqa: E402
from service.embedded import EmbeddedPostgres  # noqa: E402
from service.ids import uuid7  # noqa: E402
from service.migrate import migrate  # noqa: E402
from service.paths import sql_dir  # noqa: E402
from service.queries.roots import Roots  # noqa: E402

PER_CONTEXT = 1000  # messages per context in the fill
TOKENS = 30  # every message's token count: a 2000-token window is 66 messages
TENANT = "default"


def base_ref() -> str:
    """The commit before migration 0007 was added."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "HEAD", "--", "sql/migrations/0007_shard_key.sql"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.strip()
    if not added:
        raise SystemExit("0007_shard_key.sql is not committed: pass --base")
    return f"{added}^"


def import_base(ref: str, folder: Path) -> Any:
    """The service package of `ref`, importable as service_base beside the current one."""
    archive = subprocess.run(["git", "archive", ref, "service", "sql"], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "service").rename(folder / "service_base")
    (folder / "sql").rename(folder / "service_base" / "sql")
    sys.path.insert(0, str(folder))
    return importlib.import_module("service_base")


def create_database(admin: str, name: str) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    return make_conninfo(admin, dbname=name)


def fill(url: str, contexts: list, *, with_root: bool) -> None:
    """PER_CONTEXT messages in each context, identical in both databases but for root_id."""
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    root_column = ", root_id" if with_root else ""
    root_value = ", c.id" if with_root else ""
    with psycopg.connect(url) as conn:
        for i in range(0, len(contexts), 20):
            chunk = contexts[i:i + 20]
            conn.execute(
                "INSERT INTO contexts (id, root_id, head_version, total_tokens, created_at, updated_at) "
                "SELECT c.id, c.id, %(n)s, %(n)s * %(t)s, %(at)s, %(at)s FROM unnest(%(ids)s::uuid[]) AS c (id)",
                {"ids": chunk, "n": PER_CONTEXT, "t": TOKENS, "at": start + timedelta(days=1)},
            )
            # At 0007 the trigger contexts_record_root writes context_roots.
            conn.execute(
                "INSERT INTO messages (context_id, version, role, content, token_count, cum_tokens, created_at"
                f"{root_column}) "
                "SELECT c.id, v, CASE WHEN v %% 2 = 1 THEN 'user' ELSE 'assistant' END, "
                "       md5(c.id::text || v) || repeat(' the quick brown fox', 2 + v %% 13), %(t)s, %(t)s * v, "
                f"      %(at)s + v * interval '1 ms'{root_value} "
                "FROM unnest(%(ids)s::uuid[]) AS c (id), generate_series(1, %(n)s) AS v",
                {"ids": chunk, "n": PER_CONTEXT, "t": TOKENS, "at": start},
            )
            conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) contexts, messages")


def sizes(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid) "
            "FROM pg_class AS c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i') "
            "AND c.relname NOT LIKE 'schema_migrations%%'"
        ).fetchall()
    out = {}
    for name, total, own in rows:
        out[name] = own
        out[f"{name} (total)"] = total
    return out


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="messages in each database (default 200000)")
    parser.add_argument("--calls", type=int, default=600, help="calls of each kind to each store (default 600)")
    parser.add_argument("--base", help="git ref of the release before 0007 (default: the commit before it)")
    args = parser.parse_args(argv)
    n_contexts = max(1, args.messages // PER_CONTEXT)
    messages = n_contexts * PER_CONTEXT

    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken"))
    home = Path(tempfile.mkdtemp(prefix="shard-cost-"))
    server = EmbeddedPostgres(home)
    databases = []
    try:
        import_base(args.base or base_ref(), home)
        admin = server.start()
        old_url, new_url = (create_database(admin, f"shard_cost_{tag}") for tag in ("0006", "0007"))
        databases = [old_url, new_url]
        folder = home / "migrations-0006"
        folder.mkdir()
        for path in sorted((sql_dir() / "migrations").glob("000[1-6]_*.sql")):
            shutil.copy(path, folder)
        migrate(old_url, folder)
        migrate(new_url)

        contexts = [uuid7() for _ in range(n_contexts)]
        log(f"filling {messages:,} messages in {n_contexts} contexts, twice")
        fill(old_url, contexts, with_root=False)
        fill(new_url, contexts, with_root=True)
        old_sizes, new_sizes = sizes(old_url), sizes(new_url)

        def build(package: str, url: str) -> tuple[Any, Any]:
            config, db_module, queries, tokens = (importlib.import_module(f"{package}.{name}")
                                                  for name in ("config", "db", "queries", "tokens"))
            settings = config.Settings(database_url=url, pool_min_size=1, pool_max_size=2)
            db = db_module.Database(settings, url)
            db.pool.open(wait=True)
            return db, queries.Store.build(settings, db, tokens.load_tokenizer("o200k_base"))

        old_db, old_store = build("service_base", old_url)
        new_db, new_store = build("service", new_url)
        try:
            window_id, append_id = contexts[len(contexts) // 2], contexts[0]
            batch = [{"role": "user", "content": "one more message", "token_count": TOKENS}]
            warm = new_store.messages.roots

            def miss_window():
                new_store.messages.roots = Roots()  # an empty cache: the call is a miss
                try:
                    new_store.messages.window(TENANT, window_id, max_tokens=2000)
                finally:
                    new_store.messages.roots = warm

            calls = {
                ("append", "0006"): lambda: old_store.messages.append(TENANT, append_id, batch),
                ("append", "0007"): lambda: new_store.messages.append(TENANT, append_id, batch),
                ("window", "0006"): lambda: old_store.messages.window(TENANT, window_id, max_tokens=2000),
                ("window", "0007"): lambda: new_store.messages.window(TENANT, window_id, max_tokens=2000),
                ("window", "0007 miss"): miss_window,
            }
            got = new_store.messages.window(TENANT, window_id, max_tokens=2000)
            want = old_store.messages.window(TENANT, window_id, max_tokens=2000)
            assert orjson.dumps(got.data) == orjson.dumps(want.data), "the two stores disagree on the window"
            samples: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
            for _ in range(20):  # warm-up: plans cached, pages in memory
                for call in calls.values():
                    call()
            log(f"timing {args.calls} calls of each kind, alternating")
            order = list(calls)
            shuffle = random.Random(7).shuffle
            for _ in range(args.calls):
                shuffle(order)  # no store always goes first, or always after a write
                for key in order:
                    samples[key].append(timed(calls[key]))
        finally:
            old_db.close()
            new_db.close()

        started = time.perf_counter()
        migrate(old_url)
        backfill_s = time.perf_counter() - started
        migrated_sizes = sizes(old_url)
        report(messages, n_contexts, old_sizes, new_sizes, migrated_sizes, samples, backfill_s, args)
    finally:
        if databases:
            with psycopg.connect(make_conninfo(databases[0], dbname="postgres"), autocommit=True) as conn:
                for url in databases:
                    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
                    conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0


def report(messages: int, n_contexts: int, old: dict[str, int], new: dict[str, int], migrated: dict[str, int],
           samples: dict[tuple[str, str], list[float]], backfill_s: float, args: argparse.Namespace) -> None:
    scale = 1_000_000 / messages
    mib = 1024 * 1024

    def per_million(size: int) -> str:
        return f"{size * scale / mib:8.1f} MiB"

    print(f"\nshard key cost: {messages:,} messages in {n_contexts:,} contexts of {PER_CONTEXT}, "
          f"{args.calls} calls of each kind\n")
    print("storage per million messages (pg_relation_size; messages (total) = pg_total_relation_size)")
    print(f"{'relation':34} {'0006':>12} {'0007':>12} {'delta':>10} {'bytes/row':>10}")
    names = sorted({k for k in old | new if k.startswith("messages")}, key=lambda k: (k != "messages (total)", k))
    for name in names:
        a, b = old.get(name, 0), new.get(name, 0)
        print(f"{name:34} {per_million(a):>12} {per_million(b):>12} {(b - a) / max(a, 1):>+9.1%} "
              f"{(b - a) / messages:>+10.1f}")
    ctx_old = old["contexts (total)"]
    ctx_new = new["contexts (total)"] + new.get("context_roots (total)", 0)
    print(f"{'contexts + context_roots (total)':34} {ctx_old / n_contexts:>8.0f} B/c {ctx_new / n_contexts:>8.0f} B/c "
          f"{(ctx_new - ctx_old) / ctx_old:>+9.1%}   (bytes per context)")
    print(f"\nmigrating the filled 0006 database to 0007: {backfill_s:.1f} s "
          f"({backfill_s * scale:.0f} s per million messages); messages (total) afterwards "
          f"{per_million(migrated['messages (total)'])} (the backfill's dead rows until VACUUM)")
    print("\nlatency through the store (ms), calls interleaved in a shuffled order each round")
    for op in ("append", "window"):
        base = p50_ms(samples[(op, "0006")])
        for key in [k for k in samples if k[0] == op]:
            p50 = p50_ms(samples[key])
            # Calls of one round ran back to back: the median of their ratios pairs them.
            paired = statistics.median(b / a for a, b in zip(samples[(op, "0006")], samples[key]))
            print(f"  {op:7} {key[1]:10} p50 {p50:7.3f}  p90 {statistics.quantiles(samples[key], n=10)[-1] * 1000:7.3f}"
                  f"  p50 vs 0006 {p50 / base - 1:+6.1%}  paired ratio {paired:5.3f}")


if __name__ == "__main__":
    sys.exit(main())
