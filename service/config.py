"""Settings from the environment, read and validated once at start-up (12-factor).

A bad value raises ConfigError naming the variable; the CLI prints that one line
and exits non-zero.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An environment variable with a value the service cannot use."""


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
        if value < low or (high is not None and value > high):
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise ValueError(f"expected an integer {span}")
        return value

    return parse


def _float(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number {low:g}..{high:g}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _optional_threshold(raw: str) -> int | None:
    if raw.strip().lower() in {"none", "off", "disabled", ""}:
        return None
    return _int(0, 1000)(raw)


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    if "*" in origins and len(origins) > 1:
        raise ValueError("expected * alone, or a comma-separated list of origins")
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"expected origins like https://app.example.com, not {origin!r}")
    return origins


def _database_url(raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if not value.startswith(("postgres://", "postgresql://")):
        raise ValueError("expected a postgresql:// URL")
    return value


def _database_urls(raw: str) -> tuple[str, ...]:
    urls = tuple(url.strip() for url in raw.split(",") if url.strip())
    for url in urls:
        _database_url(url)
    return urls


def _regconfig(raw: str) -> str:
    value = raw.strip().lower()
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
        raise ValueError("expected the name of a text search configuration (simple, english, ...)")
    return value


def _http_url(raw: str) -> str | None:
    value = raw.strip().rstrip("/")
    if not value:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError("expected an http:// or https:// URL without query or fragment")
    return value


MIB = 1024 * 1024

# (field, variable, parser): the table the README documents; defaults live on Settings.
_SPEC: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("database_url", "DATABASE_URL", _database_url),
    ("host", "HOST", _text),
    ("allow_open_access", "ALLOW_OPEN_ACCESS", _bool),
    ("port", "PORT", _int(1, 65535)),
    ("web_concurrency", "WEB_CONCURRENCY", _int(1, 64)),
    ("worker_class", "GUNICORN_WORKER_CLASS", _choice("gthread", "gthread-stock", "sync")),
    ("threads", "GUNICORN_THREADS", _int(1, 64)),
    ("worker_timeout", "GUNICORN_TIMEOUT", _int(2, 3600)),
    ("home", "CONTEXT_STORE_HOME", _text),
    ("migrate_on_start", "MIGRATE_ON_START", _bool),
    ("pool_min_size", "DB_POOL_MIN_SIZE", _int(0, 100)),
    ("pool_max_size", "DB_POOL_MAX_SIZE", _int(1, 100)),
    ("pool_timeout", "DB_POOL_TIMEOUT", _float(0.1, 300)),
    ("pool_check", "DB_POOL_CHECK", _bool),
    ("pool_check_idle", "DB_POOL_CHECK_IDLE", _float(0, 3600)),
    ("connect_timeout", "DB_CONNECT_TIMEOUT", _int(1, 300)),
    ("statement_timeout_ms", "DB_STATEMENT_TIMEOUT_MS", _int(0, 3_600_000)),
    ("prepare_threshold", "DB_PREPARE_THRESHOLD", _optional_threshold),
    ("retry_after", "RETRY_AFTER_SECONDS", _int(1, 3600)),
    ("embedding_dim", "EMBEDDING_DIM", _int(1, 16000)),
    ("tokenizer_encoding", "TOKENIZER_ENCODING", _text),
    ("max_body_bytes", "MAX_BODY_BYTES", _int(1024, 1024 * MIB)),
    ("max_content_bytes", "MAX_CONTENT_BYTES", _int(1, 1024 * MIB)),
    ("max_metadata_bytes", "MAX_METADATA_BYTES", _int(2, 16 * MIB)),
    ("max_batch_messages", "MAX_BATCH_MESSAGES", _int(1, 100_000)),
    ("max_page_size", "MAX_PAGE_SIZE", _int(1, 100_000)),
    ("max_lineage_depth", "MAX_LINEAGE_DEPTH", _int(1, 10_000)),
    ("log_level", "LOG_LEVEL", _choice("debug", "info", "warning", "error")),
    ("log_format", "LOG_FORMAT", _choice("text", "json")),
    # API keys and tenants
    ("auth_cache_ttl", "AUTH_CACHE_TTL_SECONDS", _float(0, 5)),
    # slow clients (service/workers.py)
    ("client_header_timeout", "CLIENT_HEADER_TIMEOUT", _float(0.5, 300)),
    ("client_body_timeout", "CLIENT_BODY_TIMEOUT", _float(0.5, 300)),
    # Operations: outages and start-up.
    ("probe_interval_ms", "DB_PROBE_INTERVAL_MS", _int(10, 60_000)),
    ("tokenizer_load_timeout", "TOKENIZER_LOAD_TIMEOUT", _float(0.1, 300)),
    # Idempotency keys
    ("idempotency_ttl_hours", "IDEMPOTENCY_TTL_HOURS", _int(24, 24 * 365)),
    # Browser clients
    ("cors_allow_origins", "CORS_ALLOW_ORIGINS", _origins),
    # Behind a connection pooler (PgBouncer)
    ("db_pooler", "DB_POOLER", _choice("none", "pgbouncer-transaction")),
    # search and embeddings (service/queries/search.py, service/embeddings.py, service/worker.py)
    ("text_search_config", "TEXT_SEARCH_CONFIG", _regconfig),
    ("search_exact_max", "SEARCH_EXACT_MAX", _int(0, 100_000_000)),
    ("search_ef_search", "SEARCH_EF_SEARCH", _int(1, 1000)),
    ("search_max_scan_tuples", "SEARCH_MAX_SCAN_TUPLES", _int(1, 100_000_000)),
    ("embeddings_url", "EMBEDDINGS_URL", _http_url),
    ("embeddings_model", "EMBEDDINGS_MODEL", _text),
    ("embeddings_api_key", "EMBEDDINGS_API_KEY", _text),
    ("embeddings_timeout", "EMBEDDINGS_TIMEOUT", _float(0.1, 60)),
    ("embeddings_batch_size", "EMBEDDINGS_BATCH_SIZE", _int(1, 2048)),
    ("embeddings_max_rps", "EMBEDDINGS_MAX_RPS", _float(0.01, 10_000)),
    # Read replicas (service/replicas.py)
    ("database_replica_urls", "DATABASE_REPLICA_URLS", _database_urls),
    ("replica_max_lag_ms", "REPLICA_MAX_LAG_MS", _int(0, 3_600_000)),
    ("replica_wait_ms", "REPLICA_WAIT_MS", _int(0, 10_000)),
    ("database_migration_url", "DATABASE_MIGRATION_URL", _database_url),
)


@dataclass(frozen=True)
class Settings:
    """Immutable configuration of one process; see the README's table."""

    # Kept out of repr: a URL may carry a password (see redact_url).
    database_url: str | None = dataclasses.field(default=None, repr=False)
    host: str = "127.0.0.1"
    allow_open_access: bool = False
    port: int = 8000
    web_concurrency: int = 2
    worker_class: str = "gthread"
    threads: int = 4
    worker_timeout: int = 30
    home: str = "./.context-store"
    migrate_on_start: bool = True
    pool_min_size: int = 1
    pool_max_size: int = 4
    pool_timeout: float = 5.0
    pool_check: bool = True
    pool_check_idle: float = 1.0
    connect_timeout: int = 5
    statement_timeout_ms: int = 10_000
    prepare_threshold: int | None = 5
    retry_after: int = 2
    embedding_dim: int = 1536
    tokenizer_encoding: str = "o200k_base"
    max_body_bytes: int = 8 * MIB
    max_content_bytes: int = MIB
    max_metadata_bytes: int = 16 * 1024
    max_batch_messages: int = 1000
    max_page_size: int = 1000
    max_lineage_depth: int = 256
    log_level: str = "info"
    log_format: str = "text"
    # API keys and tenants
    auth_cache_ttl: float = 2.0
    # slow clients (service/workers.py). A complete head is one packet for any
    # client this service expects (a few hundred bytes; a whole /health exchange
    # takes 2 ms p50 over loopback); 5 s leaves room for a congested link and a few
    # retransmissions. The wait costs a socket, not a thread (measured: /health
    # p99 stays in milliseconds under 100 slow connections, bench/slow_clients.py),
    # so the deadline only bounds connection slots: to keep a worker's 1000
    # (gunicorn's worker_connections) busy an attacker must open 200 a second.
    client_header_timeout: float = 5.0
    # Without progress for this long a body is abandoned; it is also the socket
    # timeout of a thread (bodies the loop cannot frame, response writes), so it
    # bounds how long one stalled client can hold a thread.
    client_body_timeout: float = 10.0
    # Operations: outages and start-up.
    probe_interval_ms: int = 250
    tokenizer_load_timeout: float = 5.0
    # Idempotency keys: API.md keeps a response at least 24 hours.
    idempotency_ttl_hours: int = 24
    # Browser clients: origins allowed by CORS; none (off) by default.
    cors_allow_origins: tuple[str, ...] = ()
    # Behind a connection pooler: pgbouncer-transaction keeps no state on a server
    # connection beyond one transaction (no prepared statements, no session
    # settings, no session locks); the role's settings must hold the session's.
    db_pooler: str = "none"

    @property
    def behind_transaction_pooler(self) -> bool:
        return self.db_pooler == "pgbouncer-transaction"

    def _check_pooler(self, environ: Mapping[str, str]) -> Settings:
        """These settings with the pooler's demand met: prepared statements off
        (refused when DB_PREPARE_THRESHOLD asks for them)."""
        if not self.behind_transaction_pooler:
            return self
        if environ.get("DB_PREPARE_THRESHOLD") is not None and self.prepare_threshold is not None:
            raise ConfigError(
                f"invalid DB_PREPARE_THRESHOLD={self.prepare_threshold}: DB_POOLER={self.db_pooler} "
                "cannot keep prepared statements; set it to none or leave it unset"
            )
        return dataclasses.replace(self, prepare_threshold=None)
    # search and embeddings. Words are indexed with text_search_config (the
    # content_tsv column's expression; `worker --ensure-indexes` applies a change).
    text_search_config: str = "simple"
    # A per-context view of at most this many messages is searched by meaning
    # exactly (a scan of its segments, recall 1.0); a larger one through the HNSW
    # index with iterative scans. Measured by bench/search.py: see the README.
    search_exact_max: int = 10_000
    search_ef_search: int = 200
    search_max_scan_tuples: int = 50_000
    # OpenAI-compatible: POST {embeddings_url}/embeddings, the base URL as the
    # OpenAI clients take it (https://api.openai.com/v1). Unset: no server-side
    # embeddings, the worker has nothing to do and a text query searches words.
    embeddings_url: str | None = None
    embeddings_model: str = "text-embedding-3-small"
    embeddings_api_key: str | None = dataclasses.field(default=None, repr=False)
    # Bounds the one call that embeds a search query; the worker's calls get more.
    embeddings_timeout: float = 2.0
    embeddings_batch_size: int = 64
    embeddings_max_rps: float = 5.0
    # Read replicas: streaming standbys of DATABASE_URL's server; reads with a
    # consistency token wait up to replica_wait_ms for one to replay it, reads
    # without one accept a replica at most replica_max_lag_ms behind.
    database_replica_urls: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    replica_max_lag_ms: int = 1000
    replica_wait_ms: int = 20
    # Where migrations run when DATABASE_URL is not the place: a direct connection
    # (not a transaction pooler) as the schema's owner.
    database_migration_url: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every variable of the table; raise ConfigError on the first bad one."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, variable, parse in _SPEC:
            raw = environ.get(variable)
            if raw is None:
                continue
            try:
                values[field] = parse(raw)
            except ValueError as exc:
                if field in ("database_url", "embeddings_url", "database_migration_url"):
                    shown = repr(redact_url(raw))
                elif field == "database_replica_urls":
                    shown = repr(",".join(redact_url(url) for url in raw.split(",")))
                elif field == "embeddings_api_key":
                    shown = "[redacted]"
                else:
                    shown = repr(raw)
                raise ConfigError(f"invalid {variable}={shown}: {exc}") from None
        settings = cls(**values)
        settings._check()
        return settings._check_pooler(environ)

    def _check(self) -> None:
        if self.pool_min_size > self.pool_max_size:
            raise ConfigError(
                f"invalid DB_POOL_MIN_SIZE={self.pool_min_size}: exceeds DB_POOL_MAX_SIZE={self.pool_max_size}"
            )
        if self.statement_timeout_ms >= self.worker_timeout * 1000:
            raise ConfigError(
                f"invalid DB_STATEMENT_TIMEOUT_MS={self.statement_timeout_ms}: "
                f"must stay below GUNICORN_TIMEOUT={self.worker_timeout}s"
            )

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None


def is_loopback(host: str) -> bool:
    """Whether HOST only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def variables() -> list[tuple[str, Any]]:
    """(variable, default) for every setting, in documentation order."""
    defaults = {f.name: f.default for f in fields(Settings)}
    return [(variable, defaults[field]) for field, variable, _parse in _SPEC]


# password=... in a libpq keyword string or a URL's query, quoted or not.
_PASSWORD_PARAM = re.compile(r"(?i)(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)")
_REDACTED = "***"


def redact_url(url: str) -> str:
    """A database URL (or libpq keyword string) safe to print: any password, in
    the user info or as a parameter, becomes `***`; the user, host, port and
    database stay. Text that cannot be parsed is over-redacted, never under."""
    text = _PASSWORD_PARAM.sub(lambda m: m.group(1) + _REDACTED, url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    authority_end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, authority_end)
    if at < 0:
        # An unencoded '/', '?' or '#' in a password ends the authority early:
        # hide everything up to the last '@' rather than print part of it.
        at = rest.rfind("@")
        if at < 0:
            return text
        return f"{scheme}{sep}{_REDACTED}@{rest[at + 1:]}"
    user, colon, _password = rest[:at].partition(":")
    if not colon:
        return text
    return f"{scheme}{sep}{user}:{_REDACTED}@{rest[at + 1:]}"
