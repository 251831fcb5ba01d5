"""Searching by words while TEXT_SEARCH_CONFIG differs from the configuration
the messages were indexed with: queries are parsed as the index was, and the log
says so once."""

from __future__ import annotations

import logging


def test_words_are_searched_with_the_indexed_configuration_until_re_indexed(store, caplog):
    context = store.contexts.create("default", {})
    store.messages.append("default", context["id"], [{"role": "user", "content": "she runs", "token_count": 1}])
    search = store.search
    english = type(search)(search.db, dim=search.dim, text_search_config="english", exact_max=100,
                           ef_search=40, max_scan_tuples=1000, embedder=None)
    with caplog.at_level(logging.WARNING, logger="context_store"):
        # Parsed with english, "running" would stem to "run"; parsed as indexed, it does not match.
        assert english.in_context("default", context["id"], query="running", embedding=None, k=5).data == []
        assert len(english.in_context("default", context["id"], query="runs", embedding=None, k=5).data) == 1
    warnings = [r.getMessage() for r in caplog.records if "TEXT_SEARCH_CONFIG=english" in r.getMessage()]
    assert len(warnings) == 1 and "searching with 'simple'" in warnings[0]
