"""`context-store serve` on a machine where the tokenizer's vocabulary cannot be
had: no cached file, and its download hangs. The service starts anyway, past
TOKENIZER_LOAD_TIMEOUT, counting with the estimate, and /health says so."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import orjson
import pytest
from serving import get, serve
from support import silent_listener

from service.tokens import ESTIMATE

pytestmark = pytest.mark.slow


def test_serve_starts_with_the_estimate_when_the_vocabulary_download_hangs():
    empty_cache = Path(tempfile.mkdtemp(prefix="context-store-nocache-"))
    proxies = {k: "" for k in os.environ if k.lower() in {"no_proxy"}}
    with silent_listener() as proxy:
        env = {
            **proxies,
            "TIKTOKEN_CACHE_DIR": str(empty_cache),
            "HTTPS_PROXY": proxy,
            "HTTP_PROXY": proxy,
            "TOKENIZER_LOAD_TIMEOUT": "1",
            "LOG_LEVEL": "warning",
        }
        started = time.monotonic()
        with serve(env) as served:
            took = time.monotonic() - started
            status, _headers, body = get(f"{served.base}/health")
            assert status == 200
            assert orjson.loads(body)["tokenizer"] == ESTIMATE
            log = served.log_path.read_text()
    empty_cache.rmdir()
    # Embedded PostgreSQL start-up included; without the deadline this never returns.
    assert took < 45
    lines = [line for line in log.splitlines() if "tokenizer o200k_base" in line]
    assert len(lines) == 1 and "did not load within 1s" in lines[0], log
    assert "Traceback" not in log
