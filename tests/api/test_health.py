"""GET /health: the database's round trip and schema version, the tokenizer, and
whether API keys are required; 503 in the health shape when the schema is behind."""

from __future__ import annotations

import shutil

import webtest

from service.app import create_app
from service.db import Database
from service.migrate import discover, migrate
from service.paths import sql_dir
from service.queries import Store


def test_health_reports_the_database_schema_tokenizer_and_open_mode(client, tokenizer):
    body = client.get("/health", status=200).json
    latest = discover()[-1].version
    assert body["status"] == "ok"
    assert body["database"]["status"] == "ok"
    assert body["database"]["latency_ms"] > 0
    assert (body["database"]["schema_version"], body["database"]["schema_expected"]) == (latest, latest)
    assert body["tokenizer"] == tokenizer.name
    assert body["auth"] == "disabled"


def test_health_is_503_saying_run_migrate_when_the_schema_is_behind(settings, tokenizer, empty_database, tmp_path):
    older = tmp_path / "migrations"
    shutil.copytree(sql_dir() / "migrations", older)
    newest = sorted(older.iterdir())[-1]
    newest.unlink()
    migrate(empty_database.url, folder=older)
    behind = settings.__class__(**{**settings.__dict__, "database_url": empty_database.url})
    database = Database(behind, empty_database.url)
    database.pool.open(wait=True)
    try:
        client = webtest.TestApp(create_app(behind, Store.build(behind, database, tokenizer)))
        resp = client.get("/health", status=503)
    finally:
        database.close()
    assert resp.content_type == "application/json"
    assert resp.headers["Retry-After"] == str(settings.retry_after)
    body = resp.json
    assert body["status"] == "unavailable"
    assert "run `context-store migrate`" in body["detail"]
    *_, before, latest = discover()
    assert (body["database"]["schema_version"], body["database"]["schema_expected"]) == (
        before.version,
        latest.version,
    )


def test_health_says_keys_are_required_once_one_exists(client, store, postgresql):
    store.keys.create("acme")
    assert client.get("/health", status=200).json["auth"] == "enabled"


def test_health_is_503_while_any_migration_is_pending_even_below_the_latest(client, postgresql):
    postgresql.execute("DELETE FROM schema_migrations WHERE version = 4")
    postgresql.commit()
    body = client.get("/health", status=503).json
    assert body["status"] == "unavailable" and "context-store migrate" in body["detail"]
