"""If-Match parsing, timestamps, cursors, UUIDv7 ids and token counting."""

from __future__ import annotations

import base64
import logging
import re
import time
import uuid
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from service.errors import Invalid
from service.http import etag, parse_if_match
from service.ids import uuid7
from service.representations import decode_cursor, encode_cursor, timestamp
from service.tokens import ESTIMATE, estimate_tokens, load_tokenizer

UTC = timezone.utc


# --- If-Match -----------------------------------------------------------------


def test_no_if_match_header_accepts_any_version():
    assert parse_if_match(None) is None


@pytest.mark.parametrize("header", ["*", " * "])
def test_if_match_star_accepts_any_version(header):
    assert parse_if_match(header) is None


def test_if_match_with_one_strong_tag_accepts_that_version():
    assert parse_if_match('"3"') == [3]
    assert parse_if_match('"0"') == [0]


def test_if_match_accepts_the_tags_that_etag_produces():
    assert parse_if_match(etag(42)) == [42]


def test_a_weak_if_match_tag_never_matches():
    assert parse_if_match('W/"3"') == []


def test_if_match_with_a_list_accepts_each_listed_version():
    assert parse_if_match('"1", "2"') == [1, 2]
    assert parse_if_match('"1","2" ,  "7"') == [1, 2, 7]


def test_if_match_list_drops_weak_tags_and_keeps_strong_ones():
    assert parse_if_match('W/"1", "2"') == [2]


@pytest.mark.parametrize(
    "header",
    ["3", '"abc"', '"1",', "", '"-1"', "'3'", '"3" "4"', 'w/"3"', '"1234567890123456789"', '"1", *'],
)
def test_a_malformed_if_match_is_invalid_naming_the_header(header):
    with pytest.raises(Invalid) as info:
        parse_if_match(header)
    assert len(info.value.errors) == 1
    assert info.value.errors[0]["header"] == "If-Match"
    assert info.value.errors[0]["detail"]


# --- timestamps ---------------------------------------------------------------

_RFC3339_MICROS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def test_timestamp_has_six_fractional_digits_and_z_at_microsecond_zero():
    assert timestamp(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000000Z"


def test_timestamp_keeps_microseconds():
    assert timestamp(datetime(2026, 3, 4, 5, 6, 7, 89, tzinfo=UTC)) == "2026-03-04T05:06:07.000089Z"


def test_timestamp_converts_other_offsets_to_utc():
    plus_two = timezone(timedelta(hours=2))
    assert timestamp(datetime(2026, 1, 1, 1, 30, 0, 5, tzinfo=plus_two)) == "2025-12-31T23:30:00.000005Z"


@pytest.mark.parametrize("micro", [0, 1, 10, 999_999])
def test_timestamp_always_has_the_same_shape(micro):
    value = timestamp(datetime(2030, 12, 31, 23, 59, 59, micro, tzinfo=UTC))
    assert _RFC3339_MICROS.fullmatch(value), value


# --- cursors ------------------------------------------------------------------


def test_cursor_round_trips_position():
    created_at = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    context_id = uuid.UUID("0190c3a2-7b1e-7000-8000-000000000001")
    cursor = encode_cursor(created_at, context_id)
    assert decode_cursor(cursor) == (created_at, context_id)


def test_cursor_round_trips_a_non_utc_time_to_the_same_instant():
    created_at = datetime(2026, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    context_id = uuid7()
    decoded_at, decoded_id = decode_cursor(encode_cursor(created_at, context_id))
    assert decoded_at == created_at
    assert decoded_at.utcoffset() == timedelta(0)
    assert decoded_id == context_id


def test_cursor_is_url_safe_without_padding():
    for micro in range(0, 6):
        cursor = encode_cursor(datetime(2026, 1, 1, 0, 0, 0, micro, tzinfo=UTC), uuid7())
        assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor), cursor


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "not-a-cursor",
        "é",
        _b64(b"\xff\xfe\x00"),
        _b64(b"null"),
        _b64(b"[1, 2]"),
        _b64(b'"ab"'),
        _b64(b'["2026-01-01T00:00:00+00:00"]'),
        _b64(b'["2026-01-01T00:00:00+00:00", "not-a-uuid"]'),
        _b64(b'["yesterday", "0190c3a2-7b1e-7000-8000-000000000001"]'),
        _b64(b'["2026-01-01T00:00:00", "0190c3a2-7b1e-7000-8000-000000000001"]'),  # naive time
        _b64(b'["2026-01-01T00:00:00+00:00", "0190c3a2-7b1e-7000-8000-000000000001", 3]'),
    ],
)
def test_a_garbage_cursor_is_invalid_naming_the_after_parameter(cursor):
    with pytest.raises(Invalid) as info:
        decode_cursor(cursor)
    assert info.value.errors == [{"parameter": "after", "detail": "Not a cursor returned by this API."}]


def test_encode_cursor_stores_the_time_and_id_as_json():
    created_at = datetime(2026, 1, 1, tzinfo=UTC)
    context_id = uuid7()
    cursor = encode_cursor(created_at, context_id)
    raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert raw == ["2026-01-01T00:00:00+00:00", str(context_id)]


# --- UUIDv7 -------------------------------------------------------------------


def test_uuid7_has_version_7_and_the_rfc_4122_variant():
    for _ in range(100):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_uuid7_embeds_the_current_unix_milliseconds():
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after


def test_uuid7_is_time_ordered_across_calls():
    values = []
    for _ in range(5):
        values.append(uuid7())
        time.sleep(0.002)
    assert values == sorted(values)
    assert [str(v) for v in values] == sorted(str(v) for v in values)
    assert len(set(values)) == len(values)


def test_uuid7_values_are_unique_within_one_millisecond():
    values = {uuid7() for _ in range(2000)}
    assert len(values) == 2000


# --- tokens -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("abcdefgh", 2), ("é", 1), ("ééé", 2), ("😀", 1), ("😀😀x", 3)],
)
def test_estimate_tokens_is_utf8_bytes_over_four_rounded_up(text, expected):
    assert estimate_tokens(text) == expected


def test_load_tokenizer_counts_with_tiktoken():
    import tiktoken

    tokenizer = load_tokenizer("o200k_base", 10)
    if tokenizer.name != "tiktoken:o200k_base":
        pytest.skip("the o200k_base vocabulary cannot be had offline: set TIKTOKEN_CACHE_DIR (see the README)")
    assert tokenizer.name == "tiktoken:o200k_base"
    encoding = tiktoken.get_encoding("o200k_base")
    for text in ["hello world", "", "Bonjour, le monde! 😀", "def f(x):\n    return x * 2\n"]:
        assert tokenizer.count(text) == len(encoding.encode_ordinary(text))
    # Not the estimate: 11 bytes would estimate 3.
    assert tokenizer.count("hello world") == 2


def test_tiktoken_counter_treats_special_token_text_as_ordinary_text():
    tokenizer = load_tokenizer("o200k_base")
    assert tokenizer.count("<|endoftext|>") > 1


def test_load_tokenizer_falls_back_to_the_estimate_and_logs_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="context_store"):
        tokenizer = load_tokenizer("no_such_encoding")
    assert tokenizer.name == ESTIMATE == "estimate:utf8_bytes/4"
    assert tokenizer.count("abcdefgh") == 2
    assert tokenizer.count("hello world") == estimate_tokens("hello world")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "context_store"]
    assert len(warnings) == 1
    assert "no_such_encoding" in warnings[0].getMessage()
    assert ESTIMATE in warnings[0].getMessage()


def test_openapi_paths_carry_falcon_converters_as_schemas():
    from service.openapi import _path

    assert _path("/a/{v:int(min=1, max=9)}") == (
        "/a/{v}", [{"in": "path", "name": "v", "required": True,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 9}}])
    assert _path("/a/{v:int(3)}/{name}")[1][0]["schema"] == {"type": "integer"}  # num_digits: no bound
    assert _path("/a/{v:int(3)}/{name}")[1][1]["schema"] == {"type": "string"}


def test_metadata_rules_find_nul_in_lists_and_refuse_non_objects():
    from service.jsonvalues import metadata_problem

    assert metadata_problem({"a": ["ok", ["deep\x00"]]}, 1000) is not None
    assert metadata_problem([], 1000) == "Not a JSON object."
    assert metadata_problem({"a": ["ok", 1, None]}, 1000) is None


def test_a_timestamp_parameter_that_is_not_text_is_a_validation_error():
    from marshmallow import ValidationError

    from service.schemas.requests import PointInTime

    with pytest.raises(ValidationError):
        PointInTime().load({"as_of": 5})


def test_metadata_rules_walk_only_documents_that_may_hold_nul_and_measure_compact_size():
    from service.jsonvalues import NUL_MESSAGE, metadata_problem

    # The text \u0000 (a backslash, not the character) is walked and found harmless.
    assert metadata_problem({"a": "\\u0000", "n": [1, 2.5, True, None, {"k": "v"}]}, 1000) is None
    assert metadata_problem({"n": [1, {"k": "v\x00"}]}, 1000) == NUL_MESSAGE
    assert metadata_problem({"a": "x" * 20}, 20) == "Larger than 20 bytes of JSON."
    assert metadata_problem({"a": "x" * 20}, 28) is None  # {"a":"xxxxxxxxxxxxxxxxxxxx"} is 28 bytes


def test_metadata_deeper_than_the_limit_is_refused_before_it_is_serialized():
    from service.jsonvalues import metadata_problem
    from service.limits import MAX_JSON_DEPTH

    deep: dict = {}
    for _ in range(MAX_JSON_DEPTH):
        deep = {"d": deep}
    assert metadata_problem(deep, 10**6) == f"Nested deeper than {MAX_JSON_DEPTH} levels."
    assert metadata_problem(deep["d"], 10**6) is None
