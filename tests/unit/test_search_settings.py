"""The search and embeddings settings: parsed, bounded, and the API key never shown."""

from __future__ import annotations

import pytest

from service.config import ConfigError, Settings

SAMPLES = {
    "TEXT_SEARCH_CONFIG": ("English", "english"),
    "SEARCH_EXACT_MAX": ("5000", 5000),
    "SEARCH_EF_SEARCH": ("300", 300),
    "SEARCH_MAX_SCAN_TUPLES": ("100000", 100_000),
    "EMBEDDINGS_URL": ("http://127.0.0.1:9/v1/", "http://127.0.0.1:9/v1"),
    "EMBEDDINGS_MODEL": ("nomic-embed-text", "nomic-embed-text"),
    "EMBEDDINGS_API_KEY": ("sk-secret", "sk-secret"),
    "EMBEDDINGS_TIMEOUT": ("0.5", 0.5),
    "EMBEDDINGS_BATCH_SIZE": ("16", 16),
    "EMBEDDINGS_MAX_RPS": ("0.5", 0.5),
}
FIELDS = {
    "TEXT_SEARCH_CONFIG": "text_search_config",
    "SEARCH_EXACT_MAX": "search_exact_max",
    "SEARCH_EF_SEARCH": "search_ef_search",
    "SEARCH_MAX_SCAN_TUPLES": "search_max_scan_tuples",
    "EMBEDDINGS_URL": "embeddings_url",
    "EMBEDDINGS_MODEL": "embeddings_model",
    "EMBEDDINGS_API_KEY": "embeddings_api_key",
    "EMBEDDINGS_TIMEOUT": "embeddings_timeout",
    "EMBEDDINGS_BATCH_SIZE": "embeddings_batch_size",
    "EMBEDDINGS_MAX_RPS": "embeddings_max_rps",
}


@pytest.mark.parametrize("variable", sorted(SAMPLES))
def test_each_search_variable_sets_its_setting(variable):
    raw, expected = SAMPLES[variable]
    settings = Settings.from_env({variable: raw})
    assert getattr(settings, FIELDS[variable]) == expected
    assert getattr(Settings(), FIELDS[variable]) != expected


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("TEXT_SEARCH_CONFIG", "english; drop table messages"),
        ("TEXT_SEARCH_CONFIG", "pg_catalog.english"),
        ("TEXT_SEARCH_CONFIG", ""),
        ("SEARCH_EXACT_MAX", "-1"),
        ("SEARCH_EF_SEARCH", "0"),
        ("SEARCH_EF_SEARCH", "1001"),
        ("SEARCH_MAX_SCAN_TUPLES", "0"),
        ("EMBEDDINGS_URL", "ftp://example.org/v1"),
        ("EMBEDDINGS_URL", "http://example.org/v1?key=1"),
        ("EMBEDDINGS_URL", "localhost:11434"),
        ("EMBEDDINGS_MODEL", "  "),
        ("EMBEDDINGS_API_KEY", ""),
        ("EMBEDDINGS_TIMEOUT", "0"),
        ("EMBEDDINGS_TIMEOUT", "61"),
        ("EMBEDDINGS_BATCH_SIZE", "0"),
        ("EMBEDDINGS_BATCH_SIZE", "2049"),
        ("EMBEDDINGS_MAX_RPS", "0"),
    ],
)
def test_a_bad_search_value_is_one_line_naming_the_variable(variable, raw):
    with pytest.raises(ConfigError, match=f"^invalid {variable}="):
        Settings.from_env({variable: raw})


def test_an_empty_embeddings_url_means_none():
    assert Settings.from_env({"EMBEDDINGS_URL": "  "}).embeddings_url is None


def test_the_embeddings_api_key_stays_out_of_the_settings_repr():
    settings = Settings.from_env({"EMBEDDINGS_API_KEY": "sk-very-secret"})
    assert "sk-very-secret" not in repr(settings)
