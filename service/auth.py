"""API keys on `/v1`: who a request is (its tenant), and whether the service may
run open (no keys) on the addresses it listens on.

Every `/v1` request carries `Authorization: Bearer <key>` once any key exists;
`/health` and `/openapi.json` never need one. With no live key at all the
service runs open as the single tenant "default".
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import falcon
import psycopg

from .config import Settings, is_loopback
from .db import failure_reason
from .problems import Problem
from .queries.keys import Keys, hash_key, is_well_formed, keys_exist

log = logging.getLogger("context_store")

# A revoked key must be refused within 5 seconds on every worker, and a first key
# must close open mode within 5 seconds: no cache may outlive that.
MAX_TTL_SECONDS = 5.0
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _refused(detail: str) -> Problem:
    return Problem(401, detail, headers=dict(_CHALLENGE))


def bearer_credential(header: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header (scheme in
    any case, RFC 9110), or None for no header or another scheme."""
    if header is None:
        return None
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def guarded(path: str) -> bool:
    """Whether a path is under `/v1`, where keys apply, as Falcon's router sees it."""
    # The router ignores leading slashes: `//v1/contexts` is served by `/v1/contexts`.
    route = path.lstrip("/")
    return route == "v1" or route.startswith("v1/")


class Authenticator:
    """Falcon middleware setting `req.context.tenant` from the request's API key.

    Insert it after RequestContext (which sets the tenant "default"). Answers from
    a per-worker cache, so a request costs no round trip for its key: a key's
    tenant (or its absence) is kept ttl_seconds, and so is whether any key exists.
    Safe to share between a gthread worker's threads.
    """

    def __init__(
        self,
        keys: Keys,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        if not 0 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"ttl_seconds must be within 0..{MAX_TTL_SECONDS:g}")
        self.keys = keys
        self.ttl = ttl_seconds
        self.clock = clock
        self.max_entries = max_entries
        self._lock = threading.Lock()
        # hash -> (tenant or None for unknown/revoked, expiry on self.clock)
        self._tenants: dict[bytes, tuple[str | None, float]] = {}
        self._required: tuple[bool, float] | None = None

    def keys_required(self) -> bool:
        """Whether any live key exists (so `/v1` needs one), as of at most ttl_seconds ago."""
        now = self.clock()
        cached = self._required
        if cached is not None and now < cached[1]:
            return cached[0]
        required = self.keys.any_active()
        self._required = (required, now + self.ttl)
        return required

    def tenant_for(self, key: str) -> str | None:
        """The tenant of a live key, or None, as of at most ttl_seconds ago."""
        digest = hash_key(key)
        now = self.clock()
        with self._lock:
            cached = self._tenants.get(digest)
        if cached is not None and now < cached[1]:
            return cached[0]
        # Outside the lock: threads asking about other keys must not queue behind
        # this round trip. Two threads missing on one key both ask; both get the truth.
        tenant = self.keys.lookup(digest)
        with self._lock:
            if len(self._tenants) >= self.max_entries:
                self._evict(now)
            self._tenants[digest] = (tenant, now + self.ttl)
        return tenant

    def _evict(self, now: float) -> None:
        for digest in [d for d, (_tenant, expires) in self._tenants.items() if expires <= now]:
            del self._tenants[digest]
        if len(self._tenants) >= self.max_entries:
            # A flood of distinct keys: start over rather than grow without bound.
            self._tenants.clear()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        # A browser's CORS preflight carries no credentials by design.
        if not guarded(req.path) or req.method == "OPTIONS":
            return
        credential = bearer_credential(req.get_header("Authorization"))
        if credential is not None and is_well_formed(credential):
            # Checked even in open mode: a client holding a key must never land in
            # the "default" tenant while a new first key is not yet seen here.
            tenant = self.tenant_for(credential)
            if tenant is None:
                raise _refused("The API key is not valid: it is unknown or was revoked.")
            req.context.tenant = tenant
            return
        # In open mode anything else passes untouched, including another scheme's
        # credential forwarded by an authenticating proxy in front.
        if not self.keys_required():
            return
        if credential is None:
            raise _refused("This request needs an API key: send Authorization: Bearer <key>.")
        raise _refused("The API key is not valid: it is not a key of this service.")


# --- the master's check of its listeners ------------------------------------------


def _loopback_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return is_loopback(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_local(listener: Any) -> bool:
    """Whether a gunicorn listener (or a configured address: (host, port), a Unix
    socket path, a file descriptor) can only be reached from this machine."""
    sock = getattr(listener, "sock", None)
    if isinstance(sock, socket.socket):
        if sock.family == getattr(socket, "AF_UNIX", None):
            return True
        return _loopback_address(sock.getsockname()[0])
    if isinstance(listener, tuple):
        return _loopback_address(str(listener[0]).strip("[]"))
    # A Unix socket path is local; an inherited file descriptor cannot be told.
    return isinstance(listener, (str, bytes))


def describe(listener: Any) -> str:
    if isinstance(listener, tuple):
        host, port = listener[0], listener[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(listener)


def open_access_refusal(settings: Settings, conninfo: str, listeners: Iterable[Any]) -> str | None:
    """Master, once bound (before forking): log how the service is reachable and
    whether keys are required; return the one-line reason to stop, or None.

    It stops when no live key exists (or that cannot be told) and a listener can be
    reached from other machines, unless ALLOW_OPEN_ACCESS is true."""
    listeners = list(listeners)
    where = ", ".join(describe(listener) for listener in listeners) or "no listener"
    exposed = [describe(listener) for listener in listeners if not is_local(listener)]
    forbidden = bool(exposed) and not settings.allow_open_access
    try:
        keyed = keys_exist(conninfo, settings.connect_timeout)
    except psycopg.Error as exc:
        reason = failure_reason(exc)  # redacted: no address or credentials in a log line
        if forbidden:
            return (
                f"cannot tell whether API keys exist ({reason}) while listening on {', '.join(exposed)}; "
                "refusing to risk serving it open (set ALLOW_OPEN_ACCESS=true to start regardless)"
            )
        log.warning("could not check for API keys (%s); listening at %s", reason, where)
        return None
    if keyed:
        log.info("API keys are required on /v1; listening at %s", where)
        return None
    if forbidden:
        return (
            f"no API keys exist, so the service would serve anyone who reaches {', '.join(exposed)}: "
            "create the first key with `context-store keys create --tenant NAME` "
            "or set ALLOW_OPEN_ACCESS=true deliberately"
        )
    log.warning("authentication is disabled (no API keys): one open tenant, serving anyone who reaches %s", where)
    return None
