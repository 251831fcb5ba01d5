"""Consistency tokens over HTTP: writes answer with one, reads take one back and
see the write, against a real streaming standby (tests/standby.py)."""

from __future__ import annotations

import re

import pytest
import webtest

from service.app import create_app
from service.queries import Store
from support import problem

TOKEN = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")


@pytest.fixture
def replicated(replica_settings, replicated_db, tokenizer):
    return webtest.TestApp(create_app(replica_settings, Store.build(replica_settings, replicated_db, tokenizer)))


def test_every_successful_write_answers_with_a_token(replicated):
    created = replicated.post_json("/v1/contexts", {"metadata": {}}, status=201)
    first = created.headers["Consistency-Token"]
    assert TOKEN.match(first)
    cid = created.json["id"]
    appended = replicated.post_json(f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "a"}]},
                                    status=201)
    forked = replicated.post_json(f"/v1/contexts/{cid}/forks", {}, status=201)
    patched = replicated.patch_json(f"/v1/contexts/{cid}", {"metadata": {"a": 1}}, status=200)
    deleted = replicated.delete(f"/v1/contexts/{forked.json['id']}", status=204)
    tokens = [r.headers["Consistency-Token"] for r in (appended, forked, patched, deleted)]
    positions = [int(t.split("/")[0], 16) << 32 | int(t.split("/")[1], 16) for t in [first, *tokens]]
    assert positions == sorted(positions) and positions[0] < positions[-1]  # each after the one before


def test_reads_refusals_and_searches_carry_no_token(replicated):
    created = replicated.post_json("/v1/contexts", {"metadata": {}}, status=201)
    cid = created.json["id"]
    # With the creation's token: a standby not yet there would rightly answer 404.
    seen = {"Consistency-Token": created.headers["Consistency-Token"]}
    for response in (
        replicated.get(f"/v1/contexts/{cid}", headers=seen, status=200),
        replicated.post_json(f"/v1/contexts/{cid}/messages", {"messages": []}, status=422),
        replicated.post_json(f"/v1/contexts/{cid}/search", {"query": "a"}, headers=seen, status=200),
        replicated.post_json("/v1/search", {"query": "a"}, headers=seen, status=200),
    ):
        assert "Consistency-Token" not in response.headers


def test_a_read_with_the_token_sees_the_write_while_the_replica_lags(replicated, standby, direct_conninfo):
    cid = replicated.post_json("/v1/contexts", {"metadata": {}}, status=201).json["id"]
    standby.catch_up(direct_conninfo)  # the context exists on the standby; its messages will not
    standby.pause_replay()
    try:
        appended = replicated.post_json(
            f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "seen"}]}, status=201
        )
        token = {"Consistency-Token": appended.headers["Consistency-Token"]}
        page = replicated.get(f"/v1/contexts/{cid}/messages", headers=token, status=200).json
        assert [m["content"] for m in page["data"]] == ["seen"]
        window = replicated.get(f"/v1/contexts/{cid}/window?max_tokens=100", headers=token, status=200).json
        assert window["to_version"] == 1
        assert replicated.get(f"/v1/contexts/{cid}", headers=token, status=200).json["head_version"] == 1
        # Without it, the lagging replica answers, within REPLICA_MAX_LAG_MS.
        assert replicated.get(f"/v1/contexts/{cid}", status=200).json["head_version"] == 0
    finally:
        standby.resume_replay()


@pytest.mark.parametrize("value", ["latest", "0/", "0/1/2", "123456789/0", "-1/0"])
def test_a_malformed_token_is_422_naming_the_header_with_or_without_replicas(client, value):
    cid = client.post_json("/v1/contexts", {"metadata": {}}, status=201).json["id"]
    for response in (
        client.get(f"/v1/contexts/{cid}/messages", headers={"Consistency-Token": value}, status=422),
        client.post_json(f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "a"}]},
                         headers={"Consistency-Token": value}, status=422),
    ):
        assert problem(response, 422)["errors"] == [
            {"header": "Consistency-Token",
             "detail": "Expected a WAL position such as 0/16B3748, as a write's Consistency-Token gave it."}
        ]
    # Nothing was written by the refused append.
    assert client.get(f"/v1/contexts/{cid}", status=200).json["head_version"] == 0


def test_without_replicas_a_token_is_accepted_and_none_is_sent(client):
    created = client.post_json("/v1/contexts", {"metadata": {}}, status=201)
    assert "Consistency-Token" not in created.headers
    read = client.get(f"/v1/contexts/{created.json['id']}", headers={"Consistency-Token": "FFFF/0"}, status=200)
    assert read.json["id"] == created.json["id"]


def test_a_write_stands_when_the_primary_cannot_give_its_token(replica_settings, replicated_db, tokenizer, caplog,
                                                               standby, direct_conninfo):
    # The primary answered the write, then not the position: the write is
    # acknowledged (never turned into an error a client would retry), tokenless.
    store = Store.build(replica_settings, replicated_db, tokenizer)
    replicas = store.replicas
    app = webtest.TestApp(create_app(replica_settings, store))
    cid = app.post_json("/v1/contexts", {"metadata": {}}, status=201).json["id"]
    original = replicas.write_position

    def lost() -> None:
        replicas.primary.pool.close()
        try:
            return original()
        finally:
            replicas.primary.pool = replicas.primary._new_pool()
            replicas.primary.pool.open(wait=True)

    replicas.write_position = lost
    appended = app.post_json(f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "a"}]},
                             status=201)
    assert "Consistency-Token" not in appended.headers
    assert "no consistency token for a committed write" in caplog.text
    standby.catch_up(direct_conninfo)  # no token to wait with: let the standby have it
    assert app.get(f"/v1/contexts/{cid}", status=200).json["head_version"] == 1
