"""Loading the tokenizer never holds start-up past TOKENIZER_LOAD_TIMEOUT: tiktoken
downloads a missing vocabulary with no time-out, here through a proxy that
accepts the connection and never answers (what a filtered network does)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from support import silent_listener

from service.tokens import ESTIMATE

LOAD = (
    "import time; from service.tokens import load_tokenizer; "
    "t0 = time.monotonic(); t = load_tokenizer('o200k_base', {timeout}); "
    "print(t.name, round(time.monotonic() - t0, 2), t.count('abcdefgh'))"
)


@pytest.fixture
def silent_proxy():
    """A TCP listener that takes connections and never says a word."""
    with silent_listener() as address:
        yield address


def _offline_env(tmp_path, proxy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"no_proxy", "https_proxy", "http_proxy"}}
    cache = tmp_path / "empty-tiktoken-cache"
    cache.mkdir()
    env.update(TIKTOKEN_CACHE_DIR=str(cache), HTTPS_PROXY=proxy, HTTP_PROXY=proxy)
    return env


def test_a_vocabulary_download_that_never_answers_falls_back_to_the_estimate_at_the_deadline(
    tmp_path, silent_proxy
):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", LOAD.format(timeout=1.0)],
        env=_offline_env(tmp_path, silent_proxy),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    name, elapsed, count = done.stdout.split()
    assert name == ESTIMATE
    assert count == "2"  # ceil(8 bytes / 4): the estimate counts
    assert 1.0 <= float(elapsed) < 2.0
    assert time.monotonic() - started < 10
    # One line for the operator, no traceback.
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "o200k_base did not load within 1s" in lines[0] and ESTIMATE in lines[0]


def test_without_a_deadline_the_same_download_would_hang(tmp_path, silent_proxy):
    # The control: proves the proxy really stalls tiktoken, so the test above
    # measures the deadline and not a quick failure.
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(
            [sys.executable, "-c", LOAD.format(timeout=None)],
            env=_offline_env(tmp_path, silent_proxy),
            capture_output=True,
            timeout=3,
        )
