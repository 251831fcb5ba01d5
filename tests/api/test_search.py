"""POST /v1/contexts/{id}/search and POST /v1/search through the WSGI app:
modes, scores, lineage, tenants, the exact scan below the switch point and every
error as problem+json."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import webtest
from embeddings_server import API_KEY, EmbeddingsServer, bag_of_words
from support import problem

from service.app import create_app
from service.queries import Store
from service.queries.keys import Keys

DIM = 1536


def unit(seed: int) -> list[float]:
    rng = random.Random(seed)
    v = [rng.gauss(0, 1) for _ in range(DIM)]
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def make(client, messages: list[dict], metadata: dict | None = None, headers=None) -> str:
    cid = client.post_json("/v1/contexts", {"metadata": metadata or {}}, headers=headers, status=201).json["id"]
    for start in range(0, len(messages), 200):  # 200 embeddings fit the body limit
        batch = messages[start : start + 200]
        client.post_json(f"/v1/contexts/{cid}/messages", {"messages": batch}, headers=headers, status=201)
    return cid


def msg(content: str, seed: int | None = None, role: str = "user") -> dict:
    out = {"role": role, "content": content, "token_count": 1}
    if seed is not None:
        out["embedding"] = unit(seed)
    return out


def search(client, cid: str, body: dict, status: int = 200):
    return client.post_json(f"/v1/contexts/{cid}/search", body, status=status)


def test_semantic_search_ranks_by_cosine_and_scores_one_minus_distance(client):
    cid = make(client, [msg(f"m{i}", seed=i) for i in range(12)])
    probe = unit(3)
    got = search(client, cid, {"embedding": probe, "k": 5}).json
    assert got["mode"] == "semantic"
    assert len(got["data"]) == 5
    want = sorted(range(12), key=lambda i: -cosine(probe, unit(i)))[:5]
    assert [h["message"]["version"] for h in got["data"]] == [i + 1 for i in want]
    for hit, i in zip(got["data"], want):
        assert hit["score"] == pytest.approx(cosine(probe, unit(i)), abs=1e-5)
        assert hit["message"]["context_id"] == cid
        assert "embedding" not in hit["message"]
    assert got["data"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_text_search_ranks_matches_and_honours_websearch_syntax(client):
    cid = make(client, [msg("the quick brown fox"), msg("a lazy dog"), msg("fox fox fox hunting"),
                        msg("brown bread", role="assistant")])
    got = search(client, cid, {"query": "fox"}).json
    assert got["mode"] == "text"
    assert [h["message"]["version"] for h in got["data"]] == [3, 1]
    assert all(0 < h["score"] < 1 for h in got["data"])
    assert got["data"][0]["score"] > got["data"][1]["score"]
    assert [h["message"]["version"] for h in search(client, cid, {"query": '"brown fox"'}).json["data"]] == [1]
    assert [h["message"]["version"] for h in search(client, cid, {"query": "brown -fox"}).json["data"]] == [4]
    assert [h["message"]["version"] for h in search(client, cid, {"query": "fox or dog", "k": 1}).json["data"]] == [3]
    roles = search(client, cid, {"query": "brown", "roles": ["assistant"]}).json["data"]
    assert [h["message"]["version"] for h in roles] == [4]
    assert search(client, cid, {"query": "zebra"}).json == {"data": [], "mode": "text"}


def test_hybrid_fuses_both_rankings_by_reciprocal_rank(client):
    cid = make(client, [msg("alpha words", seed=1), msg("beta words", seed=2), msg("gamma", seed=3)])
    got = search(client, cid, {"query": "words", "embedding": unit(2)}).json
    assert got["mode"] == "hybrid"
    # semantic ranks 2 first; text ranks 1 and 2 (equal rank, newest first: 2, 1).
    assert got["data"][0]["message"]["version"] == 2
    assert got["data"][0]["score"] == pytest.approx(2 / 61)
    scores = {h["message"]["version"]: h["score"] for h in got["data"]}
    assert set(scores) == {1, 2, 3}
    assert scores[1] == pytest.approx(1 / 62 + 1 / (60 + semantic_rank(1, 2, 3)))
    assert scores[3] == pytest.approx(1 / (60 + semantic_rank(3, 2, 3)))


def semantic_rank(version: int, probe: int, count: int) -> int:
    order = sorted(range(1, count + 1), key=lambda v: -cosine(unit(probe), unit(v)))
    return order.index(version) + 1


def test_a_fork_searches_its_view_only(client):
    parent = make(client, [msg(f"shared {i}", seed=i) for i in range(1, 6)])
    fork = client.post_json(f"/v1/contexts/{parent}/forks", {"at_version": 3}, status=201).json["id"]
    client.post_json(f"/v1/contexts/{parent}/messages", {"messages": [msg("shared later", seed=100)]}, status=201)
    sibling = client.post_json(f"/v1/contexts/{parent}/forks", {"at_version": 3}, status=201).json["id"]
    client.post_json(f"/v1/contexts/{sibling}/messages", {"messages": [msg("shared sibling", seed=200)]}, status=201)
    client.post_json(f"/v1/contexts/{fork}/messages", {"messages": [msg("shared own", seed=300)]}, status=201)
    got = search(client, fork, {"query": "shared", "k": 100}).json["data"]
    assert sorted((h["message"]["context_id"], h["message"]["version"]) for h in got) == sorted(
        [(parent, 1), (parent, 2), (parent, 3), (fork, 4)]
    )
    near_later = search(client, fork, {"embedding": unit(100), "k": 100}).json["data"]
    assert {h["message"]["content"] for h in near_later} == {"shared 1", "shared 2", "shared 3", "shared own"}
    past = search(client, fork, {"query": "shared", "as_of_version": 2}).json["data"]
    assert sorted(h["message"]["version"] for h in past) == [1, 2]


def test_as_of_a_time_searches_the_view_then(client):
    cid = make(client, [msg("early word")])
    stamp = client.get(f"/v1/contexts/{cid}/messages/1").json["created_at"]
    client.post_json(f"/v1/contexts/{cid}/messages", {"messages": [msg("late word")]}, status=201)
    got = search(client, cid, {"query": "word", "as_of": stamp}).json["data"]
    assert [h["message"]["content"] for h in got] == ["early word"]


def test_tenant_wide_search_shows_a_shared_message_once_under_its_holder(client):
    root = make(client, [msg("needle one", seed=1), msg("needle two", seed=2)], metadata={"team": "a"})
    fork = client.post_json(f"/v1/contexts/{root}/forks", {"at_version": 1, "metadata": {"team": "b"}},
                            status=201).json["id"]
    client.post_json(f"/v1/contexts/{fork}/messages", {"messages": [msg("needle three", seed=3)]}, status=201)
    got = client.post_json("/v1/search", {"query": "needle", "k": 10}).json["data"]
    assert sorted((h["message"]["context_id"], h["message"]["version"]) for h in got) == sorted(
        [(root, 1), (root, 2), (fork, 2)]
    )
    # Only team b: its own message and what it inherited, under the holder.
    team_b = client.post_json("/v1/search", {"query": "needle", "metadata": {"team": "b"}}).json["data"]
    assert sorted((h["message"]["context_id"], h["message"]["version"]) for h in team_b) == sorted(
        [(root, 1), (fork, 2)]
    )
    semantic = client.post_json("/v1/search", {"embedding": unit(2), "k": 1}).json
    assert semantic["mode"] == "semantic"
    assert semantic["data"][0]["message"]["content"] == "needle two"
    # The holder deleted: what the live fork inherited stays findable, the rest is gone.
    client.delete(f"/v1/contexts/{root}", status=204)
    after = client.post_json("/v1/search", {"query": "needle"}).json["data"]
    assert sorted((h["message"]["context_id"], h["message"]["version"]) for h in after) == sorted(
        [(root, 1), (fork, 2)]
    )
    problem(search(client, root, {"query": "needle"}, status=404), 404)


def test_the_approximate_path_finds_what_the_exact_scan_finds(settings, store):
    # SEARCH_EXACT_MAX=0 sends every search through the HNSW index.
    app = webtest.TestApp(create_app(settings, dataclasses.replace(
        store, search=type(store.search)(store.search.db, dim=DIM, text_search_config="simple", exact_max=0,
                                         ef_search=100, max_scan_tuples=50_000, embedder=None))))
    exact = webtest.TestApp(create_app(settings, store))
    other = make(app, [msg(f"noise {i}", seed=1000 + i) for i in range(200)])
    cid = make(app, [msg(f"m{i}", seed=i) for i in range(60)])
    fork = app.post_json(f"/v1/contexts/{cid}/forks", {"at_version": 30}, status=201).json["id"]
    assert other
    for target in (cid, fork):
        probe = {"embedding": unit(7), "k": 10}
        approximate = [h["message"]["version"] for h in search(app, target, probe).json["data"]]
        exactly = [h["message"]["version"] for h in search(exact, target, probe).json["data"]]
        assert approximate == exactly
    tenant = [h["message"]["content"] for h in app.post_json("/v1/search", {"embedding": unit(1005)}).json["data"]]
    assert tenant[0] == "noise 5"


@pytest.mark.parametrize("exact_max", [5000, 0], ids=["exact", "hnsw"])
def test_stored_vectors_without_direction_are_left_out_never_scored_null(settings, store, exact_max):
    # Appends take any finite float4s; a zero vector, or one whose squared length
    # overflows float4, has a NaN cosine distance from everything (pgvector).
    app = webtest.TestApp(create_app(settings, dataclasses.replace(
        store, search=type(store.search)(store.search.db, dim=DIM, text_search_config="simple",
                                         exact_max=exact_max, ef_search=100, max_scan_tuples=50_000,
                                         embedder=None))))
    degenerate = [{"role": "user", "content": "zero", "token_count": 1, "embedding": [0.0] * DIM},
                  {"role": "user", "content": "huge", "token_count": 1, "embedding": [3.4e38] * DIM}]
    cid = make(app, [msg(f"m{i}", seed=i) for i in range(5)] + degenerate)
    uniform = [DIM**-0.5] * DIM  # its dot product with "huge" overflows float4 too: inf / inf
    for hits in (search(app, cid, {"embedding": uniform, "k": 10}).json["data"],
                 app.post_json("/v1/search", {"embedding": uniform, "k": 50}).json["data"]):
        mine = [h for h in hits if h["message"]["context_id"] == cid]
        assert sorted(h["message"]["content"] for h in mine) == [f"m{i}" for i in range(5)]
        assert all(isinstance(h["score"], float) for h in hits)


def test_below_the_switch_point_search_is_exact_among_many_messages(client, db):
    # A small view inside a much bigger table: an index walk filtered to it could
    # miss; the exact scan cannot.
    make(client, [msg(f"n{i}", seed=5000 + i) for i in range(300)])
    cid = make(client, [msg(f"m{i}", seed=i) for i in range(40)])
    for probe_seed in range(5):
        probe = unit(10_000 + probe_seed)
        got = [h["message"]["version"] for h in search(client, cid, {"embedding": probe, "k": 10}).json["data"]]
        want = [i + 1 for i in sorted(range(40), key=lambda i: -cosine(probe, unit(i)))[:10]]
        assert got == want


def test_a_server_embedder_makes_a_text_query_hybrid_and_words_remain_when_it_is_down(settings, db, tokenizer):
    with EmbeddingsServer(DIM) as server:
        configured = dataclasses.replace(settings, embeddings_url=server.url, embeddings_api_key=API_KEY,
                                         embeddings_timeout=2.0)
        client = webtest.TestApp(create_app(configured, Store.build(configured, db, tokenizer)))
        cid = make(client, [{"role": "user", "content": "red apple", "embedding": bag_of_words("red apple", DIM)},
                            {"role": "user", "content": "green pear", "embedding": bag_of_words("green pear", DIM)}])
        got = search(client, cid, {"query": "pear"}).json
        assert got["mode"] == "hybrid"
        assert got["data"][0]["message"]["content"] == "green pear"
        assert client.get("/health").json["embeddings"]["status"] == "ok"
        server.script.extend([(500, None)] * 3)
        down = search(client, cid, {"query": "apple"}).json
        assert down["mode"] == "text"
        assert [h["message"]["content"] for h in down["data"]] == ["red apple"]
        # Believed down for a while: the next search does not even call it.
        calls = server.requests
        assert search(client, cid, {"query": "apple"}).json["mode"] == "text"
        assert server.requests == calls
    health = client.get("/health").json
    assert health["embeddings"]["status"] == "unavailable"
    assert health["embeddings"]["backlog"] == 0


def test_health_reports_the_backlog_and_disabled_embeddings(client):
    make(client, [msg("waiting"), msg("also waiting"), msg("embedded", seed=1)])
    assert client.get("/health").json["embeddings"] == {"status": "disabled", "backlog": 2}


def test_another_tenants_context_is_404_and_its_messages_never_show(settings, store, db):
    keyed = webtest.TestApp(create_app(settings, store))
    acme, globex = Keys(db).create("acme"), Keys(db).create("globex")
    a = {"Authorization": f"Bearer {acme.key}"}
    g = {"Authorization": f"Bearer {globex.key}"}
    secret = make(keyed, [msg("secret plan", seed=1)], headers=a)
    make(keyed, [msg("public plan", seed=2)], headers=g)
    problem(keyed.post_json(f"/v1/contexts/{secret}/search", {"query": "plan"}, headers=g, status=404), 404)
    seen = keyed.post_json("/v1/search", {"query": "plan"}, headers=g).json["data"]
    assert [h["message"]["content"] for h in seen] == ["public plan"]
    near = keyed.post_json("/v1/search", {"embedding": unit(1), "k": 100}, headers=g).json["data"]
    assert [h["message"]["content"] for h in near] == ["public plan"]
    problem(keyed.post_json("/v1/search", {"query": "plan"}, status=401), 401)


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/query"),
        ({"k": 5}, "/query"),
        ({"query": ""}, "/query"),
        ({"query": "x" * 4097}, "/query"),
        ({"query": "a\u0000b"}, "/query"),
        ({"query": 3}, "/query"),
        ({"query": "a", "k": 0}, "/k"),
        ({"query": "a", "k": 101}, "/k"),
        ({"query": "a", "k": True}, "/k"),
        ({"query": "a", "roles": ["wizard"]}, "/roles/0"),
        ({"query": "a", "roles": []}, "/roles"),
        ({"embedding": [0.1, 0.2]}, "/embedding"),
        # Cosine distance from these is undefined (pgvector: NaN), so no score could carry it.
        ({"embedding": [0.0] * DIM}, "/embedding"),
        ({"embedding": [1e-30] * DIM}, "/embedding"),  # squares to zero in float4
        ({"embedding": [3e37] * DIM}, "/embedding"),  # squared length past float4's range
        ({"query": "a", "as_of_version": 1, "as_of": "2026-01-01T00:00:00Z"}, "/as_of"),
        ({"query": "a", "as_of_version": -1}, "/as_of_version"),
        ({"query": "a", "as_of": "yesterday"}, "/as_of"),
        ({"query": "a", "as_of_version": 5}, "/as_of_version"),
        ({"query": "a", "metadata": {}}, "/metadata"),
        ({"query": "a", "surprise": 1}, "/surprise"),
    ],
)
def test_bad_search_bodies_are_422_naming_the_field(client, body, pointer):
    cid = make(client, [msg("one")])
    doc = problem(search(client, cid, body, status=422), 422)
    assert pointer in [e.get("pointer") for e in doc["errors"]], doc


@pytest.mark.parametrize(
    ("body", "pointer"),
    [({}, "/query"), ({"query": "a", "as_of_version": 1}, "/as_of_version"), ({"query": "a", "metadata": []}, "/metadata")],
)
def test_bad_tenant_search_bodies_are_422_naming_the_field(client, body, pointer):
    doc = problem(client.post_json("/v1/search", body, status=422), 422)
    assert pointer in [e.get("pointer") for e in doc["errors"]], doc


def test_search_refuses_what_is_not_a_json_object_and_unknown_contexts(client):
    cid = make(client, [])
    problem(client.post(f"/v1/contexts/{cid}/search", "{nope", content_type="application/json", status=400), 400)
    problem(client.post(f"/v1/contexts/{cid}/search", "x", content_type="text/plain", status=415), 415)
    problem(client.post_json(f"/v1/contexts/{cid}/search", [1], status=422), 422)
    problem(client.post_json(f"/v1/contexts/{cid}/search?k=3", {"query": "a"}, status=422), 422)
    problem(client.get(f"/v1/contexts/{cid}/search", status=405), 405)
    problem(client.post_json("/v1/contexts/0190c0de-0000-7000-8000-000000000000/search", {"query": "a"},
                             status=404), 404)
    problem(client.post_json("/v1/contexts/not-a-uuid/search", {"query": "a"}, status=404), 404)
    assert search(client, cid, {"query": "a"}).json == {"data": [], "mode": "text"}
    assert search(client, cid, {"embedding": unit(1)}).json == {"data": [], "mode": "semantic"}
