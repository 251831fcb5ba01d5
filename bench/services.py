"""The processes the suite starts and stops: the embedded PostgreSQL, and the service
under gunicorn (one for the current tree, and one for a git ref in compare mode).

A third service, "auth", runs the current tree on a database holding one API key, for
the keyed append rows (cells.measure_writes).

Each service runs `python -m service serve` in its own session with its own
DATABASE_URL, on a free port of 127.0.0.1, from a code folder: the repository, or an
exported ref whose `service` package and `sql/` folder it then runs (the folder is
the working directory and PYTHONPATH, so it comes before the editable install).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from bench import driver
from bench.common import HOST, REPO, log


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tiktoken_dir() -> str | None:
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return os.environ["TIKTOKEN_CACHE_DIR"]
    for candidate in (REPO.parent / "shared" / "tiktoken", Path("/work/shared/tiktoken")):
        if candidate.is_dir():
            return str(candidate)
    return None


# ---------------------------------------------------------------- PostgreSQL


def start_embedded(home: Path):
    """Start an embedded PostgreSQL in `home`; (handle, URL of its default database)."""
    from service.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(home)
    return embedded, embedded.start()


def create_database(url: str, name: str) -> str:
    """Create an empty database `name` on the server of `url`; the URL to reach it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def create_api_key(url: str, tenant: str = "bench") -> str:
    """Migrate the database of `url` and store one API key for `tenant` in it, through
    the service's own store (as `context-store keys create --tenant T` does); the key.
    Done before the service starts, so its workers require keys from their first request."""
    from bench.raw import RawStore
    from service.migrate import migrate

    migrate(url)
    raw = RawStore(url)
    try:
        return raw.store.keys.create(tenant, "bench").key
    finally:
        raw.close()


def require_keys(port: int) -> None:
    """Make sure the service on `port` refuses a /v1 request without a key (and so
    that the keyed cells measure a service with keys switched on)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", "/v1/contexts/00000000-0000-0000-0000-000000000000", headers=driver.HEADERS)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    if response.status != 401:
        raise RuntimeError(f"the service with an API key answered {response.status} without one, not 401")


def recorded_keys(url: str, prefix: str) -> int:
    """How many idempotency keys starting with `prefix` the database of `url` holds."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM idempotency_keys WHERE starts_with(key, %s)", (prefix,)).fetchone()
    return int(row[0]) if row else 0


def vacuum(url: str) -> None:
    """What autovacuum would eventually do after the bulk load."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) messages, contexts")


# ---------------------------------------------------------------- the service


class Api:
    """The orchestrator's own client, for loading and probing (not measured)."""

    def __init__(self, port: int, bearer: str | None = None) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=120)
        self.headers = dict(driver.HEADERS) | ({"Authorization": f"Bearer {bearer}"} if bearer else {})

    def raw_call(self, method: str, path: str, data: bytes | None = None) -> tuple[int, bytes]:
        for attempt in range(2):  # one reconnect when keep-alive expired between calls
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: Any = None, expected: int = 200) -> Any:
        status, payload = self.raw_call(method, path, None if body is None else orjson.dumps(body))
        if status != expected:
            raise RuntimeError(f"{method} {path}: {status} {payload[:300]!r}")
        return orjson.loads(payload) if payload else None

    def close(self) -> None:
        self.conn.close()


def wait_for_health(proc: subprocess.Popen, port: int, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode} before /health answered")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/health")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status == 200:
                return orjson.loads(body)
            last = f"{response.status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"/health did not answer 200 within {timeout:.0f} s ({last})")


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM to the gunicorn master; SIGKILL to its process group after 30 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        log("gunicorn did not stop within 30 s; killing its process group")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class Service:
    """One gunicorn service: its code folder, database, log, and once started its port."""

    name: str  # "current" or the compared ref, for logs and reports
    code_dir: Path
    database_url: str
    home: Path
    log_path: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    api: Api | None = None
    health: dict[str, Any] = field(default_factory=dict)
    module_file: str = "?"  # service/__init__.py as this service's interpreter resolves it
    bearer: str | None = None  # the API key its clients send, when its database holds one

    def environment(self, args) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOST=HOST,
            PORT=str(self.port),
            WEB_CONCURRENCY=str(args.workers),
            DATABASE_URL=self.database_url,
            CONTEXT_STORE_HOME=str(self.home),
            LOG_LEVEL=args.log_level,
        )
        if self.code_dir != REPO:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.code_dir), env.get("PYTHONPATH")]))
        if args.threads is not None:
            env["GUNICORN_THREADS"] = str(args.threads)
        vocab = tiktoken_dir()
        if vocab:
            env["TIKTOKEN_CACHE_DIR"] = vocab
        for item in args.service_env:
            name, value = item.split("=", 1)
            env[name] = value
        return env

    def start(self, args, *, require_own_code: bool = False) -> None:
        """Start gunicorn and wait until /health answers. With require_own_code, first
        make sure `import service` resolves inside code_dir (not to the editable
        install of the current tree), and refuse to start otherwise."""
        self.port = free_port()
        env = self.environment(args)
        self.module_file = resolved_module(self.code_dir, env)
        if require_own_code and not Path(self.module_file).is_relative_to(self.code_dir.resolve()):
            raise RuntimeError(f"{self.name}: `import service` would load {self.module_file}, not the code in "
                               f"{self.code_dir}; refusing to compare the current code with itself")
        log(f"starting gunicorn for {self.name} ({args.workers} workers) on {HOST}:{self.port}, "
            f"code {self.module_file}; log {self.log_path}")
        self.home.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab")
        try:
            # its own session: a Ctrl-C here reaches the orchestrator only, which then
            # stops gunicorn in order (SIGTERM to the master)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "serve"],
                cwd=self.code_dir, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True,
            )
        finally:
            log_file.close()
        self.health = wait_for_health(self.proc, self.port)
        self.api = Api(self.port, self.bearer)

    def stop(self) -> None:
        if self.api is not None:
            self.api.close()
            self.api = None
        if self.proc is not None:
            log(f"stopping gunicorn ({self.name})")
            stop_process(self.proc)


def resolved_module(code_dir: Path, env: dict[str, str]) -> str:
    """The file `import service` loads with this working directory and environment:
    the same interpreter and sys.path the service is about to start with."""
    out = subprocess.run(
        [sys.executable, "-c", "import service; print(service.__file__)"],
        cwd=code_dir, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return str(Path(out.stdout.strip()).resolve())


def worker_memory(proc: subprocess.Popen) -> list[tuple[str, int, int]]:
    """(process, RSS, PSS): RSS counts pages shared copy-on-write with the master (the
    tokenizer's vocabulary among them) in every process; PSS splits them."""
    import psutil

    def sizes(p: psutil.Process) -> tuple[int, int]:
        full = p.memory_full_info()
        return full.rss, getattr(full, "pss", full.rss)

    master = psutil.Process(proc.pid)
    out = [(f"master {master.pid}", *sizes(master))]
    for child in master.children(recursive=False):
        try:
            out.append((f"worker {child.pid}", *sizes(child)))
        except psutil.Error:
            pass
    return out
