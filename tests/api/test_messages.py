"""API tests for /v1/contexts/{id}/messages, /messages/{version} and /window
against API.md."""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qs, urlsplit

from support import next_link, problem

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
MESSAGE_KEYS = {"context_id", "version", "role", "content", "token_count", "metadata", "created_at"}
DIM = 1536
MIB = 1024 * 1024


# ---------------------------------------------------------------- helpers


def create(client, metadata=None) -> str:
    body = {} if metadata is None else {"metadata": metadata}
    return client.post_json("/v1/contexts", body, status=201).json["id"]


def msg(content="hi", role="user", **extra) -> dict:
    return {"role": role, "content": content, **extra}


def append(client, cid, *messages, **kwargs):
    return client.post_json(f"/v1/contexts/{cid}/messages", {"messages": list(messages)}, **kwargs)


def append_tokens(client, cid, *counts, role="user") -> dict:
    """Append one message per token count (counts given, so the tokenizer is not involved)."""
    messages = [msg(f"m{i}", role=role, token_count=n) for i, n in enumerate(counts)]
    return append(client, cid, *messages, status=201).json


def invalid(resp, **where) -> dict:
    """A 422 validation problem with an error at `pointer=...`, `parameter=...` or `header=...`."""
    doc = problem(resp, 422)
    assert doc["type"] == "/problems/validation-error"
    ((key, value),) = where.items()
    assert any(e.get(key) == value and isinstance(e.get("detail"), str) for e in doc["errors"]), doc["errors"]
    return doc


def count_messages(postgresql, cid=None) -> int:
    if cid is None:
        return postgresql.execute("select count(*) from messages").fetchone()[0]
    return postgresql.execute("select count(*) from messages where context_id = %s", (cid,)).fetchone()[0]


def db_head(postgresql, cid) -> tuple[int, int]:
    return postgresql.execute("select head_version, total_tokens from contexts where id = %s", (cid,)).fetchone()


def versions(resp) -> list[int]:
    return [m["version"] for m in resp.json["data"]]


def follow(client, url: str):
    parts = urlsplit(url)
    return client.get(f"{parts.path}?{parts.query}", status=200)


def window(client, cid, **params):
    return client.get(f"/v1/contexts/{cid}/window", params, status=200).json


def embedding(seed: int = 0) -> list[float]:
    # Multiples of 1/4 are exact in float4, so they come back unchanged.
    return [((i + seed) % 7 - 3) / 4 for i in range(DIM)]


# ---------------------------------------------------------------- append


def test_append_returns_201_with_gapless_versions_head_total_and_etag(client, postgresql):
    cid = create(client)
    resp = append(client, cid, msg("a", token_count=2), msg("b", role="assistant", token_count=3), status=201)
    body = resp.json
    assert resp.headers["ETag"] == '"2"'
    assert body["head_version"] == 2
    assert body["total_tokens"] == 5
    assert [m["version"] for m in body["data"]] == [1, 2]
    first = body["data"][0]
    assert set(first) == MESSAGE_KEYS
    assert first["context_id"] == cid
    assert first["role"] == "user" and first["content"] == "a" and first["token_count"] == 2
    assert first["metadata"] == {}
    assert TIMESTAMP.match(first["created_at"])

    resp = append(client, cid, msg("c", token_count=1), msg("d", token_count=1), msg("e", token_count=1), status=201)
    assert [m["version"] for m in resp.json["data"]] == [3, 4, 5]
    assert resp.json["head_version"] == 5
    assert resp.json["total_tokens"] == 8
    assert resp.headers["ETag"] == '"5"'

    rows = postgresql.execute(
        "select version, content from messages where context_id = %s order by version", (cid,)
    ).fetchall()
    assert rows == [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]
    assert db_head(postgresql, cid) == (5, 8)
    context = client.get(f"/v1/contexts/{cid}", status=200).json
    assert (context["head_version"], context["total_tokens"]) == (5, 8)


def test_append_messages_of_one_batch_share_created_at(client):
    cid = create(client)
    data = append(client, cid, *[msg(str(i), token_count=1) for i in range(20)], status=201).json["data"]
    assert len({m["created_at"] for m in data}) == 1
    listed = client.get(f"/v1/contexts/{cid}/messages", status=200).json["data"]
    assert {m["created_at"] for m in listed} == {data[0]["created_at"]}


def test_created_at_never_decreases_as_versions_grow_across_batches(client, postgresql):
    cid = create(client)
    stamps = []
    for batch in range(5):
        data = append(client, cid, msg("x", token_count=1), msg("y", token_count=1), status=201).json["data"]
        stamps.append(data[0]["created_at"])
    assert stamps == sorted(stamps)
    listed = client.get(f"/v1/contexts/{cid}/messages", status=200).json["data"]
    listed_stamps = [m["created_at"] for m in listed]
    assert listed_stamps == sorted(listed_stamps)
    db_stamps = [r[0] for r in postgresql.execute(
        "select created_at from messages where context_id = %s order by version", (cid,)
    ).fetchall()]
    assert db_stamps == sorted(db_stamps)


def test_server_counts_tokens_when_token_count_is_omitted(client, tokenizer):
    cid = create(client)
    text = "The quick brown fox jumps over the lazy dog."
    body = append(client, cid, msg(text), msg("hello world"), msg(""), status=201).json
    counts = [m["token_count"] for m in body["data"]]
    assert counts == [tokenizer.count(text), tokenizer.count("hello world"), 0]
    assert counts[0] > 0 and counts[1] > 0
    assert body["total_tokens"] == sum(counts)
    stored = client.get(f"/v1/contexts/{cid}/messages/1", status=200).json
    assert stored["token_count"] == counts[0]


def test_client_token_count_wins_over_the_server_count(client, postgresql):
    cid = create(client)
    body = append(
        client, cid, msg("a long sentence with many tokens in it", token_count=0), msg("hi", token_count=42),
        status=201,
    ).json
    assert [m["token_count"] for m in body["data"]] == [0, 42]
    assert body["total_tokens"] == 42
    rows = postgresql.execute(
        "select token_count from messages where context_id = %s order by version", (cid,)
    ).fetchall()
    assert rows == [(0,), (42,)]


def test_total_tokens_is_not_limited_to_32_bits(client):
    cid = create(client)
    top = 2**31 - 1
    body = append(client, cid, msg("a", token_count=top), msg("b", token_count=top), status=201).json
    assert body["total_tokens"] == 2 * top
    assert client.get(f"/v1/contexts/{cid}", status=200).json["total_tokens"] == 2 * top


def test_message_metadata_is_stored_and_returned(client):
    cid = create(client)
    body = append(client, cid, msg("a", metadata={"source": "web", "n": [1, {"x": None}]}), status=201).json
    assert body["data"][0]["metadata"] == {"source": "web", "n": [1, {"x": None}]}
    stored = client.get(f"/v1/contexts/{cid}/messages/1", status=200).json
    assert stored["metadata"] == {"source": "web", "n": [1, {"x": None}]}


def test_every_message_endpoint_of_an_unknown_context_is_404(client, postgresql):
    create(client)
    missing = uuid.uuid4()
    problem(append(client, missing, msg(), expect_errors=True), 404)
    problem(append(client, missing, msg(), headers={"If-Match": '"0"'}, expect_errors=True), 404)
    problem(client.get(f"/v1/contexts/{missing}/messages", expect_errors=True), 404)
    problem(client.get(f"/v1/contexts/{missing}/messages/1", expect_errors=True), 404)
    problem(client.get(f"/v1/contexts/{missing}/window", {"max_tokens": 5}, expect_errors=True), 404)
    assert count_messages(postgresql) == 0


# ---------------------------------------------------------------- If-Match


def test_if_match_with_the_current_head_appends(client):
    cid = create(client)
    resp = append(client, cid, msg(token_count=1), headers={"If-Match": '"0"'}, status=201)
    assert resp.headers["ETag"] == '"1"'
    resp = append(client, cid, msg(token_count=1), headers={"If-Match": resp.headers["ETag"]}, status=201)
    assert resp.json["head_version"] == 2


def test_if_match_with_a_stale_version_is_412_and_writes_nothing(client, postgresql):
    cid = create(client)
    append_tokens(client, cid, 1, 1)
    before = postgresql.execute("select updated_at from contexts where id = %s", (cid,)).fetchone()[0]
    for stale in ('"1"', '"0"', '"3"', 'W/"2"'):  # a weak tag never matches (If-Match compares strongly)
        doc = problem(append(client, cid, msg(token_count=5), headers={"If-Match": stale}, expect_errors=True), 412)
        assert doc["type"] == "/problems/precondition-failed"
    assert count_messages(postgresql, cid) == 2
    assert db_head(postgresql, cid) == (2, 2)
    assert postgresql.execute("select updated_at from contexts where id = %s", (cid,)).fetchone()[0] == before


def test_if_match_star_appends_whatever_the_head(client):
    cid = create(client)
    append_tokens(client, cid, 1, 1, 1)
    resp = append(client, cid, msg(token_count=1), headers={"If-Match": "*"}, status=201)
    assert resp.json["head_version"] == 4


def test_if_match_list_appends_when_one_tag_matches(client):
    cid = create(client)
    append_tokens(client, cid, 1)
    resp = append(client, cid, msg(token_count=1), headers={"If-Match": '"7", "1"'}, status=201)
    assert resp.json["head_version"] == 2


def test_malformed_if_match_is_422_naming_the_header(client, postgresql):
    cid = create(client)
    for header in ("1", "abc", '"one"', '"1', "**"):
        invalid(append(client, cid, msg(token_count=1), headers={"If-Match": header}, expect_errors=True),
                header="If-Match")
    assert count_messages(postgresql) == 0


def test_invalid_body_with_stale_if_match_is_422_not_412(client, postgresql):
    cid = create(client)
    append_tokens(client, cid, 1, 1)
    resp = append(client, cid, msg(role="wizard"), headers={"If-Match": '"0"'}, expect_errors=True)
    invalid(resp, pointer="/messages/0/role")
    assert count_messages(postgresql) == 2


# ---------------------------------------------------------------- batch validation


def test_one_bad_message_rejects_the_whole_batch(client, postgresql):
    cid = create(client)
    append_tokens(client, cid, 1, 1)
    batch = [msg(f"m{i}", token_count=1) for i in range(6)]
    batch[3]["role"] = "wizard"
    doc = invalid(append(client, cid, *batch, expect_errors=True), pointer="/messages/3/role")
    assert [e["pointer"] for e in doc["errors"]] == ["/messages/3/role"]
    assert count_messages(postgresql, cid) == 2
    assert db_head(postgresql, cid) == (2, 2)
    # Versions stay gapless after the failed batch.
    assert append(client, cid, msg(token_count=1), status=201).json["data"][0]["version"] == 3


def test_batch_of_zero_messages_is_422(client, postgresql):
    cid = create(client)
    invalid(client.post_json(f"/v1/contexts/{cid}/messages", {"messages": []}, expect_errors=True),
            pointer="/messages")
    assert count_messages(postgresql) == 0


def test_batch_of_1001_messages_is_422_and_1000_is_accepted(client, postgresql):
    cid = create(client)
    too_many = [msg("x", token_count=1) for _ in range(1001)]
    invalid(client.post_json(f"/v1/contexts/{cid}/messages", {"messages": too_many}, expect_errors=True),
            pointer="/messages")
    assert count_messages(postgresql) == 0
    body = client.post_json(f"/v1/contexts/{cid}/messages", {"messages": too_many[:1000]}, status=201).json
    assert body["head_version"] == 1000
    assert count_messages(postgresql) == 1000


def test_body_without_a_messages_list_is_422(client, postgresql):
    cid = create(client)
    for body in ({}, {"messages": None}, {"messages": {"role": "user", "content": "x"}}, {"messages": "x"}):
        invalid(client.post_json(f"/v1/contexts/{cid}/messages", body, expect_errors=True), pointer="/messages")
    assert count_messages(postgresql) == 0


def test_content_over_1_mib_is_422(client, postgresql):
    cid = create(client)
    invalid(append(client, cid, msg("a" * (MIB + 1), token_count=1), expect_errors=True),
            pointer="/messages/0/content")
    # The limit is in bytes of UTF-8, not characters.
    invalid(append(client, cid, msg("é" * (MIB // 2 + 1), token_count=1), expect_errors=True),
            pointer="/messages/0/content")
    assert count_messages(postgresql) == 0
    body = append(client, cid, msg("a" * MIB, token_count=1), status=201).json
    assert body["head_version"] == 1


def test_content_must_be_a_present_string_and_may_be_empty(client, postgresql):
    cid = create(client)
    for bad in ({"role": "user"}, msg(123), msg(None), msg(["a"])):
        invalid(append(client, cid, bad, expect_errors=True), pointer="/messages/0/content")
    assert count_messages(postgresql) == 0
    assert append(client, cid, msg(""), status=201).json["data"][0]["content"] == ""


def test_embedding_that_is_not_1536_finite_float4_numbers_is_422(client, postgresql):
    cid = create(client)
    bad_embeddings = {
        "too short": [0.1] * (DIM - 1),
        "too long": [0.1] * (DIM + 1),
        "empty": [],
        "strings": ["0.1"] * DIM,
        "booleans": [True] * DIM,
        "a null": [0.1] * (DIM - 1) + [None],
        "beyond float4": [0.1] * (DIM - 1) + [1e39],
        "an object": {"0": 0.1},
        "a number": 0.1,
    }
    for label, value in bad_embeddings.items():
        resp = append(client, cid, msg(embedding=value, token_count=1), expect_errors=True)
        assert resp.status_int == 422, label
        invalid(resp, pointer="/messages/0/embedding")
    assert count_messages(postgresql) == 0


def test_embedding_is_returned_only_with_include_embedding(client, postgresql):
    cid = create(client)
    vector = embedding()
    body = append(client, cid, msg("a", embedding=vector, token_count=1), msg("b", token_count=1), status=201).json
    assert "embedding" not in body["data"][0]

    plain = client.get(f"/v1/contexts/{cid}/messages", status=200).json["data"]
    assert all("embedding" not in m for m in plain)
    assert "embedding" not in client.get(f"/v1/contexts/{cid}/messages/1", status=200).json

    full = client.get(f"/v1/contexts/{cid}/messages", {"include": "embedding"}, status=200).json["data"]
    assert full[0]["embedding"] == vector
    assert full[1]["embedding"] is None
    one = client.get(f"/v1/contexts/{cid}/messages/1", {"include": "embedding"}, status=200).json
    assert one["embedding"] == vector
    assert client.get(f"/v1/contexts/{cid}/messages/2", {"include": "embedding"}, status=200).json["embedding"] is None

    stored = postgresql.execute(
        "select version, embedding is not null from messages where context_id = %s order by version", (cid,)
    ).fetchall()
    assert stored == [(1, True), (2, False)]


def test_window_never_includes_embeddings(client):
    cid = create(client)
    append(client, cid, msg("a", embedding=embedding(), token_count=1), status=201)
    assert all("embedding" not in m for m in window(client, cid, max_tokens=10)["data"])


def test_token_count_that_is_not_an_int32_of_at_least_zero_is_422(client, postgresql):
    cid = create(client)
    for value in (-1, 2**31, "5", 5.5, True, [5]):
        resp = append(client, cid, msg(token_count=value), expect_errors=True)
        assert resp.status_int == 422, value
        invalid(resp, pointer="/messages/0/token_count")
    assert count_messages(postgresql) == 0


def test_unknown_field_in_a_message_is_422_with_its_pointer(client, postgresql):
    cid = create(client)
    invalid(append(client, cid, msg(foo=1), expect_errors=True), pointer="/messages/0/foo")
    invalid(
        client.post_json(f"/v1/contexts/{cid}/messages", {"messages": [msg()], "extra": 1}, expect_errors=True),
        pointer="/extra",
    )
    assert count_messages(postgresql) == 0


def test_role_must_be_one_of_the_four_roles(client, postgresql):
    cid = create(client)
    for role in ("wizard", "System", "", None, 1):
        invalid(append(client, cid, msg(role=role), expect_errors=True), pointer="/messages/0/role")
    invalid(append(client, cid, {"content": "x"}, expect_errors=True), pointer="/messages/0/role")
    assert count_messages(postgresql) == 0
    body = append(client, cid, *[msg(role=r, token_count=1) for r in ("system", "user", "assistant", "tool")],
                  status=201).json
    assert [m["role"] for m in body["data"]] == ["system", "user", "assistant", "tool"]


def test_message_metadata_that_is_not_an_object_is_422(client, postgresql):
    cid = create(client)
    invalid(append(client, cid, msg(metadata=[1]), expect_errors=True), pointer="/messages/0/metadata")
    assert count_messages(postgresql) == 0


# ---------------------------------------------------------------- list messages


def test_list_is_ascending_by_default_and_descending_on_request(client):
    cid = create(client)
    append_tokens(client, cid, *[1] * 10)
    asc = client.get(f"/v1/contexts/{cid}/messages", status=200)
    assert versions(asc) == list(range(1, 11))
    assert asc.json["has_more"] is False
    assert asc.json["next_cursor"] is None
    assert next_link(asc) is None
    assert all(set(m) == MESSAGE_KEYS and m["context_id"] == cid for m in asc.json["data"])
    assert versions(client.get(f"/v1/contexts/{cid}/messages", {"order": "asc"}, status=200)) == list(range(1, 11))
    assert versions(client.get(f"/v1/contexts/{cid}/messages", {"order": "desc"}, status=200)) == list(
        range(10, 0, -1)
    )


def test_list_after_and_before_are_exclusive(client):
    cid = create(client)
    append_tokens(client, cid, *[1] * 10)
    url = f"/v1/contexts/{cid}/messages"
    assert versions(client.get(url, {"after": 3}, status=200)) == list(range(4, 11))
    assert versions(client.get(url, {"before": 8}, status=200)) == list(range(1, 8))
    assert versions(client.get(url, {"after": 3, "before": 8}, status=200)) == [4, 5, 6, 7]
    assert versions(client.get(url, {"after": 10}, status=200)) == []
    assert versions(client.get(url, {"before": 1}, status=200)) == []


def test_list_descending_honours_both_after_and_before(client):
    cid = create(client)
    append_tokens(client, cid, *[1] * 10)
    url = f"/v1/contexts/{cid}/messages"
    assert versions(client.get(url, {"order": "desc", "before": 8}, status=200)) == list(range(7, 0, -1))
    assert versions(client.get(url, {"order": "desc", "after": 3}, status=200)) == list(range(10, 3, -1))
    assert versions(client.get(url, {"order": "desc", "after": 3, "before": 8}, status=200)) == [7, 6, 5, 4]
    assert versions(client.get(url, {"order": "desc", "after": 10}, status=200)) == []


def test_list_limit_has_more_and_next_cursor_ascending(client):
    cid = create(client)
    append_tokens(client, cid, *[1] * 7)
    url = f"/v1/contexts/{cid}/messages"
    page = client.get(url, {"limit": 3}, status=200).json
    assert [m["version"] for m in page["data"]] == [1, 2, 3]
    assert page["has_more"] is True
    assert page["next_cursor"] == "3"
    page = client.get(url, {"limit": 3, "after": page["next_cursor"]}, status=200).json
    assert [m["version"] for m in page["data"]] == [4, 5, 6]
    assert page["next_cursor"] == "6"
    page = client.get(url, {"limit": 3, "after": page["next_cursor"]}, status=200).json
    assert [m["version"] for m in page["data"]] == [7]
    assert page["has_more"] is False
    assert page["next_cursor"] is None


def test_list_has_more_is_false_when_the_last_page_is_exactly_full(client):
    cid = create(client)
    append_tokens(client, cid, *[1] * 6)
    url = f"/v1/contexts/{cid}/messages"
    page = client.get(url, {"limit": 3, "after": 3}, status=200)
    assert versions(page) == [4, 5, 6]
    assert page.json["has_more"] is False
    assert page.json["next_cursor"] is None
    assert next_link(page) is None


def test_list_link_next_uses_after_when_ascending(client):
    cid = create(client)
    append_tokens(client, cid, *[1] * 7)
    first = client.get(f"/v1/contexts/{cid}/messages", {"limit": 3}, status=200)
    link = urlsplit(next_link(first))
    assert link.path == f"/v1/contexts/{cid}/messages"
    query = parse_qs(link.query)
    assert query["after"] == ["3"]
    assert query["limit"] == ["3"]
    assert "before" not in query
    second = follow(client, next_link(first))
    assert versions(second) == [4, 5, 6]
    third = follow(client, next_link(second))
    assert versions(third) == [7]
    assert next_link(third) is None


def test_list_link_next_uses_before_when_descending(client):
    cid = create(client)
    append_tokens(client, cid, *[1] * 7)
    first = client.get(f"/v1/contexts/{cid}/messages", {"limit": 3, "order": "desc"}, status=200)
    assert versions(first) == [7, 6, 5]
    assert first.json["next_cursor"] == "5"
    query = parse_qs(urlsplit(next_link(first)).query)
    assert query["before"] == ["5"]
    assert query["order"] == ["desc"]
    assert "after" not in query
    second = follow(client, next_link(first))
    assert versions(second) == [4, 3, 2]
    third = follow(client, next_link(second))
    assert versions(third) == [1]
    assert third.json["has_more"] is False
    assert next_link(third) is None


def test_paging_through_250_messages_returns_every_version_exactly_once(client):
    cid = create(client)
    append_tokens(client, cid, *[1] * 250)
    url = f"/v1/contexts/{cid}/messages"

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 100} if cursor is None else {"limit": 100, "after": cursor}
        page = client.get(url, params, status=200).json
        seen.extend(m["version"] for m in page["data"])
        pages += 1
        cursor = page["next_cursor"]
        if not page["has_more"]:
            assert cursor is None
            break
    assert pages == 3
    assert seen == list(range(1, 251))

    # The same through Link headers, newest first.
    seen, resp = [], client.get(url, {"limit": 100, "order": "desc"}, status=200)
    seen.extend(versions(resp))
    while next_link(resp):
        resp = follow(client, next_link(resp))
        seen.extend(versions(resp))
    assert seen == list(range(250, 0, -1))


def test_list_of_an_empty_context_is_an_empty_page(client):
    cid = create(client)
    page = client.get(f"/v1/contexts/{cid}/messages", status=200).json
    assert page == {"data": [], "has_more": False, "next_cursor": None}


def test_list_with_bad_parameters_is_422_naming_them(client):
    cid = create(client)
    url = f"/v1/contexts/{cid}/messages"
    for limit in ("0", "1001", "abc", "-5"):
        invalid(client.get(url, {"limit": limit}, expect_errors=True), parameter="limit")
    invalid(client.get(url, {"order": "sideways"}, expect_errors=True), parameter="order")
    invalid(client.get(url, {"after": "x"}, expect_errors=True), parameter="after")
    invalid(client.get(url, {"before": "x"}, expect_errors=True), parameter="before")
    invalid(client.get(url, {"cursor": "3"}, expect_errors=True), parameter="cursor")
    invalid(client.get(url, {"include": "vectors"}, expect_errors=True), parameter="include")
    invalid(client.get(f"{url}/1", {"include": "vectors"}, expect_errors=True), parameter="include")


# ---------------------------------------------------------------- get one message


def test_get_message_by_version(client):
    cid = create(client)
    appended = append(client, cid, msg("first", token_count=1), msg("second", role="assistant", token_count=2),
                      status=201).json["data"]
    got = client.get(f"/v1/contexts/{cid}/messages/2", status=200).json
    assert got == appended[1]
    assert set(got) == MESSAGE_KEYS


def test_get_message_past_head_or_malformed_version_is_404(client):
    cid = create(client)
    append_tokens(client, cid, 1, 1)
    for version in ("3", "0", "-1", str(2**62), str(2**63), "99999999999999999999", "abc", "1.5", "1e2"):
        doc = problem(client.get(f"/v1/contexts/{cid}/messages/{version}", expect_errors=True), 404)
        assert doc["type"] == "/problems/not-found", version


# ---------------------------------------------------------------- window


def test_window_max_tokens_is_required_and_bounded(client):
    cid = create(client)
    url = f"/v1/contexts/{cid}/window"
    invalid(client.get(url, expect_errors=True), parameter="max_tokens")
    for value in ("0", "10000001", "-1", "abc", ""):
        invalid(client.get(url, {"max_tokens": value}, expect_errors=True), parameter="max_tokens")
    assert client.get(url, {"max_tokens": 1}, status=200).json["max_tokens"] == 1
    assert client.get(url, {"max_tokens": 10_000_000}, status=200).json["max_tokens"] == 10_000_000


def test_window_of_an_empty_context_is_empty_and_not_truncated(client):
    cid = create(client)
    for pin in ("false", "true"):
        assert window(client, cid, max_tokens=100, pin_system=pin) == {
            "data": [],
            "token_count": 0,
            "max_tokens": 100,
            "from_version": None,
            "to_version": None,
            "truncated": False,
        }


def test_window_takes_the_most_recent_messages_that_fit_and_never_splits_one(client):
    cid = create(client)
    append_tokens(client, cid, 5, 5, 5, 5)
    w = window(client, cid, max_tokens=12)
    assert [m["version"] for m in w["data"]] == [3, 4]
    assert w["token_count"] == 10
    assert w["max_tokens"] == 12
    assert (w["from_version"], w["to_version"]) == (3, 4)
    assert w["truncated"] is True
    assert all(set(m) == MESSAGE_KEYS for m in w["data"])

    exact = window(client, cid, max_tokens=10)
    assert [m["version"] for m in exact["data"]] == [3, 4]
    assert exact["token_count"] == 10

    everything = window(client, cid, max_tokens=20)
    assert [m["version"] for m in everything["data"]] == [1, 2, 3, 4]
    assert everything["truncated"] is False
    assert (everything["from_version"], everything["to_version"]) == (1, 4)


def test_window_is_empty_and_truncated_when_the_last_message_alone_is_too_big(client):
    cid = create(client)
    append_tokens(client, cid, 1, 1, 20)
    w = window(client, cid, max_tokens=10)
    assert w["data"] == []
    assert w["token_count"] == 0
    assert w["from_version"] is None and w["to_version"] is None
    assert w["truncated"] is True


def test_window_includes_zero_token_messages_at_the_edges(client):
    cid = create(client)
    append_tokens(client, cid, 5, 0, 5, 0)
    w = window(client, cid, max_tokens=5)
    assert [m["version"] for m in w["data"]] == [2, 3, 4]
    assert w["token_count"] == 5
    assert w["truncated"] is True

    other = create(client)
    append_tokens(client, other, 0, 0, 5)
    w = window(client, other, max_tokens=5)
    assert [m["version"] for m in w["data"]] == [1, 2, 3]
    assert w["truncated"] is False


def test_window_pin_system_keeps_a_fitting_system_message_and_counts_it(client):
    cid = create(client)
    append(client, cid, msg("rules", role="system", token_count=3), status=201)
    append_tokens(client, cid, 5, 5, 5)

    plain = window(client, cid, max_tokens=9)
    assert [m["version"] for m in plain["data"]] == [4]

    pinned = window(client, cid, max_tokens=9, pin_system="true")
    assert [m["version"] for m in pinned["data"]] == [1, 4]
    assert pinned["data"][0]["role"] == "system"
    assert pinned["token_count"] == 8
    assert (pinned["from_version"], pinned["to_version"]) == (1, 4)
    assert pinned["truncated"] is True

    assert [m["version"] for m in window(client, cid, max_tokens=13)["data"]] == [3, 4]
    pinned = window(client, cid, max_tokens=13, pin_system="true")
    assert [m["version"] for m in pinned["data"]] == [1, 3, 4]
    assert pinned["token_count"] == 13


def test_window_pin_system_alone_when_nothing_else_fits(client):
    cid = create(client)
    append(client, cid, msg("rules", role="system", token_count=3), msg("long", token_count=20), status=201)
    w = window(client, cid, max_tokens=10, pin_system="true")
    assert [m["version"] for m in w["data"]] == [1]
    assert w["token_count"] == 3
    assert (w["from_version"], w["to_version"]) == (1, 1)
    assert w["truncated"] is True


def test_window_pin_system_does_not_duplicate_when_everything_fits(client):
    cid = create(client)
    append(client, cid, msg("rules", role="system", token_count=3), status=201)
    append_tokens(client, cid, 5, 5)
    w = window(client, cid, max_tokens=13, pin_system="true")
    assert [m["version"] for m in w["data"]] == [1, 2, 3]
    assert w["token_count"] == 13
    assert w["truncated"] is False


def test_window_pin_system_skips_a_system_message_that_does_not_fit(client):
    cid = create(client)
    append(client, cid, msg("rules", role="system", token_count=20), status=201)
    append_tokens(client, cid, 5, 5)
    w = window(client, cid, max_tokens=10, pin_system="true")
    assert [m["version"] for m in w["data"]] == [2, 3]
    assert w["token_count"] == 10


def test_window_pin_system_has_no_effect_when_the_first_message_is_not_system(client):
    cid = create(client)
    append_tokens(client, cid, 3, 5, 5, 5)
    for max_tokens in (5, 9, 13, 18):
        plain = window(client, cid, max_tokens=max_tokens)
        pinned = window(client, cid, max_tokens=max_tokens, pin_system="true")
        assert pinned == plain, max_tokens
    assert [m["version"] for m in window(client, cid, max_tokens=9, pin_system="true")["data"]] == [4]


def test_window_pin_system_must_be_a_boolean_and_unknown_parameters_are_422(client):
    cid = create(client)
    url = f"/v1/contexts/{cid}/window"
    invalid(client.get(url, {"max_tokens": 5, "pin_system": "maybe"}, expect_errors=True), parameter="pin_system")
    invalid(client.get(url, {"max_tokens": 5, "budget": 5}, expect_errors=True), parameter="budget")
