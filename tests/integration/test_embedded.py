"""service.embedded: the PostgreSQL started when no DATABASE_URL is set."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from service.embedded import EmbeddedPostgres


@pytest.fixture
def home():
    """A home folder outside pytest's tmp_path: run as root, pgserver starts the
    server as another user, and any pytest session starting on the machine resets
    /tmp/pytest-of-<user> to mode 0700, locking that user out (as conftest does)."""
    folder = Path(tempfile.mkdtemp(prefix="context-store-embedded-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_embedded_server_starts_serves_stops_and_keeps_its_data(home):
    first = EmbeddedPostgres(home)
    url = first.start()
    try:
        assert url.startswith("postgresql://")
        assert first.pgdata == home / "pgdata"
        assert (home / "pgdata" / "PG_VERSION").is_file()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            # pgvector ships with it.
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute("CREATE TABLE kept (note text)")
            conn.execute("INSERT INTO kept VALUES ('survives a restart')")
    finally:
        first.stop()

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()

    second = EmbeddedPostgres(home)
    url_again = second.start()
    try:
        with psycopg.connect(url_again) as conn:
            assert conn.execute("SELECT note FROM kept").fetchall() == [("survives a restart",)]
            assert conn.execute("SELECT '[1,2,3]'::vector(3)::text").fetchone() == ("[1,2,3]",)
    finally:
        second.stop()


def test_stop_without_start_does_nothing(home):
    handle = EmbeddedPostgres(home)
    handle.stop()
    assert not (home / "pgdata").exists()
