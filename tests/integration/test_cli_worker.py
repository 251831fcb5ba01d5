"""`context-store worker` from the command line: it starts the database
connection, runs the worker, and releases what it started, whatever the outcome."""

from __future__ import annotations

import logging

import psycopg
import pytest
from support import database_url

from service import config, runtime
from service.__main__ import main


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No configuration from the outer environment, fresh process globals, and the
    root logger put back after configure_logging rewires it."""
    for _field, variable, _parse in config._SPEC:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("CONTEXT_STORE_HOME", str(tmp_path / "home"))
    for name in ("_settings", "_embedded", "_conninfo", "_database", "_tokenizer"):
        monkeypatch.setattr(runtime, name, None)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def migrated_url(postgresql):
    info = postgresql.info
    return database_url(info.host, info.port, info.user, info.password, info.dbname)


def test_worker_ensure_indexes_builds_the_index_for_embedding_dim(monkeypatch, migrated_url):
    monkeypatch.setenv("DATABASE_URL", migrated_url)
    monkeypatch.setenv("EMBEDDING_DIM", "8")
    assert main(["worker", "--ensure-indexes"]) == 0
    with psycopg.connect(migrated_url) as conn:
        assert conn.execute("SELECT to_regclass('messages_embedding_8_idx') IS NOT NULL").fetchone()[0]


def test_worker_without_an_endpoint_exits_2(monkeypatch, migrated_url):
    monkeypatch.setenv("DATABASE_URL", migrated_url)
    assert main(["worker", "--once"]) == 2
