"""Idempotency-Key on every POST (API.md "Concurrency and retries"): a retry with
the same key and body gets the first response and writes nothing; another body is
409 reused; a retry while the first runs is 409 in use; keys are scoped to the
tenant, method and path, and kept at least 24 hours."""

from __future__ import annotations

import threading
from dataclasses import replace

import psycopg
import pytest
import webtest
from support import problem

from service.app import create_app
from service.db import Database
from service.queries import Store

KEY = {"Idempotency-Key": "retry-me-1"}


def count(postgresql, table: str) -> int:
    return postgresql.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def create(client) -> str:
    return client.post_json("/v1/contexts", {}, status=201).json["id"]


@pytest.mark.parametrize("kind", ["create", "append", "fork"])
def test_a_retry_gets_the_first_response_and_writes_nothing(client, postgresql, kind):
    cid = create(client)
    client.post_json(f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "x"}]}, status=201)
    url, body = {
        "create": ("/v1/contexts", {"metadata": {"a": 1}}),
        "append": (f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "hello"}]}),
        "fork": (f"/v1/contexts/{cid}/forks", {"at_version": 1}),
    }[kind]
    first = client.post_json(url, body, headers=KEY, status=201)
    rows = count(postgresql, "contexts"), count(postgresql, "messages")
    again = client.post_json(url, body, headers=KEY, status=201)
    assert again.body == first.body
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers.get("Location") == first.headers.get("Location")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert (count(postgresql, "contexts"), count(postgresql, "messages")) == rows


def test_the_same_body_in_another_order_or_spacing_is_the_same_request(client):
    cid = create(client)
    url = f"/v1/contexts/{cid}/messages"
    first = client.post(url, b'{"messages": [{"role": "user", "content": "a"}]}', headers=KEY,
                        content_type="application/json", status=201)
    again = client.post(url, b'{"messages":[{"content":"a","role":"user"}]}', headers=KEY,
                        content_type="application/json", status=201)
    assert again.json == first.json


def test_the_same_key_with_another_body_or_precondition_is_409_reused_and_writes_nothing(client, postgresql):
    cid = create(client)
    url = f"/v1/contexts/{cid}/messages"
    client.post_json(url, {"messages": [{"role": "user", "content": "a"}]}, headers=KEY, status=201)
    before = count(postgresql, "messages")
    doc = problem(client.post_json(url, {"messages": [{"role": "user", "content": "b"}]}, headers=KEY, status=409),
                  409)
    assert doc["type"] == "/problems/idempotency-key-reused"
    doc = problem(client.post_json(url, {"messages": [{"role": "user", "content": "a"}]},
                                   headers={**KEY, "If-Match": '"1"'}, status=409), 409)
    assert doc["type"] == "/problems/idempotency-key-reused"
    assert count(postgresql, "messages") == before


def test_keys_are_scoped_to_the_path(client, postgresql):
    one, two = create(client), create(client)
    body = {"messages": [{"role": "user", "content": "same"}]}
    a = client.post_json(f"/v1/contexts/{one}/messages", body, headers=KEY, status=201).json
    b = client.post_json(f"/v1/contexts/{two}/messages", body, headers=KEY, status=201).json
    assert a["data"][0]["context_id"] == one and b["data"][0]["context_id"] == two
    assert count(postgresql, "messages") == 2


def test_keys_are_scoped_to_the_tenant(settings, store, postgresql):
    acme, globex = store.keys.create("acme"), store.keys.create("globex")
    client = webtest.TestApp(create_app(replace(settings, auth_cache_ttl=0), store))
    for key in (acme.key, globex.key):
        client.post_json("/v1/contexts", {}, headers={**KEY, "Authorization": f"Bearer {key}"}, status=201)
    assert count(postgresql, "contexts") == 2


def test_a_failed_request_is_not_kept_and_its_retry_runs_again(client, postgresql):
    cid = create(client)
    url = f"/v1/contexts/{cid}/messages"
    body = {"messages": [{"role": "user", "content": "a"}]}
    problem(client.post_json(url, body, headers={**KEY, "If-Match": '"5"'}, status=412), 412)
    assert count(postgresql, "idempotency_keys") == 0
    client.post_json(f"/v1/contexts/{cid}/messages", {"messages": [{"role": "user", "content": "b"}]}, status=201)
    problem(client.post_json(url, body, headers={**KEY, "If-Match": '"5"'}, status=412), 412)


@pytest.mark.parametrize("key", ["", "has space", "tab\tin", "é", "x" * 256])
def test_a_malformed_key_is_422_naming_the_header(client, postgresql, key):
    doc = problem(client.post_json("/v1/contexts", {}, headers={"Idempotency-Key": key}, status=422), 422)
    assert doc["errors"] == [{"header": "Idempotency-Key", "detail": "Expected 1..255 visible ASCII characters."}]
    assert count(postgresql, "contexts") == 0


def test_the_longest_key_and_every_visible_character_are_accepted(client):
    client.post_json("/v1/contexts", {}, headers={"Idempotency-Key": "~" * 255}, status=201)
    client.post_json("/v1/contexts", {}, headers={"Idempotency-Key": "".join(map(chr, range(33, 127)))}, status=201)


def test_a_retry_while_the_first_still_runs_is_409_in_use_with_retry_after(client, conninfo, postgresql):
    scope = "default\nretry-me-1\nPOST\n/v1/contexts"
    with psycopg.connect(conninfo) as holder:  # the first request, mid-transaction
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [scope])
        resp = client.post_json("/v1/contexts", {}, headers=KEY, status=409)
        doc = problem(resp, 409)
        assert doc["type"] == "/problems/idempotency-key-in-use"
        assert resp.headers["Retry-After"] == "1"
        holder.rollback()
    assert count(postgresql, "contexts") == 0
    client.post_json("/v1/contexts", {}, headers=KEY, status=201)


def test_an_expired_key_no_longer_replays_and_expired_keys_are_removed(client, postgresql):
    first = client.post_json("/v1/contexts", {}, headers=KEY, status=201)
    stored = postgresql.execute("SELECT expires_at - created_at FROM idempotency_keys").fetchone()[0]
    assert abs(stored.total_seconds() - 24 * 3600) < 1  # two clock readings of one INSERT
    postgresql.execute("UPDATE idempotency_keys SET expires_at = clock_timestamp() - interval '1 second'")
    postgresql.commit()
    again = client.post_json("/v1/contexts", {}, headers=KEY, status=201)
    assert again.json["id"] != first.json["id"]
    assert count(postgresql, "contexts") == 2
    # The expired row was replaced by the new response, not kept beside it.
    assert count(postgresql, "idempotency_keys") == 1


def test_expired_keys_are_removed_in_batches_by_the_service(store, postgresql):
    postgresql.execute(
        "INSERT INTO idempotency_keys (tenant, key, method, path, request_hash, status, headers, body, expires_at)"
        " SELECT 'default', 'k' || i, 'POST', '/v1/contexts', '\\x00', 201, '{}', '\\x00',"
        " clock_timestamp() - interval '1 hour' FROM generate_series(1, 1200) AS i"
    )
    postgresql.commit()
    idempotency = store.idempotency
    idempotency._clean_up()  # a full batch: the next request may clean again at once
    assert count(postgresql, "idempotency_keys") == 700
    idempotency._clean_up()
    idempotency._clean_up()
    assert count(postgresql, "idempotency_keys") == 0


def test_32_concurrent_retries_of_one_key_write_once(settings, tokenizer, postgresql):
    wide = replace(settings, pool_min_size=4, pool_max_size=34, pool_timeout=30.0)
    database = Database(wide, wide.database_url)
    database.pool.open(wait=True)
    try:
        app = webtest.TestApp(create_app(wide, Store.build(wide, database, tokenizer)))
        cid = app.post_json("/v1/contexts", {}, status=201).json["id"]
        body = {"messages": [{"role": "user", "content": "once"}] * 20}
        barrier = threading.Barrier(32)
        results: list = [None] * 32

        def retry(i: int) -> None:
            barrier.wait()
            results[i] = app.post_json(f"/v1/contexts/{cid}/messages", body, headers=KEY, expect_errors=True)

        threads = [threading.Thread(target=retry, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        database.close()
    statuses = sorted(r.status_int for r in results)
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in results if r.status_int == 201]
    assert len({r.body for r in created}) == 1  # every 201 is the one first response
    for r in results:
        if r.status_int == 409:
            assert r.json["type"] == "/problems/idempotency-key-in-use"
    assert count(postgresql, "messages") == 20
    assert postgresql.execute("SELECT head_version FROM contexts WHERE id = %s", [cid]).fetchone()[0] == 20


def test_a_failed_clean_up_never_becomes_the_answer_of_a_keyed_post(client, store, monkeypatch, postgresql):
    from service.sql import QUERIES, Statement

    original = Statement.run

    def failing(self, conn, **params):
        if self.name == "delete_expired_idempotency_keys":
            raise psycopg.OperationalError("the database went away")
        return original(self, conn, **params)

    monkeypatch.setattr(Statement, "run", failing)
    first = client.post_json("/v1/contexts", {}, headers=KEY, status=201)
    again = client.post_json("/v1/contexts", {}, headers=KEY, status=201)
    assert again.body == first.body and again.headers["Idempotent-Replayed"] == "true"
    assert count(postgresql, "contexts") == 1
    assert QUERIES.delete_expired_idempotency_keys.name == "delete_expired_idempotency_keys"
