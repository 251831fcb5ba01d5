"""API tests for /v1/contexts and /v1/contexts/{id} against API.md."""

from __future__ import annotations

import json
import re
import uuid
from urllib.parse import urlsplit

from support import next_link, problem

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
CONTEXT_KEYS = {
    "id",
    "metadata",
    "parent_id",
    "fork_version",
    "head_version",
    "total_tokens",
    "created_at",
    "updated_at",
}


# ---------------------------------------------------------------- helpers


def create(client, metadata=None) -> dict:
    body = {} if metadata is None else {"metadata": metadata}
    return client.post_json("/v1/contexts", body, status=201).json


def append(client, context_id, *messages) -> dict:
    return client.post_json(
        f"/v1/contexts/{context_id}/messages", {"messages": list(messages)}, status=201
    ).json


def invalid_parameter(resp, name: str) -> dict:
    doc = problem(resp, 422)
    assert doc["type"] == "/problems/validation-error"
    assert any(e.get("parameter") == name for e in doc["errors"]), doc["errors"]
    return doc


def invalid_pointer(resp, pointer: str) -> dict:
    doc = problem(resp, 422)
    assert doc["type"] == "/problems/validation-error"
    assert any(e.get("pointer") == pointer for e in doc["errors"]), doc["errors"]
    return doc


def list_ids(resp) -> list[str]:
    return [c["id"] for c in resp.json["data"]]


def db_metadata(postgresql, context_id):
    return postgresql.execute("select metadata from contexts where id = %s", (context_id,)).fetchone()[0]


# ---------------------------------------------------------------- POST /v1/contexts


def test_create_returns_201_with_location_etag_and_a_complete_context(client):
    resp = client.post_json("/v1/contexts", {"metadata": {"project": "x", "n": 1}}, status=201)
    doc = resp.json
    assert resp.content_type == "application/json"
    assert set(doc) == CONTEXT_KEYS
    assert uuid.UUID(doc["id"])
    assert doc["metadata"] == {"project": "x", "n": 1}
    assert doc["parent_id"] is None
    assert doc["fork_version"] is None
    assert doc["head_version"] == 0
    assert doc["total_tokens"] == 0
    assert TIMESTAMP.match(doc["created_at"]), doc["created_at"]
    assert TIMESTAMP.match(doc["updated_at"]), doc["updated_at"]
    assert urlsplit(resp.headers["Location"]).path == f"/v1/contexts/{doc['id']}"
    assert resp.headers["ETag"] == '"0"'


def test_created_context_is_readable_at_its_location_and_stored(client, postgresql):
    resp = client.post_json("/v1/contexts", {"metadata": {"k": [1, 2]}}, status=201)
    fetched = client.get(urlsplit(resp.headers["Location"]).path, status=200).json
    assert fetched == resp.json
    assert db_metadata(postgresql, resp.json["id"]) == {"k": [1, 2]}


def test_create_without_metadata_defaults_to_an_empty_object(client):
    assert client.post_json("/v1/contexts", {}, status=201).json["metadata"] == {}


def test_create_with_an_empty_body_counts_as_an_empty_object(client, postgresql):
    for headers in ({}, {"Content-Type": "application/json"}):
        resp = client.post("/v1/contexts", b"", headers=headers, status=201)
        assert resp.json["metadata"] == {}
        assert resp.json["head_version"] == 0
    assert postgresql.execute("select count(*) from contexts").fetchone()[0] == 2


def test_create_with_metadata_that_is_not_an_object_is_422(client, postgresql):
    invalid_pointer(client.post_json("/v1/contexts", {"metadata": [1, 2]}, expect_errors=True), "/metadata")
    invalid_pointer(client.post_json("/v1/contexts", {"metadata": "x"}, expect_errors=True), "/metadata")
    assert postgresql.execute("select count(*) from contexts").fetchone()[0] == 0


def test_create_with_an_unknown_field_is_422_with_its_pointer(client, postgresql):
    invalid_pointer(client.post_json("/v1/contexts", {"metadata": {}, "name": "x"}, expect_errors=True), "/name")
    assert postgresql.execute("select count(*) from contexts").fetchone()[0] == 0


def test_create_with_metadata_over_16_kib_is_422(client, postgresql):
    resp = client.post_json("/v1/contexts", {"metadata": {"big": "x" * (17 * 1024)}}, expect_errors=True)
    invalid_pointer(resp, "/metadata")
    assert postgresql.execute("select count(*) from contexts").fetchone()[0] == 0


def test_create_with_an_unknown_query_parameter_is_422(client, postgresql):
    invalid_parameter(client.post_json("/v1/contexts?foo=1", {}, expect_errors=True), "foo")
    assert postgresql.execute("select count(*) from contexts").fetchone()[0] == 0


# ---------------------------------------------------------------- GET /v1/contexts


def test_list_returns_newest_first_in_keyset_pages(client):
    created = [create(client, {"i": i})["id"] for i in range(7)]
    newest_first = created[::-1]

    first = client.get("/v1/contexts", {"limit": 3}, status=200)
    assert list_ids(first) == newest_first[:3]
    assert first.json["has_more"] is True
    assert isinstance(first.json["next_cursor"], str)

    second = client.get("/v1/contexts", {"limit": 3, "after": first.json["next_cursor"]}, status=200)
    assert list_ids(second) == newest_first[3:6]
    assert second.json["has_more"] is True

    third = client.get("/v1/contexts", {"limit": 3, "after": second.json["next_cursor"]}, status=200)
    assert list_ids(third) == newest_first[6:]
    assert third.json["has_more"] is False
    assert third.json["next_cursor"] is None
    assert next_link(third) is None


def test_list_order_is_created_at_then_id_descending(client):
    for i in range(5):
        create(client, {"i": i})
    data = client.get("/v1/contexts", status=200).json["data"]
    keys = [(c["created_at"], c["id"]) for c in data]
    assert keys == sorted(keys, reverse=True)
    assert len(data) == 5


def test_list_has_more_is_false_when_the_last_page_is_exactly_full(client):
    created = [create(client)["id"] for _ in range(4)]
    first = client.get("/v1/contexts", {"limit": 2}, status=200).json
    assert first["has_more"] is True
    second = client.get("/v1/contexts", {"limit": 2, "after": first["next_cursor"]}, status=200).json
    assert [c["id"] for c in second["data"]] == created[::-1][2:]
    assert second["has_more"] is False
    assert second["next_cursor"] is None


def test_list_link_next_header_leads_to_the_following_page(client):
    created = [create(client, {"team": "a"})["id"] for _ in range(5)]
    seen: list[str] = []
    resp = client.get("/v1/contexts", {"limit": 2}, status=200)
    pages = 1
    while True:
        seen.extend(list_ids(resp))
        url = next_link(resp)
        if not resp.json["has_more"]:
            assert url is None
            break
        assert url is not None
        parts = urlsplit(url)
        assert parts.path == "/v1/contexts"
        assert "limit=2" in parts.query
        resp = client.get(f"{parts.path}?{parts.query}", status=200)
        pages += 1
    assert pages == 3
    assert seen == created[::-1]


def test_list_link_next_keeps_the_metadata_filter(client):
    wanted = [create(client, {"team": "a"})["id"] for _ in range(3)]
    create(client, {"team": "b"})
    first = client.get("/v1/contexts", {"limit": 2, "metadata": json.dumps({"team": "a"})}, status=200)
    assert list_ids(first) == wanted[::-1][:2]
    url = urlsplit(next_link(first))
    second = client.get(f"{url.path}?{url.query}", status=200)
    assert list_ids(second) == wanted[::-1][2:]
    assert second.json["has_more"] is False


def test_list_default_page_is_100(client, postgresql):
    # 105 contexts straight into the database: the API is not what is tested here.
    postgresql.execute(
        "insert into contexts (id, root_id, created_at, updated_at) "
        "select u, u, now() - make_interval(secs => g), now() - make_interval(secs => g) "
        "from (select gen_random_uuid() as u, g from generate_series(1, 105) as g) as s"
    )
    postgresql.commit()
    resp = client.get("/v1/contexts", status=200).json
    assert len(resp["data"]) == 100
    assert resp["has_more"] is True
    rest = client.get("/v1/contexts", {"after": resp["next_cursor"]}, status=200).json
    assert len(rest["data"]) == 5
    assert {c["id"] for c in resp["data"]}.isdisjoint(c["id"] for c in rest["data"])


def test_list_metadata_filter_matches_like_jsonb_containment(client):
    a1 = create(client, {"team": "a", "tags": {"lang": "en", "tier": 1}, "labels": ["x", "y"]})["id"]
    a2 = create(client, {"team": "a", "tags": {"lang": "fr"}})["id"]
    b = create(client, {"team": "b", "tags": {"lang": "en"}})["id"]
    empty = create(client)["id"]

    def matching(filter_) -> set[str]:
        return set(list_ids(client.get("/v1/contexts", {"metadata": json.dumps(filter_)}, status=200)))

    assert matching({"team": "a"}) == {a1, a2}
    assert matching({"tags": {"lang": "en"}}) == {a1, b}
    assert matching({"team": "a", "tags": {"tier": 1}}) == {a1}
    assert matching({"labels": ["y"]}) == {a1}
    assert matching({"team": "c"}) == set()
    assert matching({}) == {a1, a2, b, empty}


def test_list_excludes_deleted_contexts(client):
    keep = create(client)["id"]
    gone = create(client)["id"]
    client.delete(f"/v1/contexts/{gone}", status=204)
    assert list_ids(client.get("/v1/contexts", status=200)) == [keep]


def test_list_metadata_filter_that_is_not_json_is_400(client):
    doc = problem(client.get("/v1/contexts", {"metadata": "{team: a"}, expect_errors=True), 400)
    assert doc["type"] == "/problems/malformed-json"


def test_list_metadata_filter_that_is_not_an_object_is_422(client):
    for value in ["[1, 2]", '"team"', "3", "null", "true"]:
        invalid_parameter(client.get("/v1/contexts", {"metadata": value}, expect_errors=True), "metadata")


def test_list_with_a_cursor_not_issued_by_the_api_is_422(client):
    create(client)
    # "WzEsMl0" is base64 of [1,2]; "eyJhIjogMX0" of {"a": 1}: decodable, but not cursors.
    for cursor in ["garbage", "!!!", "", "WzEsMl0", "eyJhIjogMX0"]:
        invalid_parameter(client.get("/v1/contexts", {"after": cursor}, expect_errors=True), "after")


def test_list_with_a_limit_outside_1_to_1000_is_422_naming_limit(client):
    for limit in ["0", "1001", "abc", "-1", "1.5", ""]:
        invalid_parameter(client.get("/v1/contexts", {"limit": limit}, expect_errors=True), "limit")
    create(client)
    for limit in ["1", "1000"]:
        assert len(client.get("/v1/contexts", {"limit": limit}, status=200).json["data"]) == 1


def test_list_with_an_unknown_query_parameter_is_422_naming_it(client):
    invalid_parameter(client.get("/v1/contexts", {"sort": "asc"}, expect_errors=True), "sort")


# ---------------------------------------------------------------- GET / HEAD /v1/contexts/{id}


def test_get_context_carries_etag_of_its_head_version(client):
    ctx = create(client)
    resp = client.get(f"/v1/contexts/{ctx['id']}", status=200)
    assert resp.headers["ETag"] == '"0"'
    append(
        client,
        ctx["id"],
        {"role": "user", "content": "a", "token_count": 4},
        {"role": "assistant", "content": "b", "token_count": 6},
    )
    resp = client.get(f"/v1/contexts/{ctx['id']}", status=200)
    assert resp.headers["ETag"] == '"2"'
    assert resp.json["head_version"] == 2
    assert resp.json["total_tokens"] == 10
    assert set(resp.json) == CONTEXT_KEYS


def test_append_changes_updated_at_but_not_created_at(client):
    ctx = create(client)
    append(client, ctx["id"], {"role": "user", "content": "a", "token_count": 1})
    after = client.get(f"/v1/contexts/{ctx['id']}", status=200).json
    assert after["created_at"] == ctx["created_at"]
    assert after["updated_at"] > ctx["updated_at"]


def test_head_context_is_200_with_etag_and_no_body(client):
    ctx = create(client)
    append(client, ctx["id"], {"role": "user", "content": "a", "token_count": 1})
    resp = client.head(f"/v1/contexts/{ctx['id']}", status=200)
    assert resp.body == b""
    assert resp.headers["ETag"] == '"1"'


def test_get_and_head_of_an_unknown_context_are_404(client):
    create(client)
    missing = uuid.uuid4()
    doc = problem(client.get(f"/v1/contexts/{missing}", expect_errors=True), 404)
    assert doc["type"] == "/problems/not-found"
    resp = client.head(f"/v1/contexts/{missing}", expect_errors=True)
    assert resp.status_int == 404
    assert resp.body == b""


def test_get_context_with_a_malformed_id_is_404(client):
    for bad_id in ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g", "%20"]:
        doc = problem(client.get(f"/v1/contexts/{bad_id}", expect_errors=True), 404)
        assert doc["type"] == "/problems/not-found"
        assert client.head(f"/v1/contexts/{bad_id}", expect_errors=True).status_int == 404


def test_get_context_with_an_unknown_query_parameter_is_422(client):
    ctx = create(client)
    invalid_parameter(client.get(f"/v1/contexts/{ctx['id']}", {"verbose": "1"}, expect_errors=True), "verbose")


# ---------------------------------------------------------------- PATCH /v1/contexts/{id}


def test_patch_applies_a_json_merge_patch_to_metadata(client, postgresql):
    ctx = create(client, {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "keep": True})
    patch = {"a": None, "b": {"c": None, "f": 4}, "e": [3], "g": {"h": None, "i": "new"}}
    resp = client.patch_json(f"/v1/contexts/{ctx['id']}", {"metadata": patch}, status=200)
    expected = {"b": {"d": 3, "f": 4}, "e": [3], "g": {"i": "new"}, "keep": True}
    assert resp.json["metadata"] == expected
    assert set(resp.json) == CONTEXT_KEYS
    assert resp.json["id"] == ctx["id"]
    assert db_metadata(postgresql, ctx["id"]) == expected
    assert client.get(f"/v1/contexts/{ctx['id']}", status=200).json["metadata"] == expected


def test_patch_object_replaces_a_scalar_and_nulls_inside_new_objects_vanish(client):
    # RFC 7396 appendix A: {"a":"b"} patched with {"a":{"bb":{"ccc":null}}} gives {"a":{"bb":{}}}.
    ctx = create(client, {"a": "b"})
    resp = client.patch_json(f"/v1/contexts/{ctx['id']}", {"metadata": {"a": {"bb": {"ccc": None}}}}, status=200)
    assert resp.json["metadata"] == {"a": {"bb": {}}}


def test_patch_accepts_application_merge_patch_json(client):
    ctx = create(client, {"a": 1, "b": 2})
    resp = client.patch(
        f"/v1/contexts/{ctx['id']}",
        json.dumps({"metadata": {"b": None, "c": 3}}),
        headers={"Content-Type": "application/merge-patch+json"},
        status=200,
    )
    assert resp.json["metadata"] == {"a": 1, "c": 3}


def test_patch_with_text_plain_is_415_and_changes_nothing(client, postgresql):
    ctx = create(client, {"a": 1})
    resp = client.patch(
        f"/v1/contexts/{ctx['id']}",
        json.dumps({"metadata": {"a": 2}}),
        headers={"Content-Type": "text/plain"},
        expect_errors=True,
    )
    problem(resp, 415)
    assert db_metadata(postgresql, ctx["id"]) == {"a": 1}


def test_patch_with_null_metadata_empties_it(client, postgresql):
    ctx = create(client, {"a": 1, "b": {"c": 2}})
    resp = client.patch_json(f"/v1/contexts/{ctx['id']}", {"metadata": None}, status=200)
    assert resp.json["metadata"] == {}
    assert db_metadata(postgresql, ctx["id"]) == {}


def test_patch_without_metadata_changes_nothing(client, postgresql):
    ctx = create(client, {"a": 1})
    resp = client.patch_json(f"/v1/contexts/{ctx['id']}", {}, status=200)
    assert resp.json["metadata"] == {"a": 1}
    assert db_metadata(postgresql, ctx["id"]) == {"a": 1}


def test_patch_whose_result_exceeds_the_metadata_limit_is_422_and_writes_nothing(client, postgresql):
    original = {"a": "x" * 9000}
    ctx = create(client, original)
    before = postgresql.execute("select updated_at from contexts where id = %s", (ctx["id"],)).fetchone()[0]
    resp = client.patch_json(f"/v1/contexts/{ctx['id']}", {"metadata": {"b": "y" * 9000}}, expect_errors=True)
    invalid_pointer(resp, "/metadata")
    row = postgresql.execute("select metadata, updated_at from contexts where id = %s", (ctx["id"],)).fetchone()
    assert row[0] == original
    assert row[1] == before


def test_patch_that_shrinks_metadata_under_the_limit_is_allowed(client):
    ctx = create(client, {"a": "x" * 9000})
    resp = client.patch_json(f"/v1/contexts/{ctx['id']}", {"metadata": {"a": None, "b": "y" * 9000}}, status=200)
    assert resp.json["metadata"] == {"b": "y" * 9000}


def test_patch_with_an_unknown_field_is_422_with_its_pointer(client, postgresql):
    ctx = create(client, {"a": 1})
    resp = client.patch_json(f"/v1/contexts/{ctx['id']}", {"metadata": {"a": 2}, "title": "x"}, expect_errors=True)
    invalid_pointer(resp, "/title")
    assert db_metadata(postgresql, ctx["id"]) == {"a": 1}


def test_patch_with_metadata_that_is_not_an_object_or_null_is_422(client, postgresql):
    ctx = create(client, {"a": 1})
    for value in ([1], "x", 3, True):
        resp = client.patch_json(f"/v1/contexts/{ctx['id']}", {"metadata": value}, expect_errors=True)
        invalid_pointer(resp, "/metadata")
    assert db_metadata(postgresql, ctx["id"]) == {"a": 1}


def test_patch_unknown_context_is_404(client):
    resp = client.patch_json(f"/v1/contexts/{uuid.uuid4()}", {"metadata": {"a": 1}}, expect_errors=True)
    problem(resp, 404)


# ---------------------------------------------------------------- DELETE /v1/contexts/{id}


def test_delete_is_204_then_every_read_and_write_is_404(client, postgresql):
    ctx = create(client, {"team": "a"})
    cid = ctx["id"]
    append(client, cid, {"role": "user", "content": "hi", "token_count": 1})

    resp = client.delete(f"/v1/contexts/{cid}", status=204)
    assert resp.body == b""

    problem(client.get(f"/v1/contexts/{cid}", expect_errors=True), 404)
    assert client.head(f"/v1/contexts/{cid}", expect_errors=True).status_int == 404
    problem(
        client.post_json(f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "x"}]},
                         expect_errors=True),
        404,
    )
    problem(client.get(f"/v1/contexts/{cid}/messages", expect_errors=True), 404)
    problem(client.get(f"/v1/contexts/{cid}/messages/1", expect_errors=True), 404)
    problem(client.get(f"/v1/contexts/{cid}/window", {"max_tokens": 10}, expect_errors=True), 404)
    problem(client.patch_json(f"/v1/contexts/{cid}", {"metadata": {"b": 1}}, expect_errors=True), 404)
    assert cid not in list_ids(client.get("/v1/contexts", status=200))
    assert cid not in list_ids(client.get("/v1/contexts", {"metadata": '{"team": "a"}'}, status=200))

    # Soft delete: the row and its messages are still there, marked deleted; nothing was appended.
    row = postgresql.execute("select deleted_at, head_version from contexts where id = %s", (cid,)).fetchone()
    assert row[0] is not None
    assert row[1] == 1
    assert postgresql.execute("select count(*) from messages where context_id = %s", (cid,)).fetchone()[0] == 1


def test_second_delete_and_delete_of_an_unknown_context_are_404(client):
    ctx = create(client)
    client.delete(f"/v1/contexts/{ctx['id']}", status=204)
    problem(client.delete(f"/v1/contexts/{ctx['id']}", expect_errors=True), 404)
    problem(client.delete(f"/v1/contexts/{uuid.uuid4()}", expect_errors=True), 404)


def test_delete_leaves_other_contexts_alone(client):
    keep = create(client, {"k": 1})
    gone = create(client)
    client.delete(f"/v1/contexts/{gone['id']}", status=204)
    assert client.get(f"/v1/contexts/{keep['id']}", status=200).json == keep


def test_metadata_near_the_limit_measured_compactly_can_be_patched_as_it_was_created(client):
    # Many small keys: just under 16 KiB compact, over it in jsonb's spaced text form.
    metadata: dict[str, int] = {}
    while len(json.dumps(metadata, separators=(",", ":"))) < 16 * 1024 - 20:
        metadata[f"k{len(metadata):04d}"] = len(metadata)
    assert len(json.dumps(metadata)) > 16 * 1024
    ctx = client.post_json("/v1/contexts", {"metadata": metadata}, status=201).json
    patched = client.patch_json(f"/v1/contexts/{ctx['id']}", {"metadata": {"k0000": "zero"}}, status=200).json
    assert patched["metadata"]["k0000"] == "zero" and len(patched["metadata"]) == len(metadata)
