"""The embedding worker against the loopback embeddings server and a real
database: it drains the queue, retries what a retry can cure, shares the queue
with other workers, and a worker killed mid-batch loses nothing."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import orjson
import psycopg
import pytest
from embeddings_server import API_KEY, EmbeddingsServer, bag_of_words

from service.embeddings import Embedder
from service.worker import Worker, ensure_indexes

DIM = 1536


def seed(store, count: int, prefix: str = "note") -> str:
    context = store.contexts.create("default", {})
    store.messages.append("default", context["id"], [
        {"role": "user", "content": f"{prefix} {i}", "token_count": 1} for i in range(count)
    ])
    return context["id"]


def embedded(conninfo: str) -> dict[str, list[float] | None]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT content, embedding::text, embedding_failed_at IS NOT NULL FROM messages").fetchall()
    return {content: (None if vector is None else [float(x) for x in vector.strip("[]").split(",")], failed)
            for content, vector, failed in rows}


def worker_for(settings, conninfo, server, sleeps=None, **changes):
    configured = dataclasses.replace(settings, embeddings_url=server.url, embeddings_api_key=API_KEY,
                                     embeddings_max_rps=1000.0, **changes)
    sleep = (lambda s: sleeps.append(s)) if sleeps is not None else None
    return Worker(configured, conninfo, Embedder.from_settings(configured), sleep=sleep)


def test_the_worker_embeds_every_waiting_message_and_search_then_finds_by_meaning(settings, conninfo, store):
    cid = seed(store, 25)
    with EmbeddingsServer(DIM) as server:
        stats = worker_for(settings, conninfo, server, embeddings_batch_size=10).run(once=True)
    assert stats.embedded == 25 and stats.calls == 3
    rows = embedded(conninfo)
    for content, (vector, failed) in rows.items():
        assert vector == pytest.approx(bag_of_words(content, DIM), abs=1e-6) and not failed
    found = store.search.in_context("default", cid, query=None, embedding=bag_of_words("note 7", DIM), k=1)
    assert found.mode == "semantic"
    assert orjson.loads(orjson.dumps(found.data[0]["message"]))["content"] == "note 7"
    assert float(found.data[0]["score"]) == pytest.approx(1.0, abs=1e-5)


def test_429_is_retried_after_what_retry_after_says_and_500_with_backoff(settings, conninfo, store):
    seed(store, 3)
    sleeps: list[float] = []
    with EmbeddingsServer(DIM) as server:
        server.script.extend([(429, "0.25"), (500, None)])
        stats = worker_for(settings, conninfo, server, sleeps).run(once=True)
        assert server.requests == 3
    assert stats.embedded == 3
    assert sleeps[0] == 0.25
    assert 0 < sleeps[1] <= 60
    assert all(vector is not None for vector, _ in embedded(conninfo).values())


def test_a_refused_message_is_marked_failed_and_the_rest_of_its_batch_embedded(settings, conninfo, store):
    context = store.contexts.create("default", {})
    store.messages.append("default", context["id"], [
        {"role": "user", "content": c, "token_count": 1} for c in ("fine one", "poison pill", "fine two", "   ")
    ])
    with EmbeddingsServer(DIM) as server:
        server.reject_words = {"poison"}
        stats = worker_for(settings, conninfo, server).run(once=True)
    rows = embedded(conninfo)
    assert stats.embedded == 2 and stats.failed == 2
    assert rows["fine one"][0] is not None and rows["fine two"][0] is not None
    assert rows["poison pill"] == (None, True) and rows["   "] == (None, True)


def test_a_wrong_key_embeds_nothing_and_keeps_the_queue(settings, conninfo, store):
    seed(store, 2)
    sleeps: list[float] = []
    with EmbeddingsServer(DIM, api_key="another") as server:
        worker = worker_for(settings, conninfo, server, sleeps)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            assert worker.batch(conn) is None
    assert sleeps == [60.0]
    assert all(row == (None, False) for row in embedded(conninfo).values())


def test_two_workers_share_the_queue_without_double_work(settings, conninfo, store):
    seed(store, 40)
    with EmbeddingsServer(DIM, delay=0.05) as server:
        workers = [worker_for(settings, conninfo, server, embeddings_batch_size=5) for _ in range(2)]
        threads = [threading.Thread(target=w.run, kwargs={"once": True}) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(server.inputs) == sorted(f"note {i}" for i in range(40))
    assert all(w.stats.embedded > 0 for w in workers)
    assert sum(w.stats.embedded for w in workers) == 40


def test_a_worker_killed_mid_batch_loses_nothing(settings, conninfo, store, postgresql):
    from support import database_url

    seed(store, 6)
    info = postgresql.info
    with EmbeddingsServer(DIM, delay=30) as server:
        env = {**os.environ, "DATABASE_URL": database_url(info.host, info.port, info.user, info.password, info.dbname),
               "EMBEDDINGS_URL": server.url, "EMBEDDINGS_API_KEY": API_KEY, "LOG_LEVEL": "warning"}
        process = subprocess.Popen([sys.executable, "-m", "service", "worker"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while server.requests == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.requests == 1, process.stderr.read1(2000) if process.poll() is not None else ""
            # The batch is claimed and its call in flight.
            with psycopg.connect(conninfo, autocommit=True) as conn:
                locked = conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM messages WHERE embedding IS NULL FOR UPDATE SKIP LOCKED) s"
                ).fetchone()[0]
            assert locked == 0
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stderr.close()
        server.delay = 0
        # The killed worker's claim is gone with its connection: another takes it all.
        deadline = time.monotonic() + 10
        stats = None
        while time.monotonic() < deadline:
            stats = worker_for(settings, conninfo, server).run(once=True)
            if stats.embedded:
                break
            time.sleep(0.1)
    assert stats is not None and stats.embedded == 6
    assert all(vector is not None for vector, _ in embedded(conninfo).values())


def test_ensure_indexes_builds_another_dimensions_index_and_says_what_is_stale(settings, conninfo, store):
    context = store.contexts.create("default", {})
    store.messages.append("default", context["id"], [
        {"role": "user", "content": "x", "token_count": 1, "embedding": [1.0] + [0.0] * (DIM - 1)}
    ])
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("ANALYZE messages")
    said = ensure_indexes(dataclasses.replace(settings, embedding_dim=8, text_search_config="english"), conninfo,
                          rewrite_words=False)
    assert "created messages_embedding_8_idx" in said
    assert any("1536-dimension embeddings" in line for line in said)
    assert any("TEXT_SEARCH_CONFIG=english" in line for line in said)
    said = ensure_indexes(dataclasses.replace(settings, text_search_config="english"), conninfo, rewrite_words=True)
    assert said == ["content_tsv re-indexed with TEXT_SEARCH_CONFIG=english"]
    # English stems: "running" now matches "runs".
    store.messages.append("default", context["id"], [{"role": "user", "content": "she runs", "token_count": 1}])
    english = type(store.search)(store.search.db, dim=DIM, text_search_config="english", exact_max=100,
                                 ef_search=40, max_scan_tuples=1000, embedder=None)
    assert len(english.in_context("default", context["id"], query="running", embedding=None, k=5).data) == 1


def test_the_worker_command_needs_an_endpoint_and_ensure_indexes_alone_does_not(settings, conninfo, caplog):
    from service.worker import main

    assert main(settings, conninfo, once=True, only_indexes=True) == 0
    with caplog.at_level("ERROR", logger="context_store"):
        assert main(settings, conninfo, once=True, only_indexes=False) == 2
    assert "EMBEDDINGS_URL is not set" in caplog.text
