"""Message reads carry ETag "<version>" and answer If-None-Match with 304 while it
holds: a page or a window at its viewed version, one message at its own version."""

from __future__ import annotations

import pytest


@pytest.fixture
def cid(client) -> str:
    cid = client.post_json("/v1/contexts", {}, status=201).json["id"]
    batch = {"messages": [{"role": "user", "content": f"m{i}", "token_count": 1} for i in range(3)]}
    client.post_json(f"/v1/contexts/{cid}/messages", batch, status=201)
    return cid


@pytest.mark.parametrize(
    ("path", "tag"),
    [("/messages", '"3"'), ("/messages?as_of_version=2", '"2"'), ("/window?max_tokens=10", '"3"'), ("/messages/2", '"2"')],
)
def test_a_read_is_304_while_its_etag_holds_and_200_otherwise(client, cid, path, tag):
    url = f"/v1/contexts/{cid}{path}"
    first = client.get(url, status=200)
    assert first.headers["ETag"] == tag
    for holds in (tag, f"W/{tag}", f'"99", {tag}', "*"):
        resp = client.get(url, headers={"If-None-Match": holds}, status=304)
        assert resp.body == b"" and resp.headers["ETag"] == tag
    assert client.get(url, headers={"If-None-Match": '"99"'}, status=200).body == first.body


def test_an_append_moves_the_etag_of_a_page_but_not_of_a_message(client, cid):
    page = client.get(f"/v1/contexts/{cid}/messages", status=200).headers["ETag"]
    one = client.get(f"/v1/contexts/{cid}/messages/1", status=200).headers["ETag"]
    client.post_json(f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "x"}]}, status=201)
    client.get(f"/v1/contexts/{cid}/messages", headers={"If-None-Match": page}, status=200)
    client.get(f"/v1/contexts/{cid}/messages/1", headers={"If-None-Match": one}, status=304)
