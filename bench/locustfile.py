"""Interactive load test of a running Context Store with locust.

    locust -f bench/locustfile.py --host http://127.0.0.1:8000
    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 4 -t 1m

Each simulated user creates its own context in on_start (seeded with SEED_MESSAGES
messages in one batch), then runs weighted tasks against it: single appends, batch
appends, token windows, the last 50 messages, reads by random version, and now and
then a fork. Requests are grouped under templated names (/v1/contexts/[id]/...).

Targets: the host must be a loopback address (127.0.0.0/8, ::1, localhost) unless
--allow-non-loopback is given, which is only for test hosts you own. A run with no
--run-time stops by itself after --max-run-time seconds (default 600).

With API keys on the server, set CONTEXT_STORE_API_KEY; it is sent as a Bearer token.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import socket
from urllib.parse import urlsplit

import gevent
from locust import HttpUser, between, events, task
from locust.exception import StopUser

SEED_MESSAGES = 200  # messages each user's context starts with
BATCH = 50  # messages per batch append
WINDOWS = (2000, 8000)  # max_tokens of the window task
MAX_OWN_FORKS = 20  # forks a user keeps track of (and may read)


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--allow-non-loopback", action="store_true", default=False,
                        help="allow a --host that is not a loopback address (only for hosts you own)")
    parser.add_argument("--max-run-time", type=float, default=600.0,
                        help="stop after this many seconds when no --run-time is given (default 600)")


def _is_loopback(host_url: str) -> bool:
    hostname = urlsplit(host_url).hostname or ""
    try:
        infos = socket.getaddrinfo(hostname, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def _refusal(environment) -> str | None:
    """Why load must not go to environment.host, or None when it may."""
    host = environment.host or ""
    options = environment.parsed_options
    if not host:
        return "give --host http://127.0.0.1:PORT"
    if options is not None and getattr(options, "allow_non_loopback", False):
        return None
    if _is_loopback(host):
        return None
    return f"{host} is not a loopback address; pass --allow-non-loopback only for a test host you own"


@events.init.add_listener
def _check_host(environment, **_kwargs):
    if environment.host and _refusal(environment):
        raise SystemExit(f"locustfile: {_refusal(environment)}")


@events.test_start.add_listener
def _bound_run_time(environment, **_kwargs):
    options = environment.parsed_options
    if options is not None and not options.run_time and getattr(options, "max_run_time", 0) > 0:
        gevent.spawn_later(options.max_run_time, environment.runner.quit)


def _messages(count: int, rng: random.Random, explicit_tokens: bool) -> list[dict]:
    out = []
    for i in range(count):
        message = {"role": "user" if i % 2 == 0 else "assistant",
                   "content": f"locust message {rng.random():.6f}: the quick brown fox jumps over the lazy dog"}
        if explicit_tokens:
            message["token_count"] = rng.randint(1, 60)
        out.append(message)
    return out


class ContextStoreUser(HttpUser):
    """One conversation per user; tasks weighted like a chat back end's traffic."""

    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        refusal = _refusal(self.environment)  # the web UI can change the host after start-up
        if refusal:
            logging.error("locustfile: %s", refusal)
            raise StopUser()
        self.rng = random.Random()
        key = os.environ.get("CONTEXT_STORE_API_KEY")
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"
        self.client.headers["Content-Type"] = "application/json"
        created = self.client.post("/v1/contexts", json={"metadata": {"source": "locust"}},
                                   name="/v1/contexts")
        created.raise_for_status()
        self.context_id = created.json()["id"]
        self.head = 0
        self.forks: list[str] = []
        self._append(_messages(SEED_MESSAGES, self.rng, explicit_tokens=True), name="seed")

    def _append(self, messages: list[dict], name: str) -> None:
        with self.client.post(f"/v1/contexts/{self.context_id}/messages", json={"messages": messages},
                              name=f"/v1/contexts/[id]/messages ({name})", catch_response=True) as response:
            if response.status_code == 201:
                self.head = response.json()["head_version"]
                response.success()
            else:
                response.failure(f"append: {response.status_code}")

    @task(10)
    def append_single(self) -> None:
        self._append(_messages(1, self.rng, explicit_tokens=False), name="append 1")

    @task(3)
    def append_batch(self) -> None:
        self._append(_messages(BATCH, self.rng, explicit_tokens=True), name=f"append {BATCH}")

    @task(8)
    def window(self) -> None:
        max_tokens = self.rng.choice(WINDOWS)
        self.client.get(f"/v1/contexts/{self.context_id}/window?max_tokens={max_tokens}",
                        name=f"/v1/contexts/[id]/window?max_tokens={max_tokens}")

    @task(6)
    def last_50(self) -> None:
        self.client.get(f"/v1/contexts/{self.context_id}/messages?order=desc&limit=50",
                        name="/v1/contexts/[id]/messages?order=desc&limit=50")

    @task(6)
    def get_by_version(self) -> None:
        if self.head < 1:
            return
        version = self.rng.randint(1, self.head)
        self.client.get(f"/v1/contexts/{self.context_id}/messages/{version}",
                        name="/v1/contexts/[id]/messages/[version]")

    @task(1)
    def fork(self) -> None:
        at_version = self.rng.randint(0, self.head) if self.head else 0
        with self.client.post(f"/v1/contexts/{self.context_id}/forks", json={"at_version": at_version},
                              name="/v1/contexts/[id]/forks", catch_response=True) as response:
            if response.status_code == 201:
                if len(self.forks) < MAX_OWN_FORKS:
                    self.forks.append(response.json()["id"])
                response.success()
            else:
                response.failure(f"fork: {response.status_code}")

    @task(1)
    def window_on_fork(self) -> None:
        if not self.forks:
            return
        fork = self.rng.choice(self.forks)
        self.client.get(f"/v1/contexts/{fork}/window?max_tokens=2000",
                        name="/v1/contexts/[fork]/window?max_tokens=2000")
