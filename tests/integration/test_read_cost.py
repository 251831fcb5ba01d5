"""A read's cost must not grow with the conversation's length when its answer does
not: the pages the service's own (generic) plans touch for one message, the last
50 and a token window are compared on a context of 2,000 and one of 100,000
messages. A plan that walks every index entry of a context touches about fifty
times the pages on the longer one; an index range about as many on both. (The
benchmark's size targets, bench/RESULTS.md, check the same through HTTP on its own
data: they found the messages key with the root last planned through the
cum_tokens index, which this data does not make the planner choose.)"""

from __future__ import annotations

import orjson
import psycopg
import pytest
from support import record_statements

from service.queries import Store


def _pages(db, statement, params) -> int:
    """Shared pages (hit or read) the statement's plan touches, on a pooled
    connection: the plan the service runs (generic plans, see configure_session)."""
    with db.connection() as conn:
        plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement.text, params).fetchone()[0]
    plan = orjson.loads(orjson.dumps(plan))  # JSON comes back as a raw fragment (service/db.py)
    top = plan[0]["Plan"]
    return top["Shared Hit Blocks"] + top["Shared Read Blocks"]


@pytest.fixture
def conversations(store: Store, direct_conninfo):
    """A context of 2,000 and one of 100,000 messages (beside 3,000 contexts of one
    message), written 20 to a batch (each
    batch its own created_at, as clients append them; inserted in one statement
    each for speed, with the columns an append computes), then analyzed."""
    ids = {}
    with psycopg.connect(direct_conninfo, autocommit=True) as conn:
        for size in (2_000, 100_000):
            cid = store.contexts.create("default", {})["id"]
            conn.execute(
                "INSERT INTO messages (context_id, root_id, version, role, content, token_count, cum_tokens, created_at)"
                " SELECT %(id)s, %(id)s, g, 'user', 'message ' || g, 30, 30 * g,"
                "        clock_timestamp() + (g / 20) * interval '1 ms'"
                " FROM generate_series(1, %(n)s) AS g",
                {"id": cid, "n": size},
            )
            conn.execute("UPDATE contexts SET head_version = %(n)s, total_tokens = 30 * %(n)s WHERE id = %(id)s",
                         {"id": cid, "n": size})
            ids[size] = cid
        # Most contexts of a deployment are short. With these, and without the
        # statistics of 0008, the planner costed a generic plan for one row per
        # context and sorted a context's rows rather than walk an index in order
        # (a window of 100,000 messages: 16-30 ms).
        conn.execute(
            "WITH ids AS (SELECT gen_random_uuid() AS id FROM generate_series(1, 3000)),"
            " c AS (INSERT INTO contexts (id, root_id, head_version, total_tokens)"
            "       SELECT id, id, 1, 30 FROM ids RETURNING id),"
            " r AS (INSERT INTO context_roots (id, root_id) SELECT id, id FROM c RETURNING id)"
            " INSERT INTO messages (context_id, root_id, version, role, content, token_count, cum_tokens, created_at)"
            " SELECT id, id, 1, 'user', 'hi', 30, 30, clock_timestamp() FROM r"
        )
        conn.execute("ANALYZE contexts, messages, context_roots")
    return ids


@pytest.mark.parametrize("read", ["last 50", "window 2k", "window 8k", "one message", "last 50 as of a time"])
def test_a_read_touches_as_many_pages_on_a_long_conversation_as_on_a_short_one(store, db, conversations, read,
                                                                               monkeypatch, direct_conninfo):
    with psycopg.connect(direct_conninfo) as conn:
        version_1000_at = dict(conn.execute(
            "SELECT context_id, created_at FROM messages WHERE context_id = ANY(%s) AND version = 1000",
            [list(conversations.values())]).fetchall())
    calls = {
        "last 50 as of a time": lambda cid: store.messages.list("default", cid, limit=50, descending=True,
                                                                as_of=version_1000_at[cid]),
        "last 50": lambda cid: store.messages.list("default", cid, limit=50, descending=True),
        "window 2k": lambda cid: store.messages.window("default", cid, max_tokens=2_000),
        "window 8k": lambda cid: store.messages.window("default", cid, max_tokens=8_000),
        "one message": lambda cid: store.messages.get("default", cid, 1_000),
    }
    pages = {}
    seen = record_statements(monkeypatch)
    for size, cid in conversations.items():
        for _ in range(6):  # past psycopg's prepare threshold, as a busy worker is
            calls[read](cid)
        seen.clear()
        calls[read](cid)
        statement, params = seen[-1]
        pages[size] = _pages(db, statement, params)
    # Fifty times the messages: a plan that walks the context touches about fifty
    # times the pages; an index range one or two more (a deeper b-tree).
    assert pages[100_000] <= pages[2_000] + 8, pages
