"""What the suite reads from the database after the cells: PostgreSQL's version and
settings, the size of the messages table, and EXPLAIN ANALYZE of the read statements
(the raw mode's own, bench/raw.py) with how the plan cache treats them."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from bench import raw
from bench.common import fmt_n, log


def database_facts(url: str, largest: str, largest_size: int, chain: dict[int, str], explain: bool):
    """(facts, plans): facts has pg_version, pg_settings, messages_rows, messages_bytes;
    plans is (title, text) per EXPLAIN, empty without `explain`."""
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
            cid = UUID(largest)
            calls = [
                (f"get_window max_tokens=8000 on {fmt_n(largest_size)} messages", raw.window, (cid, 8000)),
                (f"list_messages_desc limit=50 on {fmt_n(largest_size)} messages", raw.last, (cid, 50)),
                (f"get_message version={largest_size // 2} on {fmt_n(largest_size)} messages",
                 raw.get, (cid, largest_size // 2)),
            ]
            if chain:
                depth = max(chain)
                calls.append((f"get_window max_tokens=8000 on a fork of depth {depth}",
                              raw.window, (UUID(chain[depth]), 8000)))
            cases = []
            store = raw.connect(url)
            try:
                for title, call, args in calls:
                    with raw.captured() as seen:  # what the store runs for this read
                        call(store, *args)
                    # A call that ran more than one statement (the root's lookup on a
                    # cold cache, then the read) names each in its heading.
                    cases.extend((title if len(seen) == 1 else f"{title}: {run[0].name}", run) for run in seen)
            finally:
                store.close()
            for title, (statement, params) in cases:
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
    import psycopg

    # A fresh session, prepared as the service's are: this statement is its only one.
    from service.sql import QUERIES

    with psycopg.connect(url, prepare_threshold=5, autocommit=True) as conn:
        QUERIES.configure_session.run(conn, statement_timeout="10000ms")
        for _ in range(runs):
            statement.run(conn, **params)
        rows = conn.execute("select generic_plans, custom_plans from pg_prepared_statements").fetchall()
    if len(rows) != 1:
        return f"Plan cache after {runs} runs: {len(rows)} prepared statements (expected 1)"
    generic, custom = rows[0]
    return (f"Plan cache over {runs} runs (psycopg prepares from the 6th): {generic} generic plans (reused), "
            f"{custom} custom plans (each planned anew)")


def storage_line(facts: dict[str, Any]) -> str:
    rows, sizes = facts["messages_rows"], facts["messages_bytes"]
    per_million = sizes["total"] / rows * 1e6 / 2**20 if rows else 0
    return (
        f"{fmt_n(rows)} rows, {sizes['total'] / 2**20:.1f} MiB with indexes "
        f"(heap {sizes['heap'] / 2**20:.1f} MiB, indexes {sizes['indexes'] / 2**20:.1f} MiB): "
        f"{sizes['total'] / rows if rows else 0:.0f} bytes per message, "
        f"{per_million:,.0f} MiB per million messages"
    )
