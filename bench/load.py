"""The data every cell reads, loaded through the service's API.

One context per size, in batches of LOAD_BATCH messages with token_count given, and
a chain of forks of the largest context. The payloads are seeded, so two services
loaded here (compare mode) hold the same messages under different ids.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from bench import driver
from bench.common import fmt_n, log
from bench.services import Api

FORK_DEPTHS = (1, 8, 32)
FORK_SEGMENT_MESSAGES = 10  # appended at each level of the fork chain
LOAD_BATCH = 1000


@dataclass
class Dataset:
    """Ids of what was loaded on one service."""

    contexts: dict[int, str] = field(default_factory=dict)  # size -> context id
    heads: dict[int, int] = field(default_factory=dict)  # size -> head version
    chain: dict[int, str] = field(default_factory=dict)  # fork depth -> context id (FORK_DEPTHS only)
    window_only: list[int] = field(default_factory=list)  # sizes measured by the window rows only
    rates: list[str] = field(default_factory=list)  # "1,000 msgs in 0.4 s (2,500 msg/s)"


def load_context(api: Api, size: int, seed: int) -> str:
    context = api.call("POST", "/v1/contexts", {"metadata": {"bench": f"size-{size}"}}, 201)
    cid = context["id"]
    batches = math.ceil(size / LOAD_BATCH)
    for index in range(batches):
        count = min(LOAD_BATCH, size - index * LOAD_BATCH)
        batch = driver.message_batch(count, seed * 1_000_003 + index, explicit_tokens=True)
        api.call("POST", f"/v1/contexts/{cid}/messages", {"messages": batch}, 201)
    return cid


def build_fork_chain(api: Api, root: str, depth: int) -> dict[int, str]:
    """Forks of forks: level d is a fork of level d-1 with FORK_SEGMENT_MESSAGES of its own."""
    chain: dict[int, str] = {}
    parent = root
    for level in range(1, depth + 1):
        fork = api.call("POST", f"/v1/contexts/{parent}/forks", {}, 201)
        batch = driver.message_batch(FORK_SEGMENT_MESSAGES, 7_000_000 + level, explicit_tokens=True)
        api.call("POST", f"/v1/contexts/{fork['id']}/messages", {"messages": batch}, 201)
        chain[level] = parent = fork["id"]
    return chain


def load_all(api: Api, sizes: list[int], full: bool, name: str = "") -> Dataset:
    """Every context of the run (1,000,000 messages too with `full`), then the fork chain."""
    data = Dataset(window_only=[1_000_000] if full and 1_000_000 not in sizes else [])
    suffix = f" ({name})" if name else ""
    for index, size in enumerate(sizes + data.window_only):
        started = time.monotonic()
        data.contexts[size] = load_context(api, size, seed=index + 1)
        data.heads[size] = size
        took = time.monotonic() - started
        data.rates.append(f"{fmt_n(size)} msgs in {took:.1f} s ({size / took:,.0f} msg/s)")
        log(f"loaded {fmt_n(size)} messages in {took:.1f} s ({size / took:,.0f} msg/s){suffix}")
    largest = sizes[-1]
    chain = build_fork_chain(api, data.contexts[largest], max(FORK_DEPTHS))
    data.chain = {d: chain[d] for d in FORK_DEPTHS}
    log(f"fork chain of depth {max(FORK_DEPTHS)} on the {fmt_n(largest)}-message context ready{suffix}")
    return data
