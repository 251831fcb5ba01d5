"""Reads from streaming standbys (DATABASE_REPLICA_URLS), with read-your-writes.

A write's response carries the primary's WAL flush position read after its
commit, the consistency token (`Consistency-Token`). A read that sends a token
back is served by a replica that has replayed past it: one already known to have
(no round trip), else one that gets there within REPLICA_WAIT_MS, checked on the
connection the read then uses; else by the primary. A read without a token may
lag, by at most REPLICA_MAX_LAG_MS: a monitor thread per worker reads the
primary's flush position and then each replica's replay position; a replica that
has replayed what the primary had flushed at time t misses no commit from before
t, so it lags by at most now - t. Past the bound, the primary serves.

A replica that fails during a read (refused, killed, the read cancelled by a
recovery conflict) leaves that read to the primary and is marked down by its own
Database; requests skip it while the monitor probes it, every check interval,
until it answers. A server that is not in recovery (a promoted standby, a primary
named by mistake) serves no replica reads.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from psycopg import errors as pg_errors

from . import metrics
from .config import Settings
from .db import Database
from .errors import Unavailable
from .sql import QUERIES

log = logging.getLogger("context_store")
T = TypeVar("T")

HEADER = "Consistency-Token"
# A pg_lsn as PostgreSQL prints it: two hexadecimal halves of a 64-bit position.
LSN_PATTERN = "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"
_LSN = re.compile(LSN_PATTERN)

# The token of the request this thread (or task) is serving, set by the
# Consistency middleware: a WAL position, or None.
wanted: contextvars.ContextVar[int | None] = contextvars.ContextVar("consistency_token", default=None)


def parse_lsn(text: str) -> int | None:
    """A WAL position as an integer; None when `text` is not one."""
    if not _LSN.fullmatch(text):
        return None
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


class Replica:
    """One standby: its pool, and what this worker last learned of its replay."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.replayed = 0  # highest replay position seen
        self.fresh_at = float("-inf")  # monotonic time of the last primary position it had replayed
        self.standby = True  # False while it answers as a server not in recovery

    def saw(self, position: int) -> None:
        # Replay only moves forward; a late, lower reading must not undo a higher one.
        if position > self.replayed:
            self.replayed = position

    def live(self) -> bool:
        return self.standby and self.db.availability.up


class Replicas:
    """The standbys of one primary, chosen per read."""

    def __init__(self, settings: Settings, primary: Database, urls: tuple[str, ...]) -> None:
        self.primary = primary
        self.members = [Replica(Database(settings, url, label=f"replica {n}")) for n, url in enumerate(urls, 1)]
        self.max_lag = settings.replica_max_lag_ms / 1000
        self.wait = settings.replica_wait_ms / 1000
        # Often enough that a healthy replica stays well inside the lag bound,
        # rarely enough to cost the servers nothing (two one-row reads).
        self.interval = min(max(self.max_lag / 4, 0.01), 0.25)
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------

    def open(self) -> None:
        """Open the replicas' pools without waiting (one down at start is probed
        by the monitor, never fatal) and start the monitor."""
        for member in self.members:
            member.db.open()
        self._monitor = threading.Thread(target=self._watch, name="replica-monitor", daemon=True)
        self._monitor.start()

    def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(5.0)
        for member in self.members:
            member.db.close()

    # --- positions ----------------------------------------------------------------

    def write_position(self) -> str | None:
        """The consistency token for a write that just committed: the primary's
        flush position now. None when the primary cannot say (the write stands)."""
        try:
            with self.primary.connection() as conn:
                return QUERIES.flush_position.run(conn)
        except (Unavailable, psycopg.Error) as exc:
            log.warning("no consistency token for a committed write: %s", type(exc).__name__)
            return None

    def check(self) -> None:
        """Read the primary's flush position, then each replica's replay position:
        a replica at or past the first is fresh as of the moment before it was read."""
        started = time.monotonic()
        try:
            with self.primary.connection() as conn:
                flushed = parse_lsn(QUERIES.flush_position.run(conn))
        except (Unavailable, psycopg.Error):
            flushed = None  # the primary's own outage; replicas keep their last freshness
        for member in self.members:
            try:
                with member.db.connection() as conn:
                    text = QUERIES.replay_position.run(conn)
            except (Unavailable, psycopg.Error):
                continue  # down (its Database probes it on the next check) or erring
            if text is None:
                if member.standby:
                    log.error("%s is not in recovery (a primary?): it serves no reads until it is a standby",
                              member.db.label)
                member.standby = False
                continue
            member.standby = True
            position = parse_lsn(text) or 0
            member.saw(position)
            if flushed is not None and position >= flushed:
                member.fresh_at = started

    def _watch(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # pragma: no cover - the monitor must outlive any surprise
                log.exception("replica check failed")
            if self._stop.wait(self.interval):
                return

    # --- reads --------------------------------------------------------------------

    def _choose(self, token: int | None) -> tuple[Replica | None, str]:
        """A replica for a read with this token (or none), and why when none."""
        live = [member for member in self.members if member.live()]
        if not live:
            return None, "down"
        if token is None:
            now = time.monotonic()
            live = [member for member in live if now - member.fresh_at <= self.max_lag]
            if not live:
                return None, "behind"
        else:
            live = [member for member in live if member.replayed >= token] or live
        return live[next(self._turn) % len(live)], "caught_up"

    def _catch_up(self, conn: psycopg.Connection, member: Replica, token: int) -> bool:
        """Whether the replica replays past token within the wait, polling on conn."""
        deadline = time.monotonic() + self.wait
        pause = 0.0002
        while True:
            text = QUERIES.replay_position.run(conn)
            if text is None:  # promoted meanwhile
                member.standby = False
                return False
            member.saw(parse_lsn(text) or 0)
            if member.replayed >= token:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.005)

    def run(self, statements: Callable[[psycopg.Connection], T]) -> T:
        """statements(conn) on a fresh enough replica, else on the primary."""
        token = wanted.get()
        member, why = self._choose(token)
        if member is not None:
            try:
                with member.db.connection() as conn:
                    if token is None or member.replayed >= token or self._catch_up(conn, member, token):
                        result = statements(conn)
                        metrics.count_read("replica", "caught_up")
                        return result
                why = "behind"
            except Unavailable as exc:
                if isinstance(exc.__cause__, pg_errors.QueryCanceled):
                    raise  # the statement timeout: the primary would take as long
                why = "failed"
            except pg_errors.SerializationFailure:
                why = "failed"  # cancelled by a conflict with recovery: the primary has none
        metrics.count_read("primary", why)
        with self.primary.connection() as conn:
            return statements(conn)
