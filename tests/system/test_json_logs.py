"""LOG_FORMAT=json under real gunicorn: every line the service writes is one JSON
object, and request lines carry their request id."""

from __future__ import annotations

import orjson
import pytest
from serving import get, serve

pytestmark = pytest.mark.slow


def test_every_log_line_is_json_and_requests_carry_their_id():
    with serve({"LOG_FORMAT": "json", "LOG_LEVEL": "info"}) as served:
        assert get(f"{served.base}/v1/contexts/nope%0aFORGED", {"X-Request-Id": "json-1"})[0] == 404
        log_path = served.log_path
        served.proc.terminate()
        served.proc.wait(30)
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [orjson.loads(line) for line in lines]  # raises on any line that is not JSON
    assert {"time", "level", "logger", "pid", "message"} <= set(records[0])
    access = [r for r in records if r.get("request_id") == "json-1"]
    assert len(access) == 1
    # One line per request: gunicorn's access line (no request id) stays off.
    assert not [r for r in records if r["logger"] == "gunicorn.access"]
    assert access[0]["status"] == 404 and access[0]["path"] == "/v1/contexts/nope\\x0aFORGED"
    assert not any(line.startswith("FORGED") for line in lines)
