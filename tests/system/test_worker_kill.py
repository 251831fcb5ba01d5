"""Exactly once under worker deaths: clients append batches with Idempotency-Keys
and retry every failed request until it is answered, while gunicorn workers are
SIGKILLed under them. Every batch is stored exactly once, versions are gapless."""

from __future__ import annotations

import http.client
import os
import random
import signal
import threading
import time
import urllib.error
from pathlib import Path

import orjson
import pytest
from serving import request, serve

pytestmark = pytest.mark.slow

CLIENTS = 4
BATCHES = 15
BATCH = 500


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers: the master's children."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                pids.append(int(entry.name))
    return pids


def test_batches_survive_killed_workers_exactly_once():
    with serve({"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4"}) as served:
        status, _, body = request(f"{served.base}/v1/contexts", "POST", b"{}")
        assert status == 201
        cid = orjson.loads(body)["id"]
        url = f"{served.base}/v1/contexts/{cid}/messages"
        done = threading.Event()
        kills, retries, answers, failures = [], [], {}, []

        def client(c: int) -> None:
            for b in range(BATCHES):
                payload = orjson.dumps(
                    {"messages": [{"role": "user", "content": f"c{c}-b{b}-m{i}", "token_count": 1}
                                  for i in range(BATCH)]}
                )
                deadline = time.monotonic() + 120
                while True:
                    try:
                        status, _, body = request(url, "POST", payload, {"Idempotency-Key": f"c{c}-b{b}"})
                    except (OSError, urllib.error.URLError, http.client.HTTPException):  # the worker died
                        status, body = None, b""
                    if status == 201:
                        answers[(c, b)] = orjson.loads(body)["head_version"]
                        break
                    if status not in (None, 409, 502, 503):
                        failures.append((status, body[:300]))
                        return
                    assert time.monotonic() < deadline, "a batch was never acknowledged"
                    retries.append((c, b, status))
                    time.sleep(0.05)

        def killer() -> None:
            rng = random.Random(7)
            while not done.is_set():
                time.sleep(rng.uniform(0.15, 0.35))
                pids = worker_pids(served.proc.pid)
                if pids and not done.is_set():
                    victim = rng.choice(pids)
                    try:
                        os.kill(victim, signal.SIGKILL)
                        kills.append(victim)
                    except ProcessLookupError:
                        pass

        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        murderer = threading.Thread(target=killer)
        murderer.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        done.set()
        murderer.join(5)
        assert not any(t.is_alive() for t in threads)
        log_lines = served.log_path.read_text().splitlines()
        errors = [line for line in log_lines if "SIGKILL" not in line and "Booting worker" not in line]
        assert failures == [], "\n".join(errors[-60:])
        assert len(kills) >= 3 and retries, (len(kills), len(retries))

        seen: list[tuple[int, str]] = []
        after = 0
        while True:
            status, _, body = request(f"{url}?limit=1000&after={after}")
            assert status == 200, body
            page = orjson.loads(body)
            seen.extend((m["version"], m["content"]) for m in page["data"])
            if not page["has_more"]:
                break
            after = int(page["next_cursor"])

    total = CLIENTS * BATCHES * BATCH
    assert [v for v, _ in seen] == list(range(1, total + 1))  # gapless, nothing extra
    contents = [c for _, c in seen]
    assert len(set(contents)) == total  # nothing twice
    for (c, b), head in answers.items():
        # The acknowledged head is where that batch really ends, whole and in order.
        assert contents[head - BATCH:head] == [f"c{c}-b{b}-m{i}" for i in range(BATCH)]
