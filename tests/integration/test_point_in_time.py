"""Point-in-time reads (API.md "Forks and point-in-time"): as_of_version and as_of
on GET context, list messages and window, on plain contexts and on forks."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from support import Msg, check_window_summary, reference_window

UTC = timezone.utc


# ---------------------------------------------------------------- helpers


def create(client, metadata: dict | None = None) -> str:
    body = {} if metadata is None else {"metadata": metadata}
    return client.post_json("/v1/contexts", body, status=201).json["id"]


def append(client, cid: str, specs: list[tuple[str, str, int]]) -> dict:
    body = {"messages": [{"role": r, "content": c, "token_count": t} for r, c, t in specs]}
    result = client.post_json(f"/v1/contexts/{cid}/messages", body, status=201).json
    # Let the clock move on, so that batches get distinct created_at stamps.
    time.sleep(0.003)
    return result


def fork(client, cid: str, at: int) -> str:
    return client.post_json(f"/v1/contexts/{cid}/forks", {"at_version": at}, status=201).json["id"]


def parse(ts: str) -> datetime:
    assert ts.endswith("Z") and len(ts) == len("2026-01-01T00:00:00.000000Z"), ts
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def fmt(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def list_all(client, cid: str, **params) -> list[Msg]:
    params.setdefault("limit", 1000)
    return client.get(f"/v1/contexts/{cid}/messages", params=params).json["data"]


def versions(messages: list[Msg]) -> list[int]:
    return [m["version"] for m in messages]


def read_all_three(client, cid: str, **point) -> tuple[int, int, list[int], list[int]]:
    """(head_version, total_tokens, listed versions, window versions) as of a point;
    every read's ETag must be the resolved version."""
    ctx = client.get(f"/v1/contexts/{cid}", params=point)
    listed = client.get(f"/v1/contexts/{cid}/messages", params={"limit": 1000, **point})
    window = client.get(f"/v1/contexts/{cid}/window", params={"max_tokens": 10_000_000, **point})
    head = ctx.json["head_version"]
    for resp in (ctx, listed, window):
        assert resp.headers["ETag"] == f'"{head}"', (resp.request.url, resp.headers["ETag"], head)
    return head, ctx.json["total_tokens"], versions(listed.json["data"]), versions(window.json["data"])


def assert_view(client, cid: str, expected_version: int, cum: list[int], **point) -> None:
    head, total, listed, window = read_all_three(client, cid, **point)
    assert head == expected_version, point
    assert total == cum[expected_version], point
    assert listed == list(range(1, expected_version + 1)), point
    assert window == list(range(1, expected_version + 1)), point


def assert_422(resp, name: str) -> None:
    problem = resp.json
    assert resp.content_type == "application/problem+json"
    assert problem["type"] == "/problems/validation-error"
    assert problem["status"] == 422
    assert any(e.get("parameter") == name for e in problem.get("errors", [])), problem


def three_batches(client) -> tuple[str, list[str], list[int]]:
    """A context with batches of 3, 2 and 4 messages; (id, batch stamps, cum tokens by version)."""
    cid = create(client, {"k": "v"})
    tokens = [5, 3, 0, 8, 2, 1, 0, 6, 4]
    stamps = []
    start = 0
    for size in (3, 2, 4):
        batch = [
            ("user" if (start + i) % 2 else "assistant", f"m{start + i + 1}", tokens[start + i]) for i in range(size)
        ]
        result = append(client, cid, batch)
        stamps.append(result["data"][0]["created_at"])
        start += size
    cum = [0]
    for t in tokens:
        cum.append(cum[-1] + t)
    return cid, stamps, cum


# ---------------------------------------------------------------- as_of_version


def test_as_of_version_shows_head_and_tokens_at_that_version_with_etag(client):
    cid, _, cum = three_batches(client)
    for v in range(0, 10):
        resp = client.get(f"/v1/contexts/{cid}", params={"as_of_version": v})
        assert resp.json["head_version"] == v
        assert resp.json["total_tokens"] == cum[v]
        assert resp.headers["ETag"] == f'"{v}"'
    plain = client.get(f"/v1/contexts/{cid}")
    assert plain.json["head_version"] == 9 and plain.headers["ETag"] == '"9"'


def test_as_of_version_does_not_version_metadata(client):
    cid, _, _ = three_batches(client)
    client.patch_json(f"/v1/contexts/{cid}", {"metadata": {"k": "new", "x": 1}}, status=200)
    assert client.get(f"/v1/contexts/{cid}", params={"as_of_version": 1}).json["metadata"] == {"k": "new", "x": 1}


def test_as_of_version_bounds_listing_in_both_orders_and_paging(client):
    cid, _, _ = three_batches(client)
    for v in range(0, 10):
        resp = client.get(f"/v1/contexts/{cid}/messages", params={"as_of_version": v, "limit": 1000})
        assert versions(resp.json["data"]) == list(range(1, v + 1))
        assert resp.headers["ETag"] == f'"{v}"'
        desc = list_all(client, cid, as_of_version=v, order="desc")
        assert versions(desc) == list(range(v, 0, -1))
    # Paging as of version 5 stops at 5 and says there is no more.
    first = client.get(f"/v1/contexts/{cid}/messages", params={"as_of_version": 5, "limit": 3}).json
    assert versions(first["data"]) == [1, 2, 3] and first["has_more"] is True
    second = client.get(
        f"/v1/contexts/{cid}/messages", params={"as_of_version": 5, "limit": 3, "after": first["next_cursor"]}
    ).json
    assert versions(second["data"]) == [4, 5] and second["has_more"] is False and second["next_cursor"] is None
    exact = client.get(f"/v1/contexts/{cid}/messages", params={"as_of_version": 4, "limit": 4}).json
    assert versions(exact["data"]) == [1, 2, 3, 4] and exact["has_more"] is False
    desc = client.get(
        f"/v1/contexts/{cid}/messages", params={"as_of_version": 5, "order": "desc", "before": 10, "limit": 2}
    ).json
    assert versions(desc["data"]) == [5, 4] and desc["has_more"] is True


def test_as_of_version_window_matches_brute_force_over_that_prefix(client):
    cid = create(client)
    append(client, cid, [("system", "sys", 4), ("user", "u1", 7), ("assistant", "a1", 0)])
    append(client, cid, [("user", "u2", 5), ("assistant", "a2", 9), ("tool", "t", 0), ("user", "u3", 3)])
    view = list_all(client, cid)
    for v in range(0, len(view) + 1):
        for budget in (1, 3, 4, 7, 8, 12, 16, 20, 40):
            for pin in (False, True):
                resp = client.get(
                    f"/v1/contexts/{cid}/window",
                    params={"max_tokens": budget, "pin_system": str(pin).lower(), "as_of_version": v},
                )
                got = resp.json
                want = reference_window(view[:v], budget, pin)
                assert versions(got["data"]) == versions(want), (v, budget, pin)
                check_window_summary(got, want, v, budget)
                assert resp.headers["ETag"] == f'"{v}"'


def test_as_of_version_zero_is_the_empty_context(client):
    cid, _, _ = three_batches(client)
    assert_view(client, cid, 0, [0], as_of_version=0)
    window = client.get(f"/v1/contexts/{cid}/window", params={"max_tokens": 5, "as_of_version": 0}).json
    assert window["data"] == [] and window["truncated"] is False
    assert window["from_version"] is None and window["to_version"] is None


def test_as_of_version_past_head_is_422_on_every_read(client):
    cid, _, _ = three_batches(client)
    for path, extra in (("", {}), ("/messages", {}), ("/window", {"max_tokens": 10})):
        assert_422(client.get(f"/v1/contexts/{cid}{path}", params={"as_of_version": 10, **extra}, status=422),
                   "as_of_version")
        assert_422(client.get(f"/v1/contexts/{cid}{path}", params={"as_of_version": -1, **extra}, status=422),
                   "as_of_version")
        assert_422(client.get(f"/v1/contexts/{cid}{path}", params={"as_of_version": "x", **extra}, status=422),
                   "as_of_version")
        client.get(f"/v1/contexts/{cid}{path}", params={"as_of_version": 9, **extra}, status=200)


def test_as_of_version_past_a_forks_head_is_422_even_when_the_parent_has_it(client):
    cid, _, _ = three_batches(client)
    child = fork(client, cid, 4)
    for path, extra in (("", {}), ("/messages", {}), ("/window", {"max_tokens": 10})):
        assert_422(client.get(f"/v1/contexts/{child}{path}", params={"as_of_version": 5, **extra}, status=422),
                   "as_of_version")


# ---------------------------------------------------------------- as_of timestamps


def test_all_messages_of_one_batch_share_created_at_and_it_never_decreases(client):
    cid, stamps, _ = three_batches(client)
    msgs = list_all(client, cid)
    assert [m["created_at"] for m in msgs] == [stamps[0]] * 3 + [stamps[1]] * 2 + [stamps[2]] * 4
    parsed = [parse(m["created_at"]) for m in msgs]
    assert parsed == sorted(parsed)
    assert parse(stamps[0]) < parse(stamps[1]) < parse(stamps[2])


def test_as_of_before_first_message_resolves_to_version_zero(client):
    cid, stamps, cum = three_batches(client)
    just_before = fmt(parse(stamps[0]) - timedelta(microseconds=1))
    assert_view(client, cid, 0, cum, as_of=just_before)
    assert_view(client, cid, 0, cum, as_of="2000-01-01T00:00:00.000000Z")
    assert_view(client, cid, 0, cum, as_of="0001-01-01T00:00:00.000000Z")


def test_as_of_in_the_future_resolves_to_head(client):
    cid, _, cum = three_batches(client)
    assert_view(client, cid, 9, cum, as_of="2999-12-31T23:59:59.999999Z")
    assert_view(client, cid, 9, cum, as_of="9999-12-31T23:59:59.999999Z")
    assert_view(client, cid, 9, cum, as_of=fmt(datetime.now(UTC) + timedelta(days=1)))


def test_as_of_exactly_a_returned_created_at_includes_that_whole_batch(client):
    cid, stamps, cum = three_batches(client)
    assert_view(client, cid, 3, cum, as_of=stamps[0])
    assert_view(client, cid, 5, cum, as_of=stamps[1])
    assert_view(client, cid, 9, cum, as_of=stamps[2])
    # The created_at read back from a listing works the same way.
    listed = list_all(client, cid)
    assert_view(client, cid, 5, cum, as_of=listed[3]["created_at"])


def test_as_of_between_batches_resolves_to_the_last_version_of_the_earlier_batch(client):
    cid, stamps, cum = three_batches(client)
    for before, after, expected in ((stamps[0], stamps[1], 3), (stamps[1], stamps[2], 5)):
        lo, hi = parse(before), parse(after)
        assert_view(client, cid, expected, cum, as_of=fmt(lo + (hi - lo) / 2))
        assert_view(client, cid, expected, cum, as_of=fmt(hi - timedelta(microseconds=1)))
        assert_view(client, cid, expected, cum, as_of=fmt(lo + timedelta(microseconds=1)))


def test_as_of_accepts_an_rfc3339_offset_for_the_same_instant(client):
    cid, stamps, cum = three_batches(client)
    shifted = parse(stamps[1]).astimezone(timezone(timedelta(hours=2))).isoformat(timespec="microseconds")
    assert shifted.endswith("+02:00")
    assert_view(client, cid, 5, cum, as_of=shifted)


def test_as_of_window_is_cut_from_the_resolved_version(client):
    cid, stamps, _ = three_batches(client)
    # As of batch two (versions 1..5, tokens 5 3 0 8 2), a budget of 10 keeps 3..5.
    window = client.get(f"/v1/contexts/{cid}/window", params={"max_tokens": 10, "as_of": stamps[1]})
    assert versions(window.json["data"]) == [3, 4, 5]
    assert window.json["token_count"] == 10 and window.json["truncated"] is True
    assert window.headers["ETag"] == '"5"'


def test_as_of_and_as_of_version_together_are_422(client):
    cid, stamps, _ = three_batches(client)
    for path, extra in (("", {}), ("/messages", {}), ("/window", {"max_tokens": 10})):
        resp = client.get(
            f"/v1/contexts/{cid}{path}", params={"as_of_version": 3, "as_of": stamps[0], **extra}, status=422
        )
        problem = resp.json
        assert problem["type"] == "/problems/validation-error"
        named = {e.get("parameter") for e in problem["errors"]}
        assert named & {"as_of", "as_of_version"}, problem


def test_unparseable_as_of_is_422_naming_the_parameter(client):
    cid, _, _ = three_batches(client)
    for bad in ("yesterday", "2026-02-30T00:00:00Z", "2026-01-01T25:00:00Z", "", "12345", "2026-01-01T00:00:00"):
        for path, extra in (("", {}), ("/messages", {}), ("/window", {"max_tokens": 10})):
            resp = client.get(f"/v1/contexts/{cid}{path}", params={"as_of": bad, **extra}, status=422)
            assert_422(resp, "as_of")


# ---------------------------------------------------------------- forks


def forked_history(client):
    """Root R: batches at t1 (v1-2), t2 (v3-4), t3 (v5-6). Fork F at 4. Then R gets
    t4 (v7); F gets t5 (v5-6) and t6 (v7). G forks F at 2 (lower than F's
    fork_version) and gets t7 (v3)."""
    root = create(client)
    stamps: dict[str, str] = {}
    stamps["t1"] = append(client, root, [("system", "r1", 2), ("user", "r2", 3)])["data"][0]["created_at"]
    stamps["t2"] = append(client, root, [("assistant", "r3", 4), ("user", "r4", 5)])["data"][0]["created_at"]
    stamps["t3"] = append(client, root, [("assistant", "r5", 6), ("user", "r6", 7)])["data"][0]["created_at"]
    child = fork(client, root, 4)
    time.sleep(0.003)
    stamps["t4"] = append(client, root, [("assistant", "r7", 8)])["data"][0]["created_at"]
    stamps["t5"] = append(client, child, [("assistant", "f5", 10), ("user", "f6", 20)])["data"][0]["created_at"]
    stamps["t6"] = append(client, child, [("assistant", "f7", 30)])["data"][0]["created_at"]
    grandchild = fork(client, child, 2)
    time.sleep(0.003)
    stamps["t7"] = append(client, grandchild, [("tool", "g3", 40)])["data"][0]["created_at"]
    return root, child, grandchild, stamps


def test_as_of_on_a_fork_resolves_into_inherited_versions(client):
    root, child, _, stamps = forked_history(client)
    cum = [0, 2, 5, 9, 14, 24, 44, 74]
    assert_view(client, child, 0, cum, as_of=fmt(parse(stamps["t1"]) - timedelta(microseconds=1)))
    assert_view(client, child, 2, cum, as_of=stamps["t1"])
    assert_view(client, child, 4, cum, as_of=stamps["t2"])
    listed = list_all(client, child, as_of=stamps["t2"])
    assert [m["context_id"] for m in listed] == [root] * 4
    assert [m["content"] for m in listed] == ["r1", "r2", "r3", "r4"]


def test_as_of_on_a_fork_ignores_parent_versions_outside_its_view(client):
    _, child, _, stamps = forked_history(client)
    cum = [0, 2, 5, 9, 14, 24, 44, 74]
    # t3 stamped the parent's versions 5-6, which the fork (cut at 4) never had:
    # the fork's latest version created at or before t3 is still 4. Same for t4.
    assert_view(client, child, 4, cum, as_of=stamps["t3"])
    assert_view(client, child, 4, cum, as_of=stamps["t4"])
    assert [m["content"] for m in list_all(client, child, as_of=stamps["t4"])] == ["r1", "r2", "r3", "r4"]


def test_as_of_on_a_fork_resolves_into_its_own_segment(client):
    _, child, _, stamps = forked_history(client)
    cum = [0, 2, 5, 9, 14, 24, 44, 74]
    assert_view(client, child, 6, cum, as_of=stamps["t5"])
    assert_view(client, child, 7, cum, as_of=stamps["t6"])
    assert_view(client, child, 7, cum, as_of="2999-01-01T00:00:00.000000Z")
    mid = fmt(parse(stamps["t5"]) + (parse(stamps["t6"]) - parse(stamps["t5"])) / 2)
    assert_view(client, child, 6, cum, as_of=mid)
    listed = list_all(client, child, as_of=stamps["t5"])
    assert [m["content"] for m in listed] == ["r1", "r2", "r3", "r4", "f5", "f6"]
    window = client.get(f"/v1/contexts/{child}/window", params={"max_tokens": 35, "as_of": stamps["t5"]}).json
    assert [m["content"] for m in window["data"]] == ["r4", "f5", "f6"]


def test_as_of_on_a_fork_of_a_fork_cut_below_its_parents_fork_version(client):
    root, child, grandchild, stamps = forked_history(client)
    cum = [0, 2, 5, 45]
    assert_view(client, grandchild, 2, cum, as_of=stamps["t1"])
    # Everything between t2 and t6 belongs to versions the grandchild does not have.
    for name in ("t2", "t3", "t4", "t5", "t6"):
        assert_view(client, grandchild, 2, cum, as_of=stamps[name])
    assert_view(client, grandchild, 3, cum, as_of=stamps["t7"])
    assert [m["context_id"] for m in list_all(client, grandchild)] == [root, root, grandchild]


def test_as_of_version_on_a_fork_reads_inherited_and_own_versions(client):
    root, child, _, _ = forked_history(client)
    cum = [0, 2, 5, 9, 14, 24, 44, 74]
    for v in range(0, 8):
        assert_view(client, child, v, cum, as_of_version=v)
    listed = list_all(client, child, as_of_version=5)
    assert [m["context_id"] for m in listed] == [root] * 4 + [child]


def test_created_at_never_decreases_with_version_along_a_lineage(client):
    root, child, grandchild, _ = forked_history(client)
    for cid in (root, child, grandchild):
        stamps = [parse(m["created_at"]) for m in list_all(client, cid)]
        assert stamps == sorted(stamps), cid
    # A fork's own messages come after what it inherited, and after the fork itself.
    child_doc = client.get(f"/v1/contexts/{child}").json
    own = [m for m in list_all(client, child) if m["context_id"] == child]
    assert all(parse(m["created_at"]) >= parse(child_doc["created_at"]) for m in own)


def test_append_response_created_at_matches_stored_messages(client):
    cid = create(client)
    result = append(client, cid, [("user", "a", 1), ("assistant", "b", 2)])
    stored = list_all(client, cid)
    assert [m["created_at"] for m in stored] == [m["created_at"] for m in result["data"]]
    assert client.get(f"/v1/contexts/{cid}").json["updated_at"] >= result["data"][0]["created_at"]


def test_as_of_on_a_fork_cut_inside_a_batch_stops_at_the_fork_version(client):
    root = create(client)
    stamp = append(client, root, [("user", "a", 1), ("assistant", "b", 2), ("user", "c", 4), ("assistant", "d", 8)])
    child = fork(client, root, 2)
    own = append(client, child, [("user", "own", 16)])
    cum = [0, 1, 3, 19]
    # The batch stamped versions 1..4 of the root; the fork holds only 1..2 of it.
    assert_view(client, child, 2, cum, as_of=stamp["data"][0]["created_at"])
    assert_view(client, child, 3, cum, as_of=own["data"][0]["created_at"])
    assert_view(client, root, 4, [0, 1, 3, 7, 15], as_of=stamp["data"][0]["created_at"])
