"""A write that writes nothing says why from its own snapshot, in the same round
trip: raced against appends, a fork past the head is always refused as past the
head (never as too deep, the old second-statement guess), and a stale If-Match
always reports the head that beat it."""

from __future__ import annotations

import threading
from dataclasses import replace
from uuid import UUID

import pytest
from support import record_statements

from service.db import Database
from service.errors import Invalid, NotFound, PreconditionFailed
from service.queries import Store

ITERATIONS = 1000
TENANT = "default"


@pytest.fixture
def race_store(settings, tokenizer):
    wide = replace(settings, pool_min_size=2, pool_max_size=4, max_lineage_depth=256)
    database = Database(wide, wide.database_url)
    database.pool.open(wait=True)
    try:
        yield Store.build(wide, database, tokenizer)
    finally:
        database.close()


def together(*calls):
    """Run the calls in threads released at once; their results or exceptions."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[object] = [None] * len(calls)

    def run(i, call):
        barrier.wait()
        try:
            outcomes[i] = call()
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return outcomes


def one(text: str) -> list[dict]:
    return [{"role": "user", "content": text, "token_count": 1}]


def test_a_fork_raced_by_appends_is_refused_only_as_past_the_head(race_store):
    contexts, messages = race_store.contexts, race_store.messages
    cid = contexts.create(TENANT, {})["id"]
    outcomes = {"forked": 0, "past_head": 0}
    for head in range(ITERATIONS):
        fork, append = together(
            lambda: contexts.fork(TENANT, cid, at_version=head + 1, metadata=None),
            lambda: messages.append(TENANT, cid, one(f"m{head}")),
        )
        assert append.head_version == head + 1
        if isinstance(fork, Invalid):
            # The append was not in the fork's snapshot: the true reason, the head it saw.
            assert fork.errors == [{"pointer": "/at_version", "detail": f"Version {head + 1} is past the head ({head})."}]
            outcomes["past_head"] += 1
        else:
            assert fork["fork_version"] == head + 1 and fork["head_version"] == head + 1
            outcomes["forked"] += 1
    assert sum(outcomes.values()) == ITERATIONS


def test_a_stale_if_match_reports_the_head_that_won(race_store):
    messages = race_store.messages
    cid = race_store.contexts.create(TENANT, {})["id"]
    for head in range(ITERATIONS // 2):
        first, second = together(
            lambda: messages.append(TENANT, cid, one("a"), if_match=[head]),
            lambda: messages.append(TENANT, cid, one("b"), if_match=[head]),
        )
        won = [o for o in (first, second) if not isinstance(o, Exception)]
        lost = [o for o in (first, second) if isinstance(o, PreconditionFailed)]
        assert len(won) == 1 and len(lost) == 1, (first, second)
        assert won[0].head_version == head + 1
        assert lost[0].head_version == head + 1  # the current head, not the one it began with


def test_each_refusal_takes_one_round_trip(race_store, monkeypatch):
    contexts, messages = race_store.contexts, race_store.messages
    cid = contexts.create(TENANT, {})["id"]
    messages.append(TENANT, cid, one("x"))
    runs = record_statements(monkeypatch)
    refusals = [
        (PreconditionFailed, lambda: messages.append(TENANT, cid, one("y"), if_match=[0])),
        (NotFound, lambda: messages.append(TENANT, UUID(int=0), one("y"))),
        (Invalid, lambda: contexts.fork(TENANT, cid, at_version=5, metadata=None)),
        (NotFound, lambda: contexts.fork("another-tenant", cid, at_version=None, metadata=None)),
    ]
    for error, call in refusals:
        runs.clear()
        with pytest.raises(error):
            call()
        assert len(runs) == 1, runs
