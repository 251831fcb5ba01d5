"""GET /metrics under real gunicorn: the samples of every worker, whichever worker
answers the scrape."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving import get, serve

pytestmark = pytest.mark.slow


def health_requests(base: str) -> float:
    status, _, body = get(f"{base}/metrics")
    assert status == 200
    return sum(
        s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "context_store_requests_total" and s.labels["route"] == "/health"
    )


def test_metrics_sum_every_workers_requests():
    with serve({"WEB_CONCURRENCY": "2"}) as served:
        start = health_requests(served.base)
        for _ in range(40):  # a new connection each: both workers answer some
            assert get(f"{served.base}/health")[0] == 200
        # Every scrape, whichever worker takes it, sees all 40.
        assert {health_requests(served.base) - start for _ in range(6)} == {40}
