"""GET /metrics: Prometheus text format with requests by route and status, latency
by route, the pool, errors by kind and slow-client drops."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(client) -> dict[tuple[str, tuple], float]:
    resp = client.get("/metrics", status=200)
    assert resp.content_type == "text/plain"
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def test_metrics_count_requests_by_route_method_and_status(client):
    before = samples(client)
    cid = client.post_json("/v1/contexts", {}, status=201).json["id"]
    client.get(f"/v1/contexts/{cid}", status=200)
    client.get("/v1/contexts/00000000-0000-0000-0000-000000000000", status=404)
    after = samples(client)
    route = "/v1/contexts/{context_id:uuid}"
    for method, status, more in (("GET", "200", 1), ("GET", "404", 1)):
        key = ("context_store_requests_total", (("method", method), ("route", route), ("status", status)))
        assert after[key] - before.get(key, 0) == more
    created = ("context_store_requests_total", (("method", "POST"), ("route", "/v1/contexts"), ("status", "201")))
    assert after[created] - before.get(created, 0) == 1
    latency = ("context_store_request_duration_seconds_count", (("method", "GET"), ("route", route)))
    assert after[latency] - before.get(latency, 0) == 2


def test_metrics_show_the_pool_and_the_error_families(client):
    client.get("/health", status=200)
    names = {name for name, _ in samples(client)}
    assert "context_store_db_pool_connections" in names
    text = client.get("/metrics").text
    for family in ("context_store_errors", "context_store_slow_client_drops", "context_store_db_pool_connections"):
        assert f"# TYPE {family}" in text


def test_unknown_methods_do_not_become_labels(client):
    import webtest

    raw = webtest.TestApp(client.app, lint=False)  # as gunicorn, which passes any method token on
    for method in ("AAAA", "ZZZZZZ"):
        raw.request("/health", method=method, expect_errors=True)
    text = client.get("/metrics").text
    assert 'method="AAAA"' not in text and 'method="ZZZZZZ"' not in text
    assert 'method="OTHER"' in text
