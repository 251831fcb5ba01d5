"""API keys and their tenants: sql/queries/keys.sql.

A key is `csk_` followed by 43 URL-safe base64 characters (256 random bits); the
prefix lets secret scanners recognise a leaked one. Only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors

from ..db import Database
from ..errors import Invalid, NotFound
from ..ids import uuid7
from ..sql import QUERIES

KEY_PREFIX = "csk_"
_KEY = re.compile(r"csk_[A-Za-z0-9_-]{43}")
# What the CLI shows of a key: enough to tell keys apart, far too little to guess one.
_SHOWN = len(KEY_PREFIX) + 6
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_NAME = 200


def new_key() -> str:
    """A fresh API key: the prefix and 256 bits from the operating system's CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def is_well_formed(key: str) -> bool:
    """Whether a string has the shape of a key (so garbage never reaches the database)."""
    return _KEY.fullmatch(key) is not None


def hash_key(key: str) -> bytes:
    """The 32-byte SHA-256 of the whole key, as stored.

    A fast, unsalted hash is right here, unlike for passwords: a key carries 256
    bits of randomness, so no dictionary or brute force can invert its hash, and a
    salt or a slow KDF would only cost time on every request's lookup (and a salt
    would rule out finding the key by its hash through an index)."""
    return hashlib.sha256(key.encode("ascii")).digest()


def check_tenant(tenant: str) -> str:
    """The tenant, or Invalid naming `tenant` when it is not 1-64 letters, digits, `.`, `_`, `-`."""
    if TENANT.fullmatch(tenant) is None:
        raise Invalid.parameter(
            "tenant", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return tenant


def _check_name(name: str | None) -> str | None:
    if name is None:
        return None
    if not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise Invalid.parameter("name", f"must be 1-{MAX_NAME} printable characters")
    return name


@dataclass(frozen=True)
class CreatedKey:
    """A new key: `key` is the only copy there will ever be."""

    id: UUID
    tenant: str
    name: str | None
    prefix: str
    created_at: datetime
    key: str


class Keys:
    """The api_keys table, over a process's Database (a worker's pool, or the CLI's)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, tenant: str, name: str | None = None) -> CreatedKey:
        """Store a new key for tenant and return it (its secret, once).

        Raise Invalid naming `tenant` or `name` when either breaks the rules."""
        check_tenant(tenant)
        _check_name(name)
        key = new_key()
        with self.db.connection() as conn:
            row = QUERIES.insert_key.run(
                conn, id=uuid7(), tenant=tenant, name=name, secret_hash=hash_key(key), prefix=key[:_SHOWN]
            )
        return CreatedKey(row["id"], row["tenant"], row["name"], row["prefix"], row["created_at"], key)

    def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every key (or tenant's), ordered by tenant then age: id, tenant, name, prefix,
        created_at, last_used_at (to the minute), revoked_at (None while live).

        Raise Invalid naming `tenant` when it could not be a tenant at all."""
        if tenant is not None:
            check_tenant(tenant)
        with self.db.connection() as conn:
            return QUERIES.list_keys.run(conn, tenant=tenant)

    def revoke(self, key_id: UUID) -> dict[str, Any]:
        """Revoke a key for good; its row, with was_revoked true when it already was.

        Raise NotFound when no key has this id."""
        with self.db.connection() as conn:
            row = QUERIES.revoke_key.run(conn, id=key_id)
        if row is None:
            raise NotFound(f"No API key has the id {key_id}.")
        return row

    def lookup(self, secret_hash: bytes) -> str | None:
        """The tenant of the live key with this hash, or None (unknown or revoked).

        Notes the key's use (last_used_at, at most once a minute) in the same
        statement."""
        with self.db.connection() as conn:
            row = QUERIES.use_key.run(conn, secret_hash=secret_hash)
        # The index probe's timing depends on the hash alone, which a client cannot
        # steer towards a stored one; the final equality check is constant-time too,
        # so no comparison here leaks how much of a stored hash a guess matched.
        if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), secret_hash):
            return None
        return row["tenant"]

    def any_active(self) -> bool:
        """Whether any key is live: without one the service runs open."""
        with self.db.connection() as conn:
            return bool(QUERIES.any_live_key.run(conn))


def keys_exist(conninfo: str, connect_timeout: int = 5) -> bool:
    """Whether any live key exists, over one direct connection closed before
    returning (for gunicorn's master, which must not hold a pool when it forks).

    A database without the api_keys table (not migrated yet) has no keys. Raise
    psycopg.OperationalError when the database cannot be reached."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout) as conn:
        try:
            return bool(QUERIES.any_live_key.run(conn))
        except pg_errors.UndefinedTable:
            return False


def keys_table_exists(conninfo: str, connect_timeout: int = 5) -> bool:
    """Whether the database has been migrated far enough to hold keys, over one
    direct connection (a pool would first fail on the missing vector type of an
    empty database). Raise psycopg.OperationalError when it cannot be reached."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout) as conn:
        return bool(QUERIES.keys_table_exists.run(conn))
