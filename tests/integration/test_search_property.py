"""Property: search sees exactly a context's view. For random conversations,
forks at random versions, appends to parents and forks after the fork, and
searches at random as_of_version, per-context and tenant-wide search agree with
a brute-force reference over the views the API promises."""

from __future__ import annotations

import functools
import math
import random
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DIM = 1536
WORDS = ("apple", "pear", "plum", "fig", "kiwi")

pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"
)

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@functools.lru_cache(maxsize=4096)
def unit(seed: int) -> list[float]:
    rng = random.Random(seed)
    v = [rng.gauss(0, 1) for _ in range(DIM)]
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


class World:
    """Contexts made through the API, with each one's expected view: a list of
    (holder, version, content, embedding seed)."""

    def __init__(self, client) -> None:
        self.client = client
        self.views: dict[str, list[tuple[str, int, str, int]]] = {}
        # Examples share one database: tenant-wide searches filter on this tag
        # (forks copy their parent's metadata). Not from `random`: hypothesis
        # seeds it alike for every example.
        self.tag = {"example": uuid.uuid4().hex}
        self.seed = uuid.uuid4().int >> 100

    def create(self) -> str:
        cid = self.client.post_json("/v1/contexts", {"metadata": self.tag}, status=201).json["id"]
        self.views[cid] = []
        return cid

    def append(self, cid: str, words: list[str]) -> None:
        view = self.views[cid]
        body = []
        for word in words:
            self.seed += 1
            body.append({"role": "user", "content": f"{word} {self.seed}", "token_count": 1,
                         "embedding": unit(self.seed)})
            view.append((cid, len(view) + 1, f"{word} {self.seed}", self.seed))
        self.client.post_json(f"/v1/contexts/{cid}/messages", {"messages": body}, status=201)

    def fork(self, parent: str, at: int) -> str:
        cid = self.client.post_json(f"/v1/contexts/{parent}/forks", {"at_version": at}, status=201).json["id"]
        self.views[cid] = list(self.views[parent][:at])
        return cid


def keys(result) -> list[tuple[str, int]]:
    return [(h["message"]["context_id"], h["message"]["version"]) for h in result["data"]]


@PROPERTY
@given(data=st.data())
def test_search_sees_exactly_the_view(client, data):
    world = World(client)
    words = st.lists(st.sampled_from(WORDS), max_size=8)
    root = world.create()
    world.append(root, data.draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=10), label="root"))
    contexts = [root]
    for n in range(data.draw(st.integers(0, 3), label="forks")):
        parent = data.draw(st.sampled_from(contexts), label=f"parent {n}")
        at = data.draw(st.integers(0, len(world.views[parent])), label=f"at {n}")
        child = world.fork(parent, at)
        contexts.append(child)
        for target in (child, parent):
            extra = data.draw(words, label=f"appends {n}")
            if extra:
                world.append(target, extra)

    for cid in contexts:
        view = world.views[cid]
        as_of = data.draw(st.none() | st.integers(0, len(view)), label="as_of_version")
        seen = view if as_of is None else view[:as_of]
        point = {} if as_of is None else {"as_of_version": as_of}
        probe = data.draw(st.integers(0, 1 << 30), label="probe")
        got = client.post_json(f"/v1/contexts/{cid}/search", {"embedding": unit(probe), "k": 100, **point}).json
        order = sorted(seen, key=lambda m: -sum(a * b for a, b in zip(unit(probe), unit(m[3]))))
        assert keys(got) == [(m[0], m[1]) for m in order]
        word = data.draw(st.sampled_from(WORDS), label="word")
        got = client.post_json(f"/v1/contexts/{cid}/search", {"query": word, "k": 100, **point}).json
        assert sorted(keys(got)) == sorted((m[0], m[1]) for m in seen if m[2].split()[0] == word)
        scores = [h["score"] for h in got["data"]]
        assert scores == sorted(scores, reverse=True)

    # Tenant-wide: every message of every live view, once, under its holder.
    if data.draw(st.booleans(), label="delete one"):
        gone = data.draw(st.sampled_from(contexts), label="deleted")
        client.delete(f"/v1/contexts/{gone}", status=204)
        contexts.remove(gone)
        del world.views[gone]
    covered = {(m[0], m[1]): m for view in world.views.values() for m in view}
    word = data.draw(st.sampled_from(WORDS), label="tenant word")
    got = client.post_json("/v1/search", {"query": word, "k": 100, "metadata": world.tag}).json
    assert sorted(keys(got)) == sorted(key for key, m in covered.items() if m[2].split()[0] == word)
    got = client.post_json("/v1/search", {"embedding": unit(7), "k": 100, "metadata": world.tag}).json
    assert sorted(keys(got)) == sorted(covered)
