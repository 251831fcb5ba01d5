"""Letting go of the embedded PostgreSQL when someone stopped it first (an
operator's pg_ctl, a crash): the release still completes, and the home starts
again cleanly."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
from serving import pg_ctl, postmaster_running

from service.embedded import EmbeddedPostgres

pytestmark = pytest.mark.slow


def test_stop_after_the_server_was_stopped_under_us_completes_and_the_home_starts_again():
    # Not pytest's tmp_path, for the reason serving.serve gives.
    home = Path(tempfile.mkdtemp(prefix="context-store-embedded-stop-"))
    try:
        embedded = EmbeddedPostgres(home)
        embedded.start()
        pg_ctl(embedded.pgdata, "stop", "-m", "fast")
        assert not (embedded.pgdata / "postmaster.pid").exists()  # nothing fresh to read

        embedded.stop()
        assert embedded._server is None
        assert not postmaster_running(embedded.pgdata)

        again = EmbeddedPostgres(home)
        url = again.start()
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            again.stop()
        assert not postmaster_running(embedded.pgdata)
    finally:
        shutil.rmtree(home, ignore_errors=True)
