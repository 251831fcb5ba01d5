"""Read-your-writes under real gunicorn, against a real streaming standby: pairs
of an append on one node and a read on another, and a standby killed mid-load."""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import urlsplit

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving import get, serve, wait_for
from support import database_url

pytestmark = pytest.mark.slow


class Client:
    """One keep-alive connection: one worker of one node answers all its requests."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

    def call(self, method: str, path: str, body=None, headers=None):
        headers = dict(headers or {})
        if body is not None:
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, None if body is None else orjson.dumps(body), headers)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, resp, orjson.loads(data) if data else None

    def close(self) -> None:
        self.conn.close()


def replica_reads(base: str, served_by: str) -> float:
    _, _, body = get(f"{base}/metrics")
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "context_store_replica_reads_total" and sample.labels["served_by"] == served_by
    )


def urls(postgresql, replica) -> tuple[str, dict[str, str]]:
    info = postgresql.info
    primary = database_url(info.host, info.port, info.user, info.password, info.dbname)
    env = {"DATABASE_REPLICA_URLS": replica.url(info.dbname), "WEB_CONCURRENCY": "2", "MIGRATE_ON_START": "false"}
    return primary, env


def test_read_your_writes_holds_for_1000_pairs_across_nodes(postgresql, standby, direct_conninfo):
    standby.catch_up(direct_conninfo)
    primary, env = urls(postgresql, standby)
    with serve(env, database_url=primary) as one, serve(env, database_url=primary) as two:
        clients = [Client(one.base), Client(two.base)]
        status, _, context = clients[0].call("POST", "/v1/contexts", {"metadata": {}})
        assert status == 201
        path = f"/v1/contexts/{context['id']}/messages"
        seen = 0
        for n in range(1, 1001):
            writer, reader = clients[n % 2], clients[(n + 1) % 2]
            status, resp, appended = writer.call("POST", path, {"messages": [{"role": "user", "content": f"m{n}"}]})
            assert status == 201 and appended["head_version"] == n
            token = resp.getheader("Consistency-Token")
            status, _, message = reader.call("GET", f"{path}/{n}", headers={"Consistency-Token": token})
            assert (status, message["content"]) == (200, f"m{n}"), n
            seen += 1
        assert seen == 1000
        for client in clients:
            client.close()
        # The standby answered reads (else this proved nothing about replicas).
        assert replica_reads(one.base, "replica") + replica_reads(two.base, "replica") >= 500


def test_killing_the_standby_mid_load_loses_no_request(postgresql, direct_conninfo, pg_server):
    from standby import Standby

    own = Standby.create(str(pg_server.host), pg_server.port, pg_server.user, "cs_tests_standby_load")
    try:
        own.catch_up(direct_conninfo)
        primary, env = urls(postgresql, own)
        with serve(env, database_url=primary) as node:
            setup = Client(node.base)
            ids = [setup.call("POST", "/v1/contexts", {"metadata": {}})[2]["id"] for _ in range(4)]
            setup.close()
            own.catch_up(direct_conninfo)  # the reads without a token find the contexts there
            failures: list[tuple] = []
            appended = {cid: 0 for cid in ids}
            stop = threading.Event()

            def load(cid: str) -> None:
                client = Client(node.base)
                path = f"/v1/contexts/{cid}/messages"
                while not stop.is_set():
                    status, resp, body = client.call("POST", path, {"messages": [{"role": "user", "content": "x"}]})
                    if status != 201:
                        failures.append(("append", status, body))
                        continue
                    appended[cid] += 1
                    token = {"Consistency-Token": resp.getheader("Consistency-Token")}
                    for headers in (token, {}):
                        status, _, body = client.call("GET", f"/v1/contexts/{cid}/window?max_tokens=50", headers=headers)
                        if status != 200:
                            failures.append(("read", status, body))
                    status, _, body = client.call("GET", f"{path}/{appended[cid]}", headers=token)
                    if status != 200:
                        failures.append(("read own write", status, body))
                client.close()

            threads = [threading.Thread(target=load, args=(cid,)) for cid in ids]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            before = replica_reads(node.base, "replica")
            own.kill()
            time.sleep(1.5)
            stop.set()
            for thread in threads:
                thread.join(30)
            assert failures == []
            assert before > 0  # the standby was serving when it died
            check = Client(node.base)
            for cid in ids:  # every acknowledged append is there
                status, _, context = check.call("GET", f"/v1/contexts/{cid}")
                assert (status, context["head_version"]) == (200, appended[cid])
            # Back, it serves again without a restart of the service.
            own.start()
            after = replica_reads(node.base, "replica")

            def replica_serves() -> bool:
                check.call("GET", f"/v1/contexts/{ids[0]}")
                return replica_reads(node.base, "replica") > after

            wait_for(replica_serves, 20, "reads from the restarted standby")
            check.close()
    finally:
        own.destroy(direct_conninfo)
