"""The worker's less travelled paths against a real database and the loopback
embeddings server: stopping, losing its connection, pacing, a batch with nothing
to embed, an interrupted index build, and the command end to end."""

from __future__ import annotations

import dataclasses
import logging
import signal

import psycopg
from embeddings_server import API_KEY, EmbeddingsServer

from service.embeddings import Embedder
from service.worker import IDLE_POLL, Worker, ensure_indexes, main

DIM = 1536


def configured(settings, server, **changes):
    changes = {"embeddings_max_rps": 1000.0, **changes}
    return dataclasses.replace(settings, embeddings_url=server.url, embeddings_api_key=API_KEY, **changes)


def append(store, *contents: str) -> None:
    context = store.contexts.create("default", {})
    store.messages.append("default", context["id"], [
        {"role": "user", "content": c, "token_count": 1} for c in contents
    ])


def test_a_worker_stopped_before_it_runs_connects_to_nothing(settings):
    unreachable = "host=127.0.0.1 port=1 dbname=none connect_timeout=1"
    with EmbeddingsServer(DIM) as server:
        worker = Worker(configured(settings, server), unreachable, Embedder.from_settings(configured(settings, server)))
        worker.stop(signal.SIGTERM, None)
        stats = worker.run()
    assert (stats.embedded, stats.calls) == (0, 0)


def test_a_lost_connection_is_reopened_after_a_back_off(settings, conninfo, store):
    with EmbeddingsServer(DIM) as server:
        worker = Worker(configured(settings, server), conninfo, Embedder.from_settings(configured(settings, server)))
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 1:
                # Idle on an empty queue: the database drops the worker's session.
                with psycopg.connect(conninfo, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = 'context-store-worker'")
                append(store, "after the drop")
            elif len(sleeps) == 3:
                worker.stop()

        worker.sleep = sleep
        stats = worker.run()
    assert sleeps[0] == IDLE_POLL
    assert 0 < sleeps[1] <= 60  # the back-off after the lost session
    assert stats.embedded == 1  # then a new session embeds what came meanwhile


def test_a_database_that_is_down_is_retried_not_fatal(settings, caplog):
    unreachable = "host=127.0.0.1 port=1 dbname=none connect_timeout=1"
    with EmbeddingsServer(DIM) as server:
        worker = Worker(configured(settings, server), unreachable, Embedder.from_settings(configured(settings, server)))
        worker.sleep = lambda seconds: worker.stop()
        with caplog.at_level(logging.WARNING, logger="context_store"):
            worker.run()
    assert "database unavailable (OperationalError)" in caplog.text


def test_calls_are_spaced_to_the_rate_limit(settings, conninfo, store):
    append(store, "one", "two")
    sleeps: list[float] = []
    with EmbeddingsServer(DIM) as server:
        limited = configured(settings, server, embeddings_batch_size=1, embeddings_max_rps=2.0)
        stats = Worker(limited, conninfo, Embedder.from_settings(limited), sleep=sleeps.append).run(once=True)
    assert stats.calls == 2 and stats.embedded == 2
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 0.5


def test_a_batch_of_blank_messages_calls_nothing_and_marks_them_failed(settings, conninfo, store):
    append(store, "   ", "\n")
    with EmbeddingsServer(DIM) as server:
        stats = Worker(configured(settings, server), conninfo,
                       Embedder.from_settings(configured(settings, server))).run(once=True)
        assert server.requests == 0
    assert (stats.embedded, stats.failed, stats.calls) == (0, 2, 0)
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM messages WHERE embedding_failed_at IS NOT NULL").fetchone()[0] == 2


def test_an_interrupted_index_build_is_dropped_and_rebuilt(settings, conninfo):
    small = dataclasses.replace(settings, embedding_dim=8)
    assert ensure_indexes(small, conninfo, rewrite_words=False) == ["created messages_embedding_8_idx"]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # What a CREATE INDEX CONCURRENTLY interrupted midway leaves behind.
        conn.execute("UPDATE pg_index SET indisvalid = false "
                     "WHERE indexrelid = 'messages_embedding_8_idx'::regclass")
    said = ensure_indexes(small, conninfo, rewrite_words=False)
    assert said == ["dropped the invalid index messages_embedding_8_idx (an interrupted build)",
                    "created messages_embedding_8_idx"]
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT indisvalid FROM pg_index "
                            "WHERE indexrelid = 'messages_embedding_8_idx'::regclass").fetchone()[0] is True


def test_the_worker_command_logs_what_it_fixed_and_drains_the_queue(settings, conninfo, store, caplog):
    append(store, "via the command")
    with caplog.at_level(logging.INFO, logger="context_store"):
        assert main(dataclasses.replace(settings, text_search_config="english"), conninfo,
                    once=True, only_indexes=True) == 0
    assert "worker: content_tsv re-indexed with TEXT_SEARCH_CONFIG=english" in caplog.text
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with EmbeddingsServer(DIM) as server, caplog.at_level(logging.INFO, logger="context_store"):
            assert main(configured(settings, server), conninfo, once=True, only_indexes=False) == 0
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
    assert "worker: stopped after 1 embedded, 0 refused, 1 calls" in caplog.text
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM messages WHERE embedding IS NULL").fetchone()[0] == 0
