"""What the gunicorn master hands its workers at fork: every module a worker uses
(so that they are shared copy-on-write, not imported again by each worker), its
objects frozen out of the collector's way, and no database connection or thread.

The service's own configuration runs under real gunicorn, wrapped by a config that
adds two recording hooks: post_fork (in a new worker, before it loads its app: what
it got from the master) and worker_exit (after it served requests of every kind)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import orjson
import pytest
from serving import free_port, get, request, stop, wait_for
from support import database_url

pytestmark = pytest.mark.slow

RECORDING_CONFIG = textwrap.dedent(
    """
    import gc
    import json
    import os
    import socket
    import sys

    from service import gunicorn_conf as _service
    from service import runtime as _runtime
    from service.gunicorn_conf import *  # noqa: F401,F403

    _RECORDS = os.environ["TEST_FORK_RECORDS"]


    def _record(kind, **data):
        with open(os.path.join(_RECORDS, f"{kind}-{os.getpid()}.json"), "w") as out:
            json.dump(data, out)


    def _peers():
        # The peer of every connected socket this process holds (a listener has none).
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:"):
                sock = socket.socket(fileno=os.dup(int(fd)))
                try:
                    found.append(repr(sock.getpeername()))
                except OSError:
                    pass
                finally:
                    sock.close()
        return found


    def post_fork(server, worker):
        _record("forked", modules=sorted(sys.modules), frozen=gc.get_freeze_count(), peers=_peers())


    def worker_exit(server, worker):
        with _runtime._database.connection() as conn:
            backend = conn.info.backend_pid
        _record("exited", modules=sorted(sys.modules), served=worker.nr, backend=backend)
        _service.worker_exit(server, worker)
    """
)


def _each_kind_of_request(base: str) -> None:
    """Requests of every kind the service answers, each on a new connection (so
    that both workers answer some)."""
    status, _, body = request(f"{base}/v1/contexts", "POST", b'{"metadata": {"team": "a"}}')
    assert status == 201
    context = orjson.loads(body)["id"]
    messages = orjson.dumps({"messages": [{"role": "user", "content": "hello there"}]})
    for path, method, body, expected in [
        (f"/v1/contexts/{context}/messages", "POST", messages, 201),
        ("/v1/contexts", "POST", b"{}", 201),
        (f"/v1/contexts/{context}", "GET", None, 200),
        (f"/v1/contexts/{context}", "PATCH", b'{"metadata": {"team": "b"}}', 200),
        ("/v1/contexts?limit=5&metadata=%7B%22team%22%3A%22b%22%7D", "GET", None, 200),
        (f"/v1/contexts/{context}/messages?order=desc", "GET", None, 200),
        (f"/v1/contexts/{context}/messages/1", "GET", None, 200),
        (f"/v1/contexts/{context}/window?max_tokens=100&pin_system=true", "GET", None, 200),
        (f"/v1/contexts/{context}/forks", "POST", b'{"at_version": 1}', 201),
        (f"/v1/contexts/{uuid.uuid4()}", "GET", None, 404),
        (f"/v1/contexts/{context}/messages", "POST", b'{"messages": [{"role": "nobody"}]}', 422),
        ("/v1/contexts", "POST", b"{not json", 400),
        ("/openapi.json", "GET", None, 200),
        ("/metrics", "GET", None, 200),
        ("/health", "GET", None, 200),
    ]:
        status, _, answer = request(base + path, method, body)
        assert status == expected, (method, path, answer)


def test_workers_get_every_module_and_no_connection_from_the_master_and_each_opens_its_own_pool(postgresql):
    info = postgresql.info
    folder = Path(tempfile.mkdtemp(prefix="context-store-fork-"))
    records = folder / "records"
    records.mkdir()
    config = folder / "recording.conf.py"
    config.write_text(RECORDING_CONFIG)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(info.host, info.port, info.user, info.password, info.dbname),
        "CONTEXT_STORE_HOME": str(folder / "home"),
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "LOG_LEVEL": "warning",
        "TEST_FORK_RECORDS": str(records),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = folder / "gunicorn.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(config)], env=env, stdout=log, stderr=log)
    try:
        try:
            wait_for(lambda: proc.poll() is not None or get(f"{base}/health")[0] == 200, 60, "the service to answer")
            assert proc.poll() is None
        except AssertionError:
            raise AssertionError(log_path.read_text()[-3000:]) from None
        for _ in range(10):
            _each_kind_of_request(base)
        # The master runs no thread of its own: none could have been forked half-way.
        assert os.listdir(f"/proc/{proc.pid}/task") == [str(proc.pid)]
    finally:
        stop(proc)
    try:
        assert proc.returncode == 0, log_path.read_text()[-3000:]
        forked = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in records.glob("forked-*.json")}
        exited = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in records.glob("exited-*.json")}
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    assert len(forked) == 2 and exited.keys() == forked.keys()
    for pid, at_fork in forked.items():
        assert at_fork["peers"] == [], "a connection crossed the fork"
        assert at_fork["frozen"] > 10_000, "the master's objects were not frozen before fork"
        assert exited[pid]["served"] > 0
        # Whatever the worker used serving, the master had imported already.
        assert sorted(set(exited[pid]["modules"]) - set(at_fork["modules"])) == []
    # Each worker's own pool, opened after fork: its own server connections.
    backends = [record["backend"] for record in exited.values()]
    assert len(set(backends)) == 2
