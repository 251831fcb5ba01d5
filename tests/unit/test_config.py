"""Settings.from_env: defaults, every variable's parser, and errors naming the variable."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from service import config
from service.config import MIB, ConfigError, Settings, redact_url, variables

ALL_VARIABLES = [variable for _field, variable, _parse in config._SPEC]


def test_defaults_apply_when_no_variable_is_set():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url is None
    assert settings.uses_embedded_database is True
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.web_concurrency == 2
    assert settings.threads == 4
    assert settings.worker_timeout == 30
    assert settings.home == "./.context-store"
    assert settings.migrate_on_start is True
    assert (settings.pool_min_size, settings.pool_max_size) == (1, 4)
    assert settings.pool_timeout == 5.0
    assert settings.pool_check is True
    assert settings.connect_timeout == 5
    assert settings.statement_timeout_ms == 10_000
    assert settings.prepare_threshold == 5
    assert settings.retry_after == 2
    assert settings.embedding_dim == 1536
    assert settings.tokenizer_encoding == "o200k_base"
    assert settings.max_body_bytes == 8 * MIB
    assert settings.max_content_bytes == MIB
    assert settings.max_metadata_bytes == 16 * 1024
    assert settings.max_batch_messages == 1000
    assert settings.max_page_size == 1000
    assert settings.log_level == "info"
    assert settings.probe_interval_ms == 250
    assert settings.tokenizer_load_timeout == 5.0


def test_from_env_reads_os_environ_when_no_mapping_is_given(monkeypatch):
    for variable in ALL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PORT", "9123")
    assert Settings.from_env().port == 9123


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    [
        ("DATABASE_URL", "postgresql://u:p@db:5432/cs", "database_url", "postgresql://u:p@db:5432/cs"),
        ("DATABASE_URL", " postgres://db/cs ", "database_url", "postgres://db/cs"),
        ("HOST", " 127.0.0.2 ", "host", "127.0.0.2"),
        ("HOST", "::1", "host", "::1"),
        ("HOST", "localhost", "host", "localhost"),
        ("ALLOW_OPEN_ACCESS", "true", "allow_open_access", True),
        ("PORT", "8080", "port", 8080),
        ("PORT", "65535", "port", 65535),
        ("WEB_CONCURRENCY", "8", "web_concurrency", 8),
        ("GUNICORN_THREADS", "16", "threads", 16),
        ("GUNICORN_WORKER_CLASS", "sync", "worker_class", "sync"),
        ("GUNICORN_WORKER_CLASS", "GTHREAD", "worker_class", "gthread"),
        ("GUNICORN_TIMEOUT", "120", "worker_timeout", 120),
        ("CONTEXT_STORE_HOME", "/var/lib/cs", "home", "/var/lib/cs"),
        ("MIGRATE_ON_START", "false", "migrate_on_start", False),
        ("MIGRATE_ON_START", "0", "migrate_on_start", False),
        ("MIGRATE_ON_START", "OFF", "migrate_on_start", False),
        ("MIGRATE_ON_START", "no", "migrate_on_start", False),
        ("MIGRATE_ON_START", "Yes", "migrate_on_start", True),
        ("MIGRATE_ON_START", "on", "migrate_on_start", True),
        ("MIGRATE_ON_START", "1", "migrate_on_start", True),
        ("DB_POOL_MIN_SIZE", "0", "pool_min_size", 0),
        ("DB_POOL_MAX_SIZE", "20", "pool_max_size", 20),
        ("DB_POOL_TIMEOUT", "2.5", "pool_timeout", 2.5),
        ("DB_POOL_CHECK", "true", "pool_check", True),
        ("DB_POOL_CHECK", "false", "pool_check", False),
        ("DB_POOL_CHECK_IDLE", "0", "pool_check_idle", 0.0),
        ("DB_POOL_CHECK_IDLE", "2.5", "pool_check_idle", 2.5),
        ("DB_CONNECT_TIMEOUT", "10", "connect_timeout", 10),
        ("DB_STATEMENT_TIMEOUT_MS", "0", "statement_timeout_ms", 0),
        ("DB_STATEMENT_TIMEOUT_MS", "2500", "statement_timeout_ms", 2500),
        ("DB_PREPARE_THRESHOLD", "0", "prepare_threshold", 0),
        ("DB_PREPARE_THRESHOLD", "12", "prepare_threshold", 12),
        ("DB_PREPARE_THRESHOLD", "none", "prepare_threshold", None),
        ("DB_PREPARE_THRESHOLD", "None", "prepare_threshold", None),
        ("DB_PREPARE_THRESHOLD", "off", "prepare_threshold", None),
        ("DB_PREPARE_THRESHOLD", "disabled", "prepare_threshold", None),
        ("DB_PREPARE_THRESHOLD", "", "prepare_threshold", None),
        ("RETRY_AFTER_SECONDS", "7", "retry_after", 7),
        ("EMBEDDING_DIM", "384", "embedding_dim", 384),
        ("TOKENIZER_ENCODING", "cl100k_base", "tokenizer_encoding", "cl100k_base"),
        ("MAX_BODY_BYTES", "2048", "max_body_bytes", 2048),
        ("MAX_CONTENT_BYTES", "100", "max_content_bytes", 100),
        ("MAX_METADATA_BYTES", "2", "max_metadata_bytes", 2),
        ("MAX_BATCH_MESSAGES", "50", "max_batch_messages", 50),
        ("MAX_PAGE_SIZE", "25", "max_page_size", 25),
        ("MAX_LINEAGE_DEPTH", "8", "max_lineage_depth", 8),
        ("LOG_LEVEL", "DEBUG", "log_level", "debug"),
        ("LOG_LEVEL", " warning ", "log_level", "warning"),
        ("LOG_LEVEL", "error", "log_level", "error"),
        ("CLIENT_HEADER_TIMEOUT", "2.5", "client_header_timeout", 2.5),
        ("CLIENT_BODY_TIMEOUT", "4", "client_body_timeout", 4.0),
        ("GUNICORN_WORKER_CLASS", "gthread-stock", "worker_class", "gthread-stock"),
        ("AUTH_CACHE_TTL_SECONDS", "0", "auth_cache_ttl", 0.0),
        ("AUTH_CACHE_TTL_SECONDS", "5", "auth_cache_ttl", 5.0),
        ("AUTH_CACHE_TTL_SECONDS", "0.5", "auth_cache_ttl", 0.5),
        ("DB_PROBE_INTERVAL_MS", "100", "probe_interval_ms", 100),
        ("TOKENIZER_LOAD_TIMEOUT", "0.5", "tokenizer_load_timeout", 0.5),
        ("IDEMPOTENCY_TTL_HOURS", "48", "idempotency_ttl_hours", 48),
        ("LOG_FORMAT", "JSON", "log_format", "json"),
        ("CORS_ALLOW_ORIGINS", "https://a.example", "cors_allow_origins", ("https://a.example",)),
        ("DB_POOLER", "pgbouncer-transaction", "db_pooler", "pgbouncer-transaction"),
        ("DB_POOLER", " None ", "db_pooler", "none"),
        ("DATABASE_REPLICA_URLS", "postgresql://r1/x, postgresql://r2/x", "database_replica_urls",
         ("postgresql://r1/x", "postgresql://r2/x")),
        ("DATABASE_REPLICA_URLS", " ", "database_replica_urls", ()),
        ("REPLICA_MAX_LAG_MS", "0", "replica_max_lag_ms", 0),
        ("REPLICA_WAIT_MS", "250", "replica_wait_ms", 250),
        ("DATABASE_MIGRATION_URL", "postgresql://owner@db/cs", "database_migration_url", "postgresql://owner@db/cs"),
    ],
)
def test_each_variable_is_parsed_into_its_field(variable, raw, field, expected):
    settings = Settings.from_env({variable: raw})
    assert getattr(settings, field) == expected
    assert type(getattr(settings, field)) is type(expected)


def test_every_variable_of_the_table_is_exercised_by_the_parsing_test():
    # Keeps the parametrized table above complete when a variable is added.
    source = Path(__file__).read_text(encoding="utf-8")
    missing = [v for v in ALL_VARIABLES if f'("{v}", ' not in source]
    assert missing == []


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("PORT", "abc"),
        ("PORT", "0"),
        ("PORT", "65536"),
        ("PORT", "80.5"),
        ("WEB_CONCURRENCY", "0"),
        ("WEB_CONCURRENCY", "65"),
        ("GUNICORN_THREADS", "0"),
        ("GUNICORN_TIMEOUT", "1"),
        ("HOST", "   "),
        ("CONTEXT_STORE_HOME", ""),
        ("MIGRATE_ON_START", "sometimes"),
        ("DB_POOL_MIN_SIZE", "-1"),
        ("DB_POOL_MAX_SIZE", "0"),
        ("DB_POOL_TIMEOUT", "x"),
        ("DB_POOL_TIMEOUT", "0"),
        ("DB_POOL_TIMEOUT", "301"),
        ("DB_POOL_CHECK", "maybe"),
        ("DB_PROBE_INTERVAL_MS", "5"),
        ("TOKENIZER_LOAD_TIMEOUT", "0"),
        ("DB_CONNECT_TIMEOUT", "0"),
        ("DB_STATEMENT_TIMEOUT_MS", "-5"),
        ("DB_PREPARE_THRESHOLD", "sometimes"),
        ("DB_PREPARE_THRESHOLD", "1001"),
        ("RETRY_AFTER_SECONDS", "0"),
        ("EMBEDDING_DIM", "0"),
        ("EMBEDDING_DIM", "16001"),
        ("TOKENIZER_ENCODING", " "),
        ("MAX_BODY_BYTES", "1023"),
        ("MAX_CONTENT_BYTES", "0"),
        ("MAX_METADATA_BYTES", "1"),
        ("MAX_BATCH_MESSAGES", "0"),
        ("MAX_PAGE_SIZE", "zero"),
        ("LOG_LEVEL", "loud"),
        ("DATABASE_URL", "mysql://user@db/cs"),
        ("DATABASE_URL", "host=localhost dbname=cs"),
        ("AUTH_CACHE_TTL_SECONDS", "5.1"),
        ("AUTH_CACHE_TTL_SECONDS", "-1"),
        ("AUTH_CACHE_TTL_SECONDS", "soon"),
        ("TEXT_SEARCH_CONFIG", "a;b"),
        ("SEARCH_EXACT_MAX", "-1"),
        ("SEARCH_EF_SEARCH", "0"),
        ("SEARCH_MAX_SCAN_TUPLES", "0"),
        ("EMBEDDINGS_URL", "ftp://x"),
        ("EMBEDDINGS_MODEL", " "),
        ("EMBEDDINGS_API_KEY", " "),
        ("EMBEDDINGS_TIMEOUT", "0"),
        ("EMBEDDINGS_BATCH_SIZE", "0"),
        ("EMBEDDINGS_MAX_RPS", "0"),
        ("DATABASE_REPLICA_URLS", "postgresql://r1/x,mysql://r2/x"),
        ("REPLICA_MAX_LAG_MS", "-1"),
        ("REPLICA_WAIT_MS", "10001"),
        ("DATABASE_MIGRATION_URL", "http://db/cs"),
    ],
)
def test_a_bad_value_raises_config_error_naming_the_variable(variable, raw):
    with pytest.raises(ConfigError, match=rf"\b{variable}\b") as info:
        Settings.from_env({variable: raw})
    assert isinstance(info.value, ValueError)
    # One line, fit for the CLI to print as is.
    assert "\n" not in str(info.value)


def test_a_bad_replica_list_is_quoted_with_every_password_redacted():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_REPLICA_URLS": "postgresql://a:p1@h/x,mysql://b:p2@h2/x"})
    assert str(info.value) == (
        "invalid DATABASE_REPLICA_URLS='postgresql://a:***@h/x,mysql://b:***@h2/x': expected a postgresql:// URL"
    )


def test_config_error_message_quotes_the_bad_value_and_the_expectation():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"PORT": "abc"})
    assert str(info.value) == "invalid PORT='abc': expected an integer"


def test_config_error_names_the_first_bad_variable_and_not_a_good_one():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"HOST": "127.0.0.1", "LOG_LEVEL": "loud"})
    assert "LOG_LEVEL" in str(info.value)
    assert "HOST" not in str(info.value)


@pytest.mark.parametrize("raw", ["", "   "])
def test_an_empty_database_url_means_the_embedded_database(raw):
    settings = Settings.from_env({"DATABASE_URL": raw})
    assert settings.database_url is None
    assert settings.uses_embedded_database is True


def test_a_database_url_means_no_embedded_database():
    settings = Settings.from_env({"DATABASE_URL": "postgresql://db/cs"})
    assert settings.uses_embedded_database is False


def test_pool_min_size_above_max_size_is_refused_naming_both():
    with pytest.raises(ConfigError, match=r"DB_POOL_MIN_SIZE") as info:
        Settings.from_env({"DB_POOL_MIN_SIZE": "5", "DB_POOL_MAX_SIZE": "4"})
    assert "DB_POOL_MAX_SIZE" in str(info.value)


def test_pool_min_size_equal_to_max_size_is_accepted():
    settings = Settings.from_env({"DB_POOL_MIN_SIZE": "4", "DB_POOL_MAX_SIZE": "4"})
    assert (settings.pool_min_size, settings.pool_max_size) == (4, 4)


def test_pool_min_size_above_the_default_max_size_is_refused():
    with pytest.raises(ConfigError, match=r"DB_POOL_MIN_SIZE"):
        Settings.from_env({"DB_POOL_MIN_SIZE": "5"})


@pytest.mark.parametrize(
    "environ",
    [
        {"DB_STATEMENT_TIMEOUT_MS": "30000"},
        {"DB_STATEMENT_TIMEOUT_MS": "30001"},
        {"DB_STATEMENT_TIMEOUT_MS": "5000", "GUNICORN_TIMEOUT": "5"},
        {"DB_STATEMENT_TIMEOUT_MS": "9000", "GUNICORN_TIMEOUT": "5"},
    ],
)
def test_a_statement_timeout_not_below_the_worker_timeout_is_refused(environ):
    with pytest.raises(ConfigError, match=r"DB_STATEMENT_TIMEOUT_MS") as info:
        Settings.from_env(environ)
    assert "GUNICORN_TIMEOUT" in str(info.value)


def test_a_statement_timeout_just_below_the_worker_timeout_is_accepted():
    settings = Settings.from_env({"DB_STATEMENT_TIMEOUT_MS": "4999", "GUNICORN_TIMEOUT": "5"})
    assert settings.statement_timeout_ms == 4999
    assert settings.worker_timeout == 5


def test_direct_construction_skips_validation_but_from_env_checks_cross_field_rules():
    # The dataclass itself is a plain value; the rules live in from_env.
    assert Settings(pool_min_size=9, pool_max_size=1).pool_min_size == 9
    with pytest.raises(ConfigError):
        Settings.from_env({"DB_POOL_MIN_SIZE": "9", "DB_POOL_MAX_SIZE": "1"})


def test_settings_are_immutable():
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_home_path_expands_the_user_and_resolves(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = Settings.from_env({"CONTEXT_STORE_HOME": "~/store/../cs"})
    assert settings.home_path == (tmp_path / "cs").resolve()
    assert settings.home_path.is_absolute()


def test_variables_lists_every_settings_field_once():
    listed = variables()
    field_names = [f.name for f in fields(Settings)]
    assert len(listed) == len(field_names)
    names = [variable for variable, _default in listed]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", name) for name in names)
    # Every field is reachable from exactly one variable.
    spec_fields = [field for field, _variable, _parse in config._SPEC]
    assert sorted(spec_fields) == sorted(field_names)


def test_variables_report_the_settings_defaults():
    defaults = {f.name: f.default for f in fields(Settings)}
    listed = dict(variables())
    for field, variable, _parse in config._SPEC:
        assert listed[variable] == defaults[field], variable
    assert listed["PORT"] == 8000
    assert listed["DATABASE_URL"] is None
    assert listed["LOG_LEVEL"] == "info"


def test_each_listed_variable_changes_its_setting():
    # A variable listed by variables() but ignored by from_env would fail here.
    samples = {
        "DATABASE_URL": "postgresql://db/x",
        "HOST": "localhost",
        "ALLOW_OPEN_ACCESS": "true",
        "PORT": "1234",
        "WEB_CONCURRENCY": "3",
        "GUNICORN_THREADS": "5",
        "GUNICORN_WORKER_CLASS": "sync",
        "GUNICORN_TIMEOUT": "31",
        "CONTEXT_STORE_HOME": "/elsewhere",
        "MIGRATE_ON_START": "false",
        "DB_POOL_MIN_SIZE": "2",
        "DB_POOL_MAX_SIZE": "5",
        "DB_POOL_TIMEOUT": "6",
        "DB_POOL_CHECK": "false",
        "DB_POOL_CHECK_IDLE": "0",
        "DB_CONNECT_TIMEOUT": "6",
        "DB_STATEMENT_TIMEOUT_MS": "11000",
        "DB_PREPARE_THRESHOLD": "none",
        "RETRY_AFTER_SECONDS": "3",
        "EMBEDDING_DIM": "3",
        "TOKENIZER_ENCODING": "cl100k_base",
        "MAX_BODY_BYTES": "4096",
        "MAX_CONTENT_BYTES": "7",
        "MAX_METADATA_BYTES": "9",
        "MAX_BATCH_MESSAGES": "11",
        "MAX_PAGE_SIZE": "13",
        "MAX_LINEAGE_DEPTH": "3",
        "LOG_LEVEL": "debug",
        "CLIENT_HEADER_TIMEOUT": "3",
        "CLIENT_BODY_TIMEOUT": "4",
        "AUTH_CACHE_TTL_SECONDS": "1",
        "DB_PROBE_INTERVAL_MS": "1000",
        "TOKENIZER_LOAD_TIMEOUT": "1",
        "IDEMPOTENCY_TTL_HOURS": "25",
        "LOG_FORMAT": "json",
        "CORS_ALLOW_ORIGINS": "*",
        "TEXT_SEARCH_CONFIG": "english",
        "SEARCH_EXACT_MAX": "5000",
        "SEARCH_EF_SEARCH": "300",
        "SEARCH_MAX_SCAN_TUPLES": "1000",
        "EMBEDDINGS_URL": "http://127.0.0.1:9/v1",
        "EMBEDDINGS_MODEL": "m",
        "EMBEDDINGS_API_KEY": "k",
        "EMBEDDINGS_TIMEOUT": "1",
        "EMBEDDINGS_BATCH_SIZE": "8",
        "EMBEDDINGS_MAX_RPS": "1",
        "DB_POOLER": "pgbouncer-transaction",
        "DATABASE_REPLICA_URLS": "postgresql://replica/x",
        "REPLICA_MAX_LAG_MS": "500",
        "REPLICA_WAIT_MS": "5",
        "DATABASE_MIGRATION_URL": "postgresql://owner@db/x",
    }
    assert sorted(samples) == sorted(name for name, _ in variables())
    default = Settings()
    for variable, raw in samples.items():
        changed = Settings.from_env({variable: raw})
        assert changed != default, variable


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.org"])
def test_a_non_loopback_host_is_a_valid_setting(host):
    # Whether it may be served open depends on the keys in the database and on the
    # real listeners, however bound: gunicorn's master checks that (service/auth.py).
    settings = Settings.from_env({"HOST": host})
    assert settings.host == host and not settings.allow_open_access


# --- redact_url -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://app:s3cret@db:5432/cs", "postgresql://app:***@db:5432/cs"),
        ("postgres://app:s3cret@db/cs?sslmode=require", "postgres://app:***@db/cs?sslmode=require"),
        ("postgresql://app@db/cs", "postgresql://app@db/cs"),
        ("postgresql://db/cs", "postgresql://db/cs"),
        ("postgresql://:s3cret@db/cs", "postgresql://:***@db/cs"),
        ("postgresql://app:p%40ss@db/cs", "postgresql://app:***@db/cs"),
        ("postgresql://app:p@ss@db/cs", "postgresql://app:***@db/cs"),
        ("postgresql://app:pa/ss@db/cs", "postgresql://***@db/cs"),
        ("postgresql://app:pa?ss@db/cs", "postgresql://***@db/cs"),
        ("postgresql://app:pa#ss@db/cs", "postgresql://***@db/cs"),
        ("postgresql:///cs?host=/run/pg&password=s3cret&port=5", "postgresql:///cs?host=/run/pg&password=***&port=5"),
        ("postgresql://db/cs?sslpassword=s3cret", "postgresql://db/cs?sslpassword=***"),
        ("postgresql://db/cs?PASSWORD=s3cret", "postgresql://db/cs?PASSWORD=***"),
        ("mysql://root:s3cret@db/cs", "mysql://root:***@db/cs"),
        ("root:s3cret@db", "root:***@db"),
        ("host=db user=app password=s3cret dbname=cs", "host=db user=app password=*** dbname=cs"),
        ("host=db password = 's3 cr\\'et' dbname=cs", "host=db password = *** dbname=cs"),
        ("", ""),
    ],
)
def test_redact_url_hides_every_password_and_keeps_the_rest(url, redacted):
    assert redact_url(url) == redacted
    assert "s3cret" not in redact_url(url) and "s3 cr" not in redact_url(url)


def test_an_invalid_database_url_is_reported_without_its_password():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_URL": "mysql://root:hunter2@db/cs"})
    assert str(info.value) == "invalid DATABASE_URL='mysql://root:***@db/cs': expected a postgresql:// URL"


def test_settings_repr_leaves_the_database_url_out():
    settings = Settings.from_env({"DATABASE_URL": "postgresql://app:hunter2@db/cs"})
    assert "hunter2" not in repr(settings) and "database_url" not in repr(settings)
    assert settings.database_url == "postgresql://app:hunter2@db/cs"


def test_json_log_lines_carry_the_request_fields_and_escape_nothing_twice():
    import logging

    import orjson

    from service.logs import JsonFormatter

    record = logging.LogRecord("context_store.access", logging.INFO, __file__, 1, "GET %s 200", ("/v1/x",), None)
    record.request_id, record.method, record.path, record.status = "abc", "GET", "/v1/x\\x0a", 200
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "GET /v1/x 200"
    assert (line["request_id"], line["method"], line["path"], line["status"]) == ("abc", "GET", "/v1/x\\x0a", 200)
    assert line["level"] == "info" and line["logger"] == "context_store.access" and "duration_ms" not in line
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("context_store", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in orjson.loads(JsonFormatter().format(failed))["traceback"]
def test_a_transaction_pooler_turns_prepared_statements_off():
    settings = Settings.from_env({"DB_POOLER": "pgbouncer-transaction"})
    assert settings.prepare_threshold is None
    explicit = Settings.from_env({"DB_POOLER": "pgbouncer-transaction", "DB_PREPARE_THRESHOLD": "none"})
    assert explicit.prepare_threshold is None
    assert Settings.from_env({}).prepare_threshold == 5


def test_a_transaction_pooler_refuses_a_prepare_threshold_in_one_line():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DB_POOLER": "pgbouncer-transaction", "DB_PREPARE_THRESHOLD": "5"})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("invalid DB_PREPARE_THRESHOLD=5: DB_POOLER=pgbouncer-transaction")


def test_an_unknown_pooler_is_refused():
    with pytest.raises(ConfigError, match="invalid DB_POOLER='pgbouncer-session'"):
        Settings.from_env({"DB_POOLER": "pgbouncer-session"})
