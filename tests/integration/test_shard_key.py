"""The lineage root as a shard key (docs/SHARDING.md): every message carries the root
of its conversation, every per-conversation statement pins it, a context's root is
found through a bounded per-worker cache, and migration 0007 backfills it."""

from __future__ import annotations

import re
import shutil
import uuid

import psycopg
import pytest

from service.ids import uuid7
from service.migrate import migrate
from service.paths import sql_dir
from service.queries.roots import ROOT_CACHE_SIZE, Roots
from service.sql import QUERIES


def create(client) -> str:
    return client.post_json("/v1/contexts", {}, status=201).json["id"]


def append(client, cid: str, *contents: str) -> dict:
    body = {"messages": [{"role": "user", "content": c, "token_count": 3} for c in contents]}
    return client.post_json(f"/v1/contexts/{cid}/messages", body, status=201).json


def fork(client, cid: str, **body) -> str:
    return client.post_json(f"/v1/contexts/{cid}/forks", body, status=201).json["id"]


# ---------------------------------------------------------------- every row carries its root


def test_a_conversation_and_its_forks_carry_the_roots_id(client, postgresql):
    root = create(client)
    append(client, root, "a", "b", "c")
    child = fork(client, root, at_version=2)
    append(client, child, "d")
    grandchild = fork(client, child)
    append(client, grandchild, "e", "f")
    other = create(client)
    append(client, other, "x")

    rows = postgresql.execute(
        "SELECT context_id::text, root_id::text FROM messages WHERE context_id = ANY (%s::uuid[])",
        [[root, child, grandchild, other]],
    ).fetchall()
    assert sorted(rows) == sorted(
        [(root, root)] * 3 + [(child, root)] + [(grandchild, root)] * 2 + [(other, other)]
    )
    contexts = dict(postgresql.execute(
        "SELECT id::text, root_id::text FROM contexts WHERE id = ANY (%s::uuid[])", [[root, child, grandchild, other]]
    ).fetchall())
    assert contexts == {root: root, child: root, grandchild: root, other: other}
    recorded = dict(postgresql.execute(
        "SELECT id::text, root_id::text FROM context_roots WHERE id = ANY (%s::uuid[])",
        [[root, child, grandchild, other]],
    ).fetchall())
    assert recorded == contexts
    # The fork reads through its ancestors under the shared root.
    window = client.get(f"/v1/contexts/{grandchild}/window", {"max_tokens": 100}, status=200).json
    assert [m["content"] for m in window["data"]] == ["a", "b", "d", "e", "f"]


def test_a_context_under_another_root_is_not_found_by_the_statements(store, postgresql):
    # The root is part of the lookup, not a hint: the wrong root finds nothing.
    a = store.contexts.create("default", {})["id"]
    b = store.contexts.create("default", {})["id"]
    with store.contexts.db.connection() as conn:
        row = QUERIES.get_context.run(conn, id=a, root_id=b, tenant="default", as_of_version=None, as_of=None)
        assert row["status"] == "missing"
        row = QUERIES.get_context.run(conn, id=a, root_id=a, tenant="default", as_of_version=None, as_of=None)
        assert row["status"] == "ok"


# ---------------------------------------------------------------- the root cache


def test_a_miss_and_a_hit_give_the_same_root(store, client):
    root = create(client)
    child = fork(client, root)
    roots = Roots()
    with store.contexts.db.connection() as conn:
        assert roots.cached(uuid.UUID(child)) is None
        assert roots.of(conn, uuid.UUID(child)) == uuid.UUID(root)  # miss: asks the database
        assert roots.of(conn, uuid.UUID(root)) == uuid.UUID(root)
    assert len(roots) == 2
    with psycopg.connect(store.contexts.db.conninfo) as closed:
        pass
    # A hit asks nothing: a closed connection would fail any statement.
    assert roots.of(closed, uuid.UUID(child)) == uuid.UUID(root)
    with pytest.raises(psycopg.OperationalError):
        roots.of(closed, uuid.uuid4())


def test_contexts_created_and_forked_here_are_cached_with_their_root(store):
    root = store.contexts.create("default", {})["id"]
    child = store.contexts.fork("default", root, at_version=None, metadata=None)["id"]
    roots = store.contexts.roots
    assert roots is store.messages.roots is store.search.roots
    assert roots.cached(root) == root
    assert roots.cached(child) == root


def test_an_unknown_context_is_not_cached(store, client):
    roots = store.messages.roots
    before = len(roots)
    unknown = uuid7()
    with store.messages.db.connection() as conn:
        assert roots.of(conn, unknown) is None
    assert len(roots) == before
    assert client.get(f"/v1/contexts/{unknown}/window", {"max_tokens": 10}, status=404)


def test_the_cache_is_bounded_and_keeps_the_recently_used():
    roots = Roots(size=3)
    ids = [uuid.uuid4() for _ in range(5)]
    for i in ids[:3]:
        roots.remember(i, i)
    assert roots.cached(ids[0]) == ids[0]  # now the most recently used
    roots.remember(ids[3], ids[3])
    roots.remember(ids[4], ids[4])
    assert len(roots) == 3
    assert [roots.cached(i) for i in ids] == [ids[0], None, None, ids[3], ids[4]]
    roots.remember(ids[4], ids[4])
    assert len(roots) == 3


def test_the_default_cache_is_bounded():
    roots = Roots()
    for _ in range(ROOT_CACHE_SIZE + 10):
        key = uuid.uuid4()
        roots.remember(key, key)
    assert len(roots) == ROOT_CACHE_SIZE
    with pytest.raises(ValueError):
        Roots(size=0)


def test_a_context_the_previous_release_created_is_found_by_its_root(client, store, postgresql):
    # The previous release inserts contexts without a context_roots row and
    # messages without root_id: triggers fill both in.
    cid = uuid7()
    postgresql.execute("INSERT INTO contexts (id, root_id, head_version, total_tokens) VALUES (%s, %s, 1, 2)",
                       [cid, cid])
    postgresql.execute(
        "INSERT INTO messages (context_id, version, role, content, token_count, cum_tokens, created_at)"
        " VALUES (%s, 1, 'user', 'old', 2, 2, now())", [cid])
    postgresql.commit()
    assert postgresql.execute("SELECT root_id FROM messages WHERE context_id = %s", [cid]).fetchone() == (cid,)
    assert postgresql.execute("SELECT root_id FROM context_roots WHERE id = %s", [cid]).fetchone() == (cid,)
    page = client.get(f"/v1/contexts/{cid}/messages", status=200).json
    assert [m["content"] for m in page["data"]] == ["old"]
    assert store.messages.roots.cached(cid) == cid


# ---------------------------------------------------------------- every statement pins the root

# Statements that touch contexts or messages across conversations, and why they may.
CROSS_SHARD = {
    "list_contexts": "a tenant's contexts belong to many roots",
    "list_contexts_by_metadata": "a tenant's contexts belong to many roots",
    "get_search_reach": "a tenant-wide search covers many roots",
    "search_semantic_exact_tenant": "a tenant-wide search covers many roots (each holder pinned to its own)",
    "search_semantic_tenant": "a tenant-wide search covers many roots",
    "search_text_tenant": "a tenant-wide search covers many roots",
    "claim_pending_embeddings": "the embedding worker's queue spans every conversation",
    "set_embeddings": "the embedding worker's queue spans every conversation",
    "mark_embeddings_failed": "the embedding worker's queue spans every conversation",
    "count_embedding_backlog": "the embedding worker's queue spans every conversation",
}

_TABLE = re.compile(r"\b(?:FROM|JOIN|UPDATE)\s+(contexts|messages)\b(?:\s+AS\s+(\w+))?", re.IGNORECASE)
_INSERT = re.compile(r"\bINSERT\s+INTO\s+(contexts|messages)\s*\(([^)]*)\)", re.IGNORECASE)
_LINEAGE_CALL = re.compile(r"\b(cs_(?:view|window|message|range|cum_tokens|version_at)_v\d+)\s*\(\s*([^,]+),")


def unpinned(text: str, root: str) -> list[str]:
    """What in a statement or function body reaches contexts or messages without
    the root `root` (a parameter) in its condition: each table reference must pin
    its alias's root_id, each insert must write root_id, each lineage function
    called must be a _v2 one given the root."""
    problems = []
    for table, alias in _TABLE.findall(text):
        name = alias or table
        pinned = rf"(?<![\w.]){re.escape(name)}\.root_id\s*=\s*{root}" if alias else rf"(?<![\w.])root_id\s*=\s*{root}"
        if not re.search(pinned, text):
            problems.append(f"{table} AS {name}")
    for table, columns in _INSERT.findall(text):
        if "root_id" not in columns:
            problems.append(f"INSERT INTO {table}")
    for function, first in _LINEAGE_CALL.findall(text):
        if not function.endswith("_v2") or "root" not in first:
            problems.append(f"{function}({first}, ...)")
    return problems


def touches_conversations(text: str) -> bool:
    return bool(_TABLE.search(text) or _INSERT.search(text) or _LINEAGE_CALL.search(text))


def test_every_statement_on_contexts_or_messages_pins_the_root():
    checked = []
    for name in QUERIES.names():
        text = getattr(QUERIES, name).text
        if not touches_conversations(text) or name in CROSS_SHARD:
            continue
        # The pinned value: the request's root, or a row already pinned to it.
        assert unpinned(text, r"%\(root_id\)s") == [], name
        assert "%(root_id)s" in text or name == "insert_context", name
        checked.append(name)
    assert {"insert_messages", "get_window", "get_context", "insert_fork", "search_text_view"} <= set(checked)
    assert set(CROSS_SHARD) <= set(QUERIES.names()), "a cross-shard exception names no statement"


def test_insert_context_makes_its_own_id_the_root():
    text = QUERIES.insert_context.text
    assert re.search(r"SELECT %\(id\)s, %\(tenant\)s, %\(id\)s", text)
    assert "INSERT INTO context_roots" in text


def test_the_check_sees_a_statement_that_does_not_pin_the_root():
    root = r"%\(root_id\)s"
    assert unpinned("SELECT * FROM messages AS m WHERE m.context_id = %(id)s", root) == ["messages AS m"]
    assert unpinned("UPDATE contexts SET x = 1 WHERE id = %(id)s", root) == ["contexts AS contexts"]
    assert unpinned("INSERT INTO messages (context_id) VALUES (1)", root) == ["INSERT INTO messages"]
    assert unpinned("SELECT * FROM cs_view_v1(%(id)s, %(t)s)", root) == ["cs_view_v1(%(id)s, ...)"]
    assert unpinned("SELECT * FROM messages AS m WHERE m.root_id = %(root_id)s", root) == []


def test_every_v2_lineage_function_pins_the_root(postgresql):
    functions = postgresql.execute(
        "SELECT proname, prosrc FROM pg_proc WHERE proname LIKE 'cs\\_%%\\_v2' ORDER BY 1"
    ).fetchall()
    assert {name for name, _ in functions} == {
        "cs_message_v2", "cs_cum_tokens_v2", "cs_version_at_v2", "cs_range_v2", "cs_view_v2", "cs_window_v2",
    }
    for name, body in functions:
        assert touches_conversations(body), name
        assert unpinned(body, r"(?:root|p_root)\b") == [], name


# ---------------------------------------------------------------- migration 0007 backfills


def test_migration_0007_backfills_the_roots_of_existing_rows(empty_database, tmp_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in sorted((sql_dir() / "migrations").glob("000[1-6]_*.sql")):
        shutil.copy(path, folder)
    assert migrate(empty_database.url, folder)[-1] == "0006_idempotency"

    root, child, other = uuid7(), uuid7(), uuid7()
    with psycopg.connect(empty_database.url) as conn:
        conn.execute("INSERT INTO contexts (id, root_id, head_version, total_tokens) VALUES (%s, %s, 2, 4), "
                     "(%s, %s, 1, 1)", [root, root, other, other])
        conn.execute("INSERT INTO contexts (id, root_id, parent_id, fork_version, ancestor_ids, ancestor_ends, "
                     "head_version, total_tokens) VALUES (%s, %s, %s, 1, ARRAY[%s]::uuid[], '{1}', 2, 3)",
                     [child, root, root, root])
        rows = [(root, 1, 1), (root, 2, 4), (child, 2, 3), (other, 1, 1)]
        for cid, version, cum in rows:
            conn.execute("INSERT INTO messages (context_id, version, role, content, token_count, cum_tokens, "
                         "created_at) VALUES (%s, %s, 'user', %s, 1, %s, now())",
                         [cid, version, f"{cid}-{version}", cum])

    assert migrate(empty_database.url) == ["0007_shard_key", "0008_context_root_statistics"]
    with psycopg.connect(empty_database.url) as conn:
        got = conn.execute("SELECT context_id, version, root_id FROM messages ORDER BY 1, 2").fetchall()
        assert got == sorted([(root, 1, root), (root, 2, root), (child, 2, root), (other, 1, other)])
        assert dict(conn.execute("SELECT id, root_id FROM context_roots").fetchall()) == {
            root: root, child: root, other: other}
        window = QUERIES.get_window.run(conn, context_id=child, root_id=root, tenant="default", as_of_version=None,
                                        as_of=None, max_tokens=10, pin_system=False)
        assert window["status"] == "ok"
        assert [m["content"] for m in window["data"]] == [f"{root}-1", f"{child}-2"]
        # The previous release's functions still answer on the migrated schema.
        old = conn.execute("SELECT status, data FROM cs_window_v1(%s, 'default', NULL, NULL, 10, false)",
                           [child]).fetchone()
        assert old == ("ok", window["data"])
