"""Concurrency (API.md "Concurrency and retries"): concurrent appends to one context
serialize without gaps, loss or duplicates; If-Match lets exactly one of many
racing appends win; appends to different contexts do not wait for each other."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime
from typing import Any, Callable

import pytest
import webtest

from service.queries import Store
from service.app import create_app
from service.db import Database

THREADS = 10


@pytest.fixture
def wide_app(settings, tokenizer):
    """The real app over a pool wide enough for every thread to hold a connection."""
    wide = replace(settings, pool_min_size=2, pool_max_size=THREADS + 2, pool_timeout=20.0)
    database = Database(wide, wide.database_url)
    database.pool.open(wait=True)
    try:
        yield create_app(wide, Store.build(wide, database, tokenizer))
    finally:
        database.close()


def run_threads(count: int, work: Callable[[int, threading.Barrier], Any], timeout: float = 60.0) -> list[Any]:
    """Run work(i, barrier) in count threads started together; re-raise any failure."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            results[i] = work(i, barrier)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def list_all(client, cid: str) -> list[dict]:
    out: list[dict] = []
    after = 0
    while True:
        page = client.get(f"/v1/contexts/{cid}/messages", params={"limit": 1000, "after": after}).json
        out.extend(page["data"])
        if not page["has_more"]:
            return out
        after = int(page["next_cursor"])


def tokens_for(tag: str) -> int:
    return sum(map(ord, tag)) % 23


# ---------------------------------------------------------------- one context


def test_concurrent_appends_to_one_context_are_gapless_and_lose_or_duplicate_nothing(wide_app, postgresql):
    setup = webtest.TestApp(wide_app)
    cid = setup.post_json("/v1/contexts", {}, status=201).json["id"]
    batches_per_thread = 12

    def work(i: int, barrier: threading.Barrier) -> list[tuple[list[str], dict]]:
        client = webtest.TestApp(wide_app)
        sent = []
        barrier.wait()
        for b in range(batches_per_thread):
            size = 1 + (i + b) % 4
            tags = [f"t{i}-b{b}-m{k}" for k in range(size)]
            body = {"messages": [{"role": "user", "content": tag, "token_count": tokens_for(tag)} for tag in tags]}
            resp = client.post_json(f"/v1/contexts/{cid}/messages", body, status=201)
            sent.append((tags, resp.json))
        return sent

    results = run_threads(THREADS, work)
    acknowledged = [item for per_thread in results for item in per_thread]
    sent_tags = [tag for tags, _ in acknowledged for tag in tags]
    n = len(sent_tags)

    messages = list_all(setup, cid)
    # Versions are exactly 1..N, without gaps.
    assert [m["version"] for m in messages] == list(range(1, n + 1))
    # Every message sent appears exactly once.
    counts = Counter(m["content"] for m in messages)
    assert set(counts) == set(sent_tags)
    assert max(counts.values()) == 1
    by_content = {m["content"]: m for m in messages}

    # Each acknowledged batch got consecutive versions, in order, ending at the
    # head_version it reported, with the running total it reported.
    running = [0]
    for m in messages:
        running.append(running[-1] + m["token_count"])
    heads = []
    for tags, result in acknowledged:
        got = [by_content[tag]["version"] for tag in tags]
        assert got == [m["version"] for m in result["data"]]
        assert got == list(range(result["head_version"] - len(tags) + 1, result["head_version"] + 1))
        assert result["total_tokens"] == running[result["head_version"]]
        assert len({by_content[tag]["created_at"] for tag in tags}) == 1
        assert by_content[tags[0]]["created_at"] == result["data"][0]["created_at"]
        heads.append(result["head_version"])
    assert len(set(heads)) == len(heads)

    # Token totals agree everywhere: the context, the messages, and stored cum_tokens.
    assert all(m["token_count"] == tokens_for(m["content"]) for m in messages)
    doc = setup.get(f"/v1/contexts/{cid}").json
    assert doc["head_version"] == n
    assert doc["total_tokens"] == running[n] == sum(tokens_for(t) for t in sent_tags)
    stored = postgresql.execute(
        "SELECT version, cum_tokens FROM messages WHERE context_id = %s ORDER BY version", (cid,)
    ).fetchall()
    postgresql.rollback()
    assert stored == [(v, running[v]) for v in range(1, n + 1)]
    window = setup.get(f"/v1/contexts/{cid}/window", params={"max_tokens": 10_000_000}).json
    assert window["token_count"] == running[n] and window["from_version"] == 1 and window["to_version"] == n

    # created_at never decreases as versions grow.
    stamps = [parse(m["created_at"]) for m in messages]
    assert stamps == sorted(stamps)


def test_concurrent_if_match_appends_on_the_same_head_let_exactly_one_win(wide_app):
    setup = webtest.TestApp(wide_app)
    cid = setup.post_json("/v1/contexts", {}, status=201).json["id"]
    setup.post_json(
        f"/v1/contexts/{cid}/messages",
        {"messages": [{"role": "system", "content": "base", "token_count": 1}]},
        status=201,
    )
    expected = ["base"]
    total = 1
    for round_ in range(4):
        head = len(expected)

        def work(i: int, barrier: threading.Barrier, head: int = head, round_: int = round_):
            client = webtest.TestApp(wide_app)
            tags = [f"r{round_}-t{i}-m{k}" for k in range(1 + i % 3)]
            body = {"messages": [{"role": "user", "content": t, "token_count": 2} for t in tags]}
            barrier.wait()
            resp = client.post_json(
                f"/v1/contexts/{cid}/messages", body, headers={"If-Match": f'"{head}"'}, expect_errors=True
            )
            return tags, resp.status_int, resp.json

        results = run_threads(THREADS, work)
        winners = [r for r in results if r[1] == 201]
        losers = [r for r in results if r[1] != 201]
        assert len(winners) == 1, [r[1] for r in results]
        assert all(status == 412 for _, status, _ in losers), [r[1] for r in results]
        for _, _, problem in losers:
            assert problem["type"] == "/problems/precondition-failed"
            assert problem["status"] == 412
        tags, _, result = winners[0]
        expected.extend(tags)
        total += 2 * len(tags)
        assert result["head_version"] == len(expected)
        assert [m["version"] for m in result["data"]] == list(range(head + 1, len(expected) + 1))

        # Only the winner's messages were written.
        messages = list_all(setup, cid)
        assert [m["content"] for m in messages] == expected
        doc = setup.get(f"/v1/contexts/{cid}")
        assert doc.json["head_version"] == len(expected) and doc.json["total_tokens"] == total
        assert doc.headers["ETag"] == f'"{len(expected)}"'


def test_concurrent_appends_to_a_fork_and_its_parent_stay_separate_and_gapless(wide_app):
    setup = webtest.TestApp(wide_app)
    parent = setup.post_json("/v1/contexts", {}, status=201).json["id"]
    setup.post_json(
        f"/v1/contexts/{parent}/messages",
        {"messages": [{"role": "user", "content": f"base{k}", "token_count": 1} for k in range(3)]},
        status=201,
    )
    child = setup.post_json(f"/v1/contexts/{parent}/forks", {}, status=201).json["id"]
    targets = [parent, child]

    def work(i: int, barrier: threading.Barrier) -> list[str]:
        client = webtest.TestApp(wide_app)
        target = targets[i % 2]
        tags = []
        barrier.wait()
        for b in range(8):
            tag = f"{i}-{b}"
            client.post_json(
                f"/v1/contexts/{target}/messages",
                {"messages": [{"role": "user", "content": tag, "token_count": 1}]},
                status=201,
            )
            tags.append(tag)
        return tags

    results = run_threads(THREADS, work)
    for index, target in enumerate(targets):
        sent = {tag for i, tags in enumerate(results) if i % 2 == index for tag in tags}
        messages = list_all(setup, target)
        assert [m["version"] for m in messages] == list(range(1, 3 + len(sent) + 1))
        assert [m["content"] for m in messages[:3]] == ["base0", "base1", "base2"]
        assert {m["content"] for m in messages[3:]} == sent
        assert all(m["context_id"] == target for m in messages[3:])
        assert setup.get(f"/v1/contexts/{target}").json["total_tokens"] == 3 + len(sent)


# ---------------------------------------------------------------- different contexts


def test_append_to_one_context_does_not_wait_for_a_lock_held_on_another(wide_app, postgresql):
    """Hold context A's row lock in a separate transaction: an append to A must wait,
    while appends to B (and reads of A) go through at once."""
    setup = webtest.TestApp(wide_app)
    a = setup.post_json("/v1/contexts", {}, status=201).json["id"]
    b = setup.post_json("/v1/contexts", {}, status=201).json["id"]
    one = {"messages": [{"role": "user", "content": "x", "token_count": 1}]}

    postgresql.execute("SELECT 1 FROM contexts WHERE id = %s FOR UPDATE", (a,))
    blocked_result: dict[str, Any] = {}

    def append_to_a() -> None:
        resp = webtest.TestApp(wide_app).post_json(f"/v1/contexts/{a}/messages", one, expect_errors=True)
        blocked_result["status"] = resp.status_int
        blocked_result["done"] = time.monotonic()

    thread = threading.Thread(target=append_to_a, daemon=True)
    try:
        thread.start()
        time.sleep(0.3)
        assert "status" not in blocked_result, "the append to A should wait for A's row lock"
        started = time.monotonic()
        for k in range(5):
            resp = setup.post_json(f"/v1/contexts/{b}/messages", one, status=201)
            assert resp.json["head_version"] == k + 1
        assert setup.get(f"/v1/contexts/{a}").json["head_version"] == 0
        assert time.monotonic() - started < 3.0
        assert "status" not in blocked_result, "the append to A went through while A was locked"
    finally:
        released = time.monotonic()
        postgresql.rollback()
        thread.join(20)
    assert not thread.is_alive()
    assert blocked_result["status"] == 201
    assert blocked_result["done"] >= released
    assert setup.get(f"/v1/contexts/{a}").json["head_version"] == 1


def test_concurrent_appends_to_two_contexts_overlap_in_time(wide_app):
    """Threads appending to two contexts at once: both stay gapless, each holds only
    its own messages, and the two contexts' appends ran during overlapping periods."""
    setup = webtest.TestApp(wide_app)
    ids = [setup.post_json("/v1/contexts", {}, status=201).json["id"] for _ in range(2)]
    per_thread = 10

    def work(i: int, barrier: threading.Barrier) -> list[tuple[float, float]]:
        client = webtest.TestApp(wide_app)
        target = ids[i % 2]
        spans = []
        barrier.wait()
        for b in range(per_thread):
            start = time.monotonic()
            client.post_json(
                f"/v1/contexts/{target}/messages",
                {"messages": [{"role": "user", "content": f"{i}-{b}", "token_count": 1}]},
                status=201,
            )
            spans.append((start, time.monotonic()))
        return spans

    results = run_threads(8, work)
    for index, cid in enumerate(ids):
        messages = list_all(setup, cid)
        assert [m["version"] for m in messages] == list(range(1, 4 * per_thread + 1))
        assert len({m["content"] for m in messages}) == 4 * per_thread
        assert {int(m["content"].split("-")[0]) % 2 for m in messages} == {index}
    # The two contexts' appends ran during overlapping periods (neither waited for
    # the other to finish all of its work).
    spans = [[s for i, r in enumerate(results) if i % 2 == index for s in r] for index in range(2)]
    first_end = [max(end for _, end in s) for s in spans]
    first_start = [min(start for start, _ in s) for s in spans]
    assert first_start[0] < first_end[1] and first_start[1] < first_end[0]


# ---------------------------------------------------------------- forks racing appends


def test_forks_at_head_taken_while_the_parent_is_appended_to_are_self_consistent(wide_app):
    setup = webtest.TestApp(wide_app)
    pid = setup.post_json("/v1/contexts", {}, status=201).json["id"]

    def work(i: int, barrier: threading.Barrier) -> list[dict]:
        client = webtest.TestApp(wide_app)
        forks = []
        barrier.wait()
        for b in range(8):
            if i % 2:
                client.post_json(
                    f"/v1/contexts/{pid}/messages",
                    {"messages": [{"role": "user", "content": f"{i}-{b}-{k}", "token_count": 1 + k} for k in range(3)]},
                    status=201,
                )
            else:
                forks.append(client.post_json(f"/v1/contexts/{pid}/forks", {}, status=201).json)
        return forks

    results = run_threads(8, work)
    parent_view = setup.get(f"/v1/contexts/{pid}/messages", params={"limit": 1000}).json["data"]
    for doc in (d for forks in results for d in forks):
        head = doc["head_version"]
        assert head % 3 == 0 and head == doc["fork_version"]
        listed = setup.get(f"/v1/contexts/{doc['id']}/messages", params={"limit": 1000}).json["data"]
        assert listed == parent_view[:head]
        assert doc["total_tokens"] == sum(m["token_count"] for m in listed)



def test_fork_at_a_version_created_by_a_racing_append_has_consistent_total_tokens(wide_app, postgresql):
    """A fork that asks for a version an in-flight append is creating either fails
    (422: past the head when asked) or sees that append whole: its total_tokens is
    then the sum of its messages 1..fork_version, as API.md defines it."""
    setup = webtest.TestApp(wide_app)
    pid = setup.post_json("/v1/contexts", {}, status=201).json["id"]
    setup.post_json(
        f"/v1/contexts/{pid}/messages",
        {"messages": [{"role": "user", "content": f"m{k}", "token_count": 10} for k in range(1, 6)]},
        status=201,
    )
    batch = {
        "messages": [
            {"role": "user", "content": "m6", "token_count": 7},
            {"role": "user", "content": "m7", "token_count": 9},
        ]
    }
    outcome: dict[str, Any] = {}

    def append() -> None:
        outcome["append"] = webtest.TestApp(wide_app).post_json(
            f"/v1/contexts/{pid}/messages", batch, expect_errors=True
        ).status_int

    def fork() -> None:
        outcome["fork"] = webtest.TestApp(wide_app).post_json(
            f"/v1/contexts/{pid}/forks", {"at_version": 6}, expect_errors=True
        )

    # Hold the parent's row so that the append, then the fork, queue behind it.
    postgresql.execute("SELECT 1 FROM contexts WHERE id = %s FOR UPDATE", (pid,))
    threads = [threading.Thread(target=append, daemon=True), threading.Thread(target=fork, daemon=True)]
    try:
        threads[0].start()
        time.sleep(0.4)
        threads[1].start()
        time.sleep(0.4)
    finally:
        postgresql.rollback()
        for t in threads:
            t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert outcome["append"] == 201
    resp = outcome["fork"]
    if resp.status_int == 422:
        return
    assert resp.status_int == 201
    doc = resp.json
    listed = setup.get(f"/v1/contexts/{doc['id']}/messages").json["data"]
    assert [m["version"] for m in listed] == [1, 2, 3, 4, 5, 6]
    assert doc["head_version"] == 6
    assert doc["total_tokens"] == sum(m["token_count"] for m in listed) == 57
    assert setup.get(f"/v1/contexts/{doc['id']}").json["total_tokens"] == 57
    # Appends to the fork build on that total.
    more = setup.post_json(
        f"/v1/contexts/{doc['id']}/messages",
        {"messages": [{"role": "user", "content": "f7", "token_count": 1}]},
        status=201,
    ).json
    assert more["total_tokens"] == 58
    window = setup.get(f"/v1/contexts/{doc['id']}/window", params={"max_tokens": 9}).json
    assert [m["content"] for m in window["data"]] == ["m6", "f7"]
