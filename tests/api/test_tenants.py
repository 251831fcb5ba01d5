"""Two tenants, every endpoint: another tenant's context id is a 404 (never a 403)
on every route, forks and point-in-time included, and such a request writes
nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import webtest
from support import problem

from service.app import create_app


@pytest.fixture
def tenants(settings, store):
    acme, globex = store.keys.create("acme"), store.keys.create("globex")
    client = webtest.TestApp(create_app(replace(settings, auth_cache_ttl=0), store))
    return client, {"Authorization": f"Bearer {acme.key}"}, {"Authorization": f"Bearer {globex.key}"}


def snapshot(postgresql):
    return postgresql.execute(
        "SELECT (SELECT count(*) FROM contexts), (SELECT count(*) FROM messages),"
        " (SELECT count(*) FROM idempotency_keys),"
        " (SELECT array_agg(metadata::text || coalesce(deleted_at::text, '') ORDER BY id) FROM contexts)"
    ).fetchone()


def test_another_tenants_context_is_404_on_every_endpoint_and_nothing_is_written(tenants, postgresql):
    client, acme, globex = tenants
    cid = client.post_json("/v1/contexts", {"metadata": {"owner": "acme"}}, headers=acme, status=201).json["id"]
    one = {"messages": [{"role": "system", "content": "hi"}]}
    client.post_json(f"/v1/contexts/{cid}/messages", one, headers=acme, status=201)
    fork = client.post_json(f"/v1/contexts/{cid}/forks", {}, headers=acme, status=201).json["id"]
    before = snapshot(postgresql)

    for target in (cid, fork):
        base = f"/v1/contexts/{target}"
        requests = [
            client.get(base, headers=globex, expect_errors=True),
            client.get(f"{base}?as_of_version=0", headers=globex, expect_errors=True),
            client.head(base, headers=globex, expect_errors=True),
            client.patch_json(base, {"metadata": {"owner": "globex"}}, headers=globex, expect_errors=True),
            client.delete(base, headers=globex, expect_errors=True),
            client.post_json(f"{base}/messages", one, headers=globex, expect_errors=True),
            client.post_json(f"{base}/messages", one, headers={**globex, "Idempotency-Key": "k"},
                             expect_errors=True),
            client.get(f"{base}/messages", headers=globex, expect_errors=True),
            client.get(f"{base}/messages?as_of_version=1", headers=globex, expect_errors=True),
            client.get(f"{base}/messages/1", headers=globex, expect_errors=True),
            client.get(f"{base}/window?max_tokens=100", headers=globex, expect_errors=True),
            client.get(f"{base}/window?max_tokens=100&as_of=2020-01-01T00:00:00Z", headers=globex,
                       expect_errors=True),
            client.post_json(f"{base}/forks", {"at_version": 1}, headers=globex, expect_errors=True),
        ]
        for resp in requests:
            assert resp.status_int == 404, (resp.request.method, resp.request.url, resp.status)
            if resp.request.method != "HEAD":
                problem(resp, 404)
    assert client.get("/v1/contexts", headers=globex).json["data"] == []
    assert snapshot(postgresql) == before
    # The owner still sees everything.
    assert client.get(f"/v1/contexts/{fork}/window?max_tokens=100", headers=acme).json["to_version"] == 1
    assert len(client.get("/v1/contexts", headers=acme).json["data"]) == 2
