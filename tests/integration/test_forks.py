"""Forks (API.md "Forks and point-in-time"): POST /v1/contexts/{id}/forks, reading
a fork through every ancestor, independence of parent and fork, and the promise
that a fork copies no message."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

from support import Msg, check_window_summary, reference_window

FIELDS = ("context_id", "version", "role", "content", "token_count")


# ---------------------------------------------------------------- helpers


def create(client, metadata: dict | None = None) -> dict:
    body = {} if metadata is None else {"metadata": metadata}
    return client.post_json("/v1/contexts", body, status=201).json


def append(client, cid: str, specs: list[tuple[str, str, int]], **kw) -> dict:
    """Append (role, content, token_count) triples as one batch."""
    body = {"messages": [{"role": r, "content": c, "token_count": t} for r, c, t in specs]}
    return client.post_json(f"/v1/contexts/{cid}/messages", body, status=201, **kw).json


def fork(client, cid: str, body: dict | None = None, status: int = 201):
    if body is None:
        return client.post(f"/v1/contexts/{cid}/forks", status=status)
    return client.post_json(f"/v1/contexts/{cid}/forks", body, status=status)


def strip(messages: list[Msg]) -> list[tuple]:
    return [tuple(m[f] for f in FIELDS) for m in messages]


def list_all(client, cid: str, **params) -> list[Msg]:
    params.setdefault("limit", 1000)
    page = client.get(f"/v1/contexts/{cid}/messages", params=params).json
    assert page["has_more"] is False
    return page["data"]


def page_through(client, cid: str, order: str, limit: int, **extra) -> list[Msg]:
    """Follow next_cursor (and check the Link header names the same page)."""
    out: list[Msg] = []
    params: dict[str, Any] = {"order": order, "limit": limit, **extra}
    for _ in range(1000):
        resp = client.get(f"/v1/contexts/{cid}/messages", params=params)
        page = resp.json
        assert len(page["data"]) <= limit
        out.extend(page["data"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            assert "Link" not in resp.headers
            return out
        assert page["next_cursor"] == str(page["data"][-1]["version"])
        key = "before" if order == "desc" else "after"
        match = re.fullmatch(r'\s*<([^>]*)>\s*;\s*rel="?next"?\s*', resp.headers["Link"])
        assert match, resp.headers["Link"]
        link_query = parse_qs(urlsplit(match.group(1)).query)
        assert link_query[key] == [page["next_cursor"]]
        assert link_query["limit"] == [str(limit)]
        params[key] = page["next_cursor"]
    raise AssertionError("pagination never ended")


def check_window(client, cid: str, view: list[Msg], max_tokens: int, pin_system: bool = False, **params):
    resp = client.get(
        f"/v1/contexts/{cid}/window",
        params={"max_tokens": max_tokens, "pin_system": str(pin_system).lower(), **params},
    )
    got = resp.json
    want = reference_window(view, max_tokens, pin_system)
    assert strip(got["data"]) == strip(want), (max_tokens, pin_system)
    check_window_summary(got, want, len(view), max_tokens)
    return resp


def message_rows(postgresql) -> int:
    count = postgresql.execute("SELECT count(*) FROM messages").fetchone()[0]
    postgresql.rollback()
    return count


def context_rows(postgresql) -> int:
    count = postgresql.execute("SELECT count(*) FROM contexts").fetchone()[0]
    postgresql.rollback()
    return count


class Model:
    """What every context's view should be: the expected messages, in order."""

    def __init__(self, client) -> None:
        self.client = client
        self.views: dict[str, list[Msg]] = {}
        self.parents: dict[str, tuple[str | None, int | None]] = {}

    def root(self, specs: list[tuple[str, int]], label: str) -> str:
        cid = create(self.client, {"label": label})["id"]
        self.views[cid] = []
        self.parents[cid] = (None, None)
        self.append(cid, specs, label)
        return cid

    def fork(self, parent: str, at: int, label: str) -> str:
        doc = fork(self.client, parent, {"at_version": at}).json
        cid = doc["id"]
        self.views[cid] = list(self.views[parent][:at])
        self.parents[cid] = (parent, at)
        assert doc["head_version"] == at
        assert doc["total_tokens"] == sum(m["token_count"] for m in self.views[cid])
        return cid

    def append(self, cid: str, specs: list[tuple[str, int]], label: str) -> None:
        if not specs:
            return
        head = len(self.views[cid])
        triples = [(role, f"{label}-v{head + i + 1}", tokens) for i, (role, tokens) in enumerate(specs)]
        result = append(self.client, cid, triples)
        for i, (role, content, tokens) in enumerate(triples):
            self.views[cid].append(
                {"context_id": cid, "version": head + i + 1, "role": role, "content": content, "token_count": tokens}
            )
        assert result["head_version"] == len(self.views[cid])
        assert result["total_tokens"] == sum(m["token_count"] for m in self.views[cid])
        assert [m["version"] for m in result["data"]] == list(range(head + 1, head + len(specs) + 1))

    def check(self, cid: str) -> None:
        """Every read of cid agrees with the model."""
        client, view = self.client, self.views[cid]
        parent, at = self.parents[cid]
        head = len(view)
        resp = client.get(f"/v1/contexts/{cid}")
        doc = resp.json
        assert doc["parent_id"] == parent
        assert doc["fork_version"] == at
        assert doc["head_version"] == head
        assert doc["total_tokens"] == sum(m["token_count"] for m in view)
        assert resp.headers["ETag"] == f'"{head}"'

        assert strip(list_all(client, cid)) == strip(view)
        assert strip(list_all(client, cid, order="desc")) == strip(view[::-1])
        assert strip(page_through(client, cid, "asc", 2)) == strip(view)
        assert strip(page_through(client, cid, "desc", 3)) == strip(view[::-1])
        # after / before at every position, including lineage boundaries.
        for k in range(0, head + 1):
            got = client.get(f"/v1/contexts/{cid}/messages", params={"after": k, "limit": 2}).json
            assert strip(got["data"]) == strip(view[k : k + 2])
            assert got["has_more"] is (k + 2 < head)
            got = client.get(
                f"/v1/contexts/{cid}/messages", params={"before": k + 1, "order": "desc", "limit": 2}
            ).json
            assert strip(got["data"]) == strip(view[max(0, k - 2) : k][::-1])
            assert got["has_more"] is (k - 2 > 0)
        for m in view:
            got = client.get(f"/v1/contexts/{cid}/messages/{m['version']}").json
            assert strip([got]) == strip([m])
        client.get(f"/v1/contexts/{cid}/messages/{head + 1}", status=404)

        total = sum(m["token_count"] for m in view)
        budgets = {1, 2, 3, 5, 8, 13, 21, 34, total // 2, total - 1, total, total + 1}
        for budget in sorted(b for b in budgets if b >= 1):
            check_window(client, cid, view, budget)
            check_window(client, cid, view, budget, pin_system=True)


# ---------------------------------------------------------------- creation


def test_fork_returns_201_with_location_parent_fork_version_and_tokens_at_that_version(client):
    parent = create(client, {"team": "a", "n": 1})
    pid = parent["id"]
    append(client, pid, [("system", "s", 5), ("user", "u1", 7), ("assistant", "a1", 11)])
    append(client, pid, [("user", "u2", 13), ("assistant", "a2", 17)])

    resp = fork(client, pid, {"at_version": 3})
    doc = resp.json
    assert resp.status_int == 201
    assert resp.headers["Location"].endswith(f"/v1/contexts/{doc['id']}")
    assert doc["id"] != pid
    assert doc["parent_id"] == pid
    assert doc["fork_version"] == 3
    assert doc["head_version"] == 3
    assert doc["total_tokens"] == 5 + 7 + 11
    assert doc["metadata"] == {"team": "a", "n": 1}

    again = client.get(resp.headers["Location"])
    assert again.json == doc
    assert again.headers["ETag"] == '"3"'
    # The parent is untouched.
    after = client.get(f"/v1/contexts/{pid}").json
    assert after["head_version"] == 5 and after["total_tokens"] == 53
    assert after["parent_id"] is None and after["fork_version"] is None


def test_fork_without_metadata_copies_parent_metadata_and_later_parent_patch_does_not_leak(client):
    pid = create(client, {"a": 1, "nested": {"b": [1, 2]}})["id"]
    child = fork(client, pid).json
    assert child["metadata"] == {"a": 1, "nested": {"b": [1, 2]}}
    client.patch_json(f"/v1/contexts/{pid}", {"metadata": {"a": 2, "c": 3}}, status=200)
    assert client.get(f"/v1/contexts/{child['id']}").json["metadata"] == {"a": 1, "nested": {"b": [1, 2]}}
    client.patch_json(f"/v1/contexts/{child['id']}", {"metadata": {"d": 4}}, status=200)
    assert client.get(f"/v1/contexts/{pid}").json["metadata"] == {"a": 2, "nested": {"b": [1, 2]}, "c": 3}


def test_fork_with_metadata_replaces_parent_metadata_instead_of_merging(client):
    pid = create(client, {"a": 1, "b": 2})["id"]
    child = fork(client, pid, {"metadata": {"c": 3}}).json
    assert child["metadata"] == {"c": 3}
    empty = fork(client, pid, {"metadata": {}}).json
    assert empty["metadata"] == {}


def test_fork_at_zero_is_empty_and_shares_nothing_with_parent(client):
    pid = create(client)["id"]
    append(client, pid, [("system", "s", 4), ("user", "u", 6)])
    child = fork(client, pid, {"at_version": 0}).json
    assert child["fork_version"] == 0 and child["head_version"] == 0 and child["total_tokens"] == 0
    cid = child["id"]
    assert list_all(client, cid) == []
    client.get(f"/v1/contexts/{cid}/messages/1", status=404)
    window = client.get(f"/v1/contexts/{cid}/window", params={"max_tokens": 100}).json
    assert window["data"] == [] and window["from_version"] is None and window["to_version"] is None
    assert window["truncated"] is False and window["token_count"] == 0

    result = append(client, cid, [("user", "fresh", 3)])
    assert result["head_version"] == 1 and result["total_tokens"] == 3
    msgs = list_all(client, cid)
    assert strip(msgs) == [(cid, 1, "user", "fresh", 3)]


def test_fork_defaults_to_head_and_explicit_head_is_the_same(client):
    pid = create(client)["id"]
    append(client, pid, [("user", "a", 2), ("assistant", "b", 3), ("user", "c", 0)])
    for child in (fork(client, pid).json, fork(client, pid, {}).json, fork(client, pid, {"at_version": 3}).json):
        assert child["fork_version"] == 3
        assert child["head_version"] == 3
        assert child["total_tokens"] == 5
        assert strip(list_all(client, child["id"])) == strip(list_all(client, pid))


def test_fork_of_empty_context_at_its_head_zero(client):
    pid = create(client)["id"]
    child = fork(client, pid).json
    assert child["fork_version"] == 0 and child["head_version"] == 0
    fork(client, pid, {"at_version": 1}, status=422)


def test_fork_at_version_past_head_is_422_pointing_at_at_version(client):
    pid = create(client)["id"]
    append(client, pid, [("user", "a", 1), ("user", "b", 1)])
    before = client.get("/v1/contexts", params={"limit": 1000}).json["data"]
    resp = fork(client, pid, {"at_version": 3}, status=422)
    problem = resp.json
    assert resp.content_type == "application/problem+json"
    assert problem["type"] == "/problems/validation-error"
    assert problem["status"] == 422
    assert problem["instance"] == f"/v1/contexts/{pid}/forks"
    assert any(e.get("pointer") == "/at_version" for e in problem["errors"])
    # Nothing was created.
    assert client.get("/v1/contexts", params={"limit": 1000}).json["data"] == before


def test_fork_at_version_past_head_of_a_fork_uses_the_forks_own_head(client):
    pid = create(client)["id"]
    append(client, pid, [("user", "a", 1)] * 1 + [("user", "b", 1), ("user", "c", 1), ("user", "d", 1)])
    child = fork(client, pid, {"at_version": 2}).json["id"]
    # The parent has version 4, but the fork's head is 2.
    problem = fork(client, child, {"at_version": 3}, status=422).json
    assert any(e.get("pointer") == "/at_version" for e in problem["errors"])
    assert fork(client, child, {"at_version": 2}).json["head_version"] == 2


def test_fork_at_version_that_is_not_a_non_negative_integer_is_422(client):
    pid = create(client)["id"]
    append(client, pid, [("user", "a", 1), ("user", "b", 1)])
    for bad in (-1, -1000, "1", 1.5, True):
        problem = fork(client, pid, {"at_version": bad}, status=422).json
        assert problem["type"] == "/problems/validation-error", bad
        assert any(e.get("pointer") == "/at_version" for e in problem["errors"]), bad
    assert len(client.get("/v1/contexts").json["data"]) == 1


def test_fork_of_unknown_context_is_404(client):
    resp = fork(client, str(uuid4()), {"at_version": 0}, status=404)
    assert resp.json["type"] == "/problems/not-found"
    fork(client, "not-a-uuid", status=404)


def test_fork_of_deleted_context_is_404_even_at_a_valid_version(client, postgresql):
    pid = create(client)["id"]
    append(client, pid, [("user", "a", 1)])
    client.delete(f"/v1/contexts/{pid}", status=204)
    rows = context_rows(postgresql)
    assert fork(client, pid, {"at_version": 1}, status=404).json["type"] == "/problems/not-found"
    assert fork(client, pid, status=404).json["status"] == 404
    assert context_rows(postgresql) == rows


def test_fork_rejects_unknown_body_fields_and_query_parameters(client):
    pid = create(client)["id"]
    problem = fork(client, pid, {"at_version": 0, "copy": True}, status=422).json
    assert any(e.get("pointer") == "/copy" for e in problem["errors"])
    client.post(f"/v1/contexts/{pid}/forks?at_version=0", status=422)


# ---------------------------------------------------------------- lineage


def test_forks_of_forks_to_depth_eight_read_through_every_ancestor(client, postgresql):
    model = Model(client)
    c0 = model.root([("system", 5), ("user", 3), ("assistant", 0), ("user", 7), ("assistant", 2), ("tool", 4)], "c0")
    c1 = model.fork(c0, 4, "c1")
    model.append(c1, [("user", 6), ("assistant", 0), ("user", 1)], "c1")  # own 5..7
    c2 = model.fork(c1, 6, "c2")  # c0 1..4, c1 5..6
    model.append(c2, [("assistant", 9), ("user", 0)], "c2")  # own 7..8
    c3 = model.fork(c2, 8, "c3")  # no own messages
    c4 = model.fork(c3, 8, "c4")  # parent holds nothing itself
    model.append(c4, [("user", 2), ("tool", 0), ("assistant", 8)], "c4")  # own 9..11
    # Lower than its parent's own fork_version (8) and than c2's (6): only c0 1..4, c1 5.
    c5 = model.fork(c4, 5, "c5")
    model.append(c5, [("user", 3), ("assistant", 1)], "c5")  # own 6..7
    c6 = model.fork(c5, 7, "c6")
    model.append(c6, [("user", 0), ("assistant", 4)], "c6")  # own 8..9
    c7 = model.fork(c6, 2, "c7")  # deep into the root only
    model.append(c7, [("user", 5), ("assistant", 5), ("user", 0), ("assistant", 3)], "c7")  # own 3..6
    c8 = model.fork(c7, 6, "c8")
    model.append(c8, [("user", 1)], "c8")  # own 7

    # Later appends to ancestors never show up in their descendants.
    model.append(c0, [("user", 10), ("assistant", 10)], "c0late")
    model.append(c4, [("user", 1)], "c4late")
    model.append(c1, [("assistant", 2)], "c1late")

    chain = [c0, c1, c2, c3, c4, c5, c6, c7, c8]
    for cid in chain:
        model.check(cid)

    # Spot checks of who holds what, beyond the model's own bookkeeping.
    c5_view = list_all(client, c5)
    assert [m["context_id"] for m in c5_view] == [c0] * 4 + [c1] + [c5] * 2
    c8_view = list_all(client, c8)
    assert [m["context_id"] for m in c8_view] == [c0] * 2 + [c7] * 4 + [c8]
    c4_view = list_all(client, c4)
    assert [m["context_id"] for m in c4_view] == [c0] * 4 + [c1] * 2 + [c2] * 2 + [c4] * 4
    assert c3 not in {m["context_id"] for m in c4_view}

    # Every message row exists once, in the context that appended it.
    own = sum(1 for cid in chain for m in model.views[cid] if m["context_id"] == cid)
    assert message_rows(postgresql) == own


def test_fork_at_parents_fork_version_reads_only_grandparent(client):
    model = Model(client)
    root = model.root([("user", 1), ("assistant", 2), ("user", 3)], "r")
    mid = model.fork(root, 2, "m")
    model.append(mid, [("user", 4), ("assistant", 5)], "m")
    leaf = model.fork(mid, 2, "l")
    model.append(leaf, [("tool", 6)], "l")
    model.check(leaf)
    assert {m["context_id"] for m in list_all(client, leaf)} == {root, leaf}


def test_message_context_id_names_the_physical_holder_in_every_read(client):
    model = Model(client)
    root = model.root([("system", 2), ("user", 3)], "r")
    child = model.fork(root, 2, "c")
    model.append(child, [("assistant", 4)], "c")
    assert client.get(f"/v1/contexts/{child}/messages/1").json["context_id"] == root
    assert client.get(f"/v1/contexts/{child}/messages/2").json["context_id"] == root
    assert client.get(f"/v1/contexts/{child}/messages/3").json["context_id"] == child
    window = client.get(f"/v1/contexts/{child}/window", params={"max_tokens": 100}).json
    assert [m["context_id"] for m in window["data"]] == [root, root, child]
    desc = client.get(f"/v1/contexts/{child}/messages", params={"order": "desc"}).json
    assert [m["context_id"] for m in desc["data"]] == [child, root, root]


# ---------------------------------------------------------------- independence


def test_parent_appends_after_fork_are_invisible_in_fork_and_vice_versa(client):
    pid = create(client)["id"]
    append(client, pid, [("system", "s", 3), ("user", "u1", 4), ("assistant", "a1", 5)])
    cid = fork(client, pid, {"at_version": 3}).json["id"]

    parent_add = append(client, pid, [("user", "parent-4", 10), ("assistant", "parent-5", 20)])
    assert parent_add["head_version"] == 5 and parent_add["total_tokens"] == 42
    child_add = append(client, cid, [("user", "child-4", 1)])
    # Versions in the fork continue at fork_version + 1, whatever the parent did.
    assert [m["version"] for m in child_add["data"]] == [4]
    assert child_add["data"][0]["context_id"] == cid
    assert child_add["head_version"] == 4 and child_add["total_tokens"] == 13

    parent_msgs = list_all(client, pid)
    child_msgs = list_all(client, cid)
    assert [m["content"] for m in parent_msgs] == ["s", "u1", "a1", "parent-4", "parent-5"]
    assert [m["content"] for m in child_msgs] == ["s", "u1", "a1", "child-4"]
    assert parent_msgs[:3] == child_msgs[:3]
    assert client.get(f"/v1/contexts/{cid}/messages/4").json["content"] == "child-4"
    assert client.get(f"/v1/contexts/{pid}/messages/4").json["content"] == "parent-4"
    client.get(f"/v1/contexts/{cid}/messages/5", status=404)

    assert client.get(f"/v1/contexts/{pid}").json["total_tokens"] == 42
    assert client.get(f"/v1/contexts/{cid}").json["total_tokens"] == 13
    window = client.get(f"/v1/contexts/{cid}/window", params={"max_tokens": 6}).json
    assert [m["content"] for m in window["data"]] == ["a1", "child-4"]
    window = client.get(f"/v1/contexts/{pid}/window", params={"max_tokens": 20}).json
    assert [m["content"] for m in window["data"]] == ["parent-5"]


def test_fork_if_match_uses_the_forks_own_head(client):
    pid = create(client)["id"]
    append(client, pid, [("user", "a", 1), ("user", "b", 1)])
    cid = fork(client, pid, {"at_version": 1}).json["id"]
    append(client, pid, [("user", "c", 1)])
    client.post_json(
        f"/v1/contexts/{cid}/messages",
        {"messages": [{"role": "user", "content": "x", "token_count": 1}]},
        headers={"If-Match": '"3"'},
        status=412,
    )
    ok = append(client, cid, [("user", "y", 1)], headers={"If-Match": '"1"'})
    assert ok["head_version"] == 2


def test_two_forks_of_one_parent_are_independent_of_each_other(client):
    pid = create(client)["id"]
    append(client, pid, [("user", "base", 2)])
    a = fork(client, pid).json["id"]
    b = fork(client, pid).json["id"]
    append(client, a, [("user", "only-a", 3)])
    append(client, b, [("user", "only-b", 5), ("user", "only-b2", 7)])
    assert [m["content"] for m in list_all(client, a)] == ["base", "only-a"]
    assert [m["content"] for m in list_all(client, b)] == ["base", "only-b", "only-b2"]
    assert client.get(f"/v1/contexts/{a}").json["total_tokens"] == 5
    assert client.get(f"/v1/contexts/{b}").json["total_tokens"] == 14
    assert client.get(f"/v1/contexts/{pid}").json["head_version"] == 1


# ---------------------------------------------------------------- listing and windows


def three_segment_leaf(client) -> tuple[str, list[Msg]]:
    """A fork of a fork, each with messages of its own: versions 1-3 held by the
    root, 4-5 by the middle fork, 6-9 by the leaf. Returns the leaf and its view."""
    model = Model(client)
    root = model.root([("user", 1)] * 5, "r")
    mid = model.fork(root, 3, "m")
    model.append(mid, [("assistant", 2)] * 4, "m")
    leaf = model.fork(mid, 5, "l")
    model.append(leaf, [("tool", 3)] * 4, "l")
    return leaf, model.views[leaf]


def test_listing_pages_cross_lineage_boundaries_in_both_orders(client):
    leaf, view = three_segment_leaf(client)
    for limit in (1, 2, 3, 4, 9, 1000):
        assert strip(page_through(client, leaf, "asc", limit)) == strip(view)
        assert strip(page_through(client, leaf, "desc", limit)) == strip(view[::-1])
    # A window on both sides of a boundary.
    for after in range(0, 10):
        for before in range(after + 1, 11):
            got = client.get(
                f"/v1/contexts/{leaf}/messages", params={"after": after, "before": before, "limit": 1000}
            ).json["data"]
            assert strip(got) == strip(view[after : before - 1]), (after, before)


def test_desc_listing_with_after_and_before_returns_only_versions_strictly_between(client):
    leaf, view = three_segment_leaf(client)
    wrong = []
    for after in range(0, 10):
        for before in range(after + 1, 11):
            got = client.get(
                f"/v1/contexts/{leaf}/messages",
                params={"after": after, "before": before, "order": "desc", "limit": 1000},
            ).json["data"]
            if strip(got) != strip(view[after : before - 1][::-1]):
                wrong.append((after, before, [m["version"] for m in got]))
    assert wrong == [], f"(after, before, versions returned): {wrong[:6]}"


def test_window_across_lineage_boundaries_matches_brute_force(client):
    model = Model(client)
    root = model.root([("system", 6), ("user", 0), ("assistant", 9), ("user", 4)], "r")
    mid = model.fork(root, 3, "m")
    model.append(mid, [("user", 0), ("assistant", 7), ("user", 2)], "m")
    leaf = model.fork(mid, 5, "l")
    model.append(leaf, [("user", 0), ("assistant", 3), ("tool", 0)], "l")
    view = list_all(client, leaf)
    assert strip(view) == strip(model.views[leaf])
    total = sum(m["token_count"] for m in view)
    for budget in range(1, total + 3):
        for pin in (False, True):
            check_window(client, leaf, view, budget, pin)
    # And as of every version of the fork's view, inherited versions included.
    for v in range(0, len(view) + 1):
        for budget in (1, 3, 6, 10, 16, 40):
            for pin in (False, True):
                resp = check_window(client, leaf, view[:v], budget, pin, as_of_version=v)
                assert resp.headers["ETag"] == f'"{v}"'


# ---------------------------------------------------------------- deletion


def test_soft_deleted_parent_leaves_fork_readable_including_inherited_messages(client):
    pid = create(client)["id"]
    append(client, pid, [("system", "s", 2), ("user", "u", 3), ("assistant", "a", 4)])
    cid = fork(client, pid, {"at_version": 2}).json["id"]
    append(client, cid, [("user", "mine", 5)])
    grandchild = fork(client, cid).json["id"]
    expected = strip(list_all(client, cid))

    client.delete(f"/v1/contexts/{pid}", status=204)
    client.get(f"/v1/contexts/{pid}", status=404)
    client.get(f"/v1/contexts/{pid}/messages", status=404)
    client.get(f"/v1/contexts/{pid}/messages/1", status=404)
    client.get(f"/v1/contexts/{pid}/window", params={"max_tokens": 10}, status=404)

    doc = client.get(f"/v1/contexts/{cid}").json
    assert doc["parent_id"] == pid and doc["head_version"] == 3 and doc["total_tokens"] == 10
    assert strip(list_all(client, cid)) == expected
    assert [m["context_id"] for m in list_all(client, cid)] == [pid, pid, cid]
    assert client.get(f"/v1/contexts/{cid}/messages/1").json["content"] == "s"
    window = client.get(f"/v1/contexts/{cid}/window", params={"max_tokens": 100}).json
    assert [m["content"] for m in window["data"]] == ["s", "u", "mine"]
    assert client.get(f"/v1/contexts/{cid}", params={"as_of_version": 1}).json["total_tokens"] == 2
    # Still appendable and forkable; the grandchild reads through the deleted ancestor.
    append(client, cid, [("assistant", "more", 1)])
    assert [m["content"] for m in list_all(client, grandchild)] == ["s", "u", "mine"]
    refork = fork(client, cid, {"at_version": 1}).json
    assert [m["context_id"] for m in list_all(client, refork["id"])] == [pid]


def test_soft_deleted_middle_ancestor_leaves_descendants_readable(client):
    model = Model(client)
    root = model.root([("user", 1), ("user", 2)], "r")
    mid = model.fork(root, 2, "m")
    model.append(mid, [("assistant", 3)], "m")
    leaf = model.fork(mid, 3, "l")
    model.append(leaf, [("user", 4)], "l")
    client.delete(f"/v1/contexts/{mid}", status=204)
    client.delete(f"/v1/contexts/{root}", status=204)
    model.check(leaf)


# ---------------------------------------------------------------- no copying


def test_fork_copies_no_message_rows_and_inserts_one_context_row(client, postgresql):
    pid = create(client)["id"]
    append(client, pid, [("user", f"m{i}", i % 7) for i in range(200)])
    messages_before, contexts_before = message_rows(postgresql), context_rows(postgresql)
    assert messages_before == 200

    at_head = fork(client, pid).json["id"]
    assert (message_rows(postgresql), context_rows(postgresql)) == (200, contexts_before + 1)
    fork(client, pid, {"at_version": 117})
    fork(client, pid, {"at_version": 0})
    fork_of_fork = fork(client, at_head, {"at_version": 150}).json["id"]
    assert message_rows(postgresql) == 200
    assert context_rows(postgresql) == contexts_before + 4

    # The rows a fork reads are its ancestor's.
    held = postgresql.execute(
        "SELECT count(*) FROM messages WHERE context_id = ANY(%s::uuid[])", ([at_head, fork_of_fork],)
    ).fetchone()[0]
    postgresql.rollback()
    assert held == 0
    assert len(list_all(client, fork_of_fork)) == 150

    append(client, fork_of_fork, [("user", "own", 1)])
    assert message_rows(postgresql) == 201


def test_a_fork_deeper_than_the_lineage_limit_is_refused_and_writes_nothing(settings, db, tokenizer, postgresql):
    import dataclasses

    import webtest

    from service.app import create_app
    from service.queries import Store

    shallow = dataclasses.replace(settings, max_lineage_depth=2)
    app = webtest.TestApp(create_app(shallow, Store.build(shallow, db, tokenizer)))
    cid = app.post_json("/v1/contexts", {}, status=201).json["id"]
    chain = [cid]
    for _ in range(2):  # each level appends, so each adds a segment
        one = {"messages": [{"role": "user", "content": "x"}]}
        app.post_json(f"/v1/contexts/{chain[-1]}/messages", one, status=201)
        chain.append(app.post_json(f"/v1/contexts/{chain[-1]}/forks", {}, status=201).json["id"])
    app.post_json(f"/v1/contexts/{chain[-1]}/messages", {"messages": [{"role": "user", "content": "y"}]}, status=201)
    before = postgresql.execute("SELECT count(*) FROM contexts").fetchone()[0]

    resp = app.post_json(f"/v1/contexts/{chain[-1]}/forks", {}, status=422)
    assert resp.json["errors"][0]["pointer"] == ""
    assert "2" in resp.json["errors"][0]["detail"]
    assert postgresql.execute("SELECT count(*) FROM contexts").fetchone()[0] == before
    # An earlier version needs fewer segments and is still allowed.
    assert app.post_json(f"/v1/contexts/{chain[-1]}/forks", {"at_version": 1}, status=201).json["fork_version"] == 1
