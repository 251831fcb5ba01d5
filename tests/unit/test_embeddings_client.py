"""The OpenAI-compatible client against the loopback embeddings server: answers,
the error classes the worker and search act on, and the cached health status."""

from __future__ import annotations

import socket

import pytest
from embeddings_server import API_KEY, EmbeddingsServer, bag_of_words

from service.embeddings import (
    Embedder,
    EmbeddingsMisconfigured,
    EmbeddingsRejected,
    EmbeddingsUnavailable,
    _retry_after,
)

DIM = 64


@pytest.fixture
def server():
    with EmbeddingsServer(DIM) as running:
        yield running


def embedder(server, *, key=API_KEY, dim=DIM) -> Embedder:
    return Embedder(server.url, "test-model", key, dim, timeout=2.0)


def test_embeddings_come_back_in_input_order(server):
    texts = ["red apple", "green pear", "red pear"]
    assert embedder(server).embed(texts) == [pytest.approx(bag_of_words(t, DIM)) for t in texts]


def test_errors_map_to_what_a_caller_can_do_about_them(server):
    client = embedder(server)
    server.script.append((429, "7"))
    with pytest.raises(EmbeddingsUnavailable) as caught:
        client.embed(["a"])
    assert caught.value.status == 429 and caught.value.retry_after == 7.0
    server.script.append((503, None))
    with pytest.raises(EmbeddingsUnavailable) as caught:
        client.embed(["a"])
    assert caught.value.retry_after is None
    with pytest.raises(EmbeddingsRejected):
        client.embed([""])
    with pytest.raises(EmbeddingsMisconfigured) as caught:
        embedder(server, key="wrong").embed(["a"])
    assert caught.value.status == 401
    assert "wrong" not in str(caught.value)
    with pytest.raises(EmbeddingsMisconfigured, match="64 dimensions but EMBEDDING_DIM is 32"):
        embedder(server, dim=32).embed(["a"])


def test_an_unreachable_endpoint_is_unavailable_and_queries_skip_it_for_a_while():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Embedder(f"http://127.0.0.1:{port}/v1", "m", None, DIM, timeout=0.5)
    with pytest.raises(EmbeddingsUnavailable, match="unreachable"):
        client.embed_query("hello")
    with pytest.raises(EmbeddingsUnavailable, match="moments ago"):
        client.embed_query("hello")
    assert client.status() == "unavailable"


def test_health_status_is_cached_not_a_call_per_probe(server):
    client = embedder(server)
    assert client.status() == "ok"
    calls = server.requests
    for _ in range(5):
        assert client.status() == "ok"
    assert server.requests == calls


@pytest.mark.parametrize(("raw", "seconds"), [("2", 2.0), ("0.5", 0.5), (None, None), ("soon", None), ("-1", None),
                                              ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("inf", None)])
def test_retry_after_takes_seconds_only(raw, seconds):
    assert _retry_after(raw) == seconds
