"""Query strings loaded without building marshmallow's machinery: for what the
quick loader vouches for it gives exactly what the schema's load gives, and
everything else (bad values, repeated or unknown parameters, custom fields,
schema hooks) goes to marshmallow, whose errors are unchanged."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, post_load, validate

from service.config import Settings
from service.errors import Invalid
from service.schemas.loading import load_query, quick_loader
from service.schemas.requests import RequestSchemas

SCHEMAS = RequestSchemas(Settings())
QUERIES = ("list_messages", "window_query", "message_query", "no_query", "context_query", "list_contexts")

# Values near every edge the schemas have: ranges, choices, booleans, digits.
VALUES = st.one_of(
    st.integers(-2, 1_000_001).map(str),
    st.sampled_from(["", "+5", " 5", "5 ", "05", "1e3", "5.0", "99999999999999999999", "٣"]),
    st.sampled_from(["asc", "desc", "ASC", "embedding", "true", "false", "True", "1", "0", "yes"]),
    st.text(max_size=5),
)
NAMES = st.sampled_from(
    ["limit", "order", "after", "before", "include", "as_of_version", "as_of", "max_tokens", "pin_system",
     "metadata", "other"]
)


def _marshmallow(schema: Schema, params: dict) -> dict | str:
    try:
        return schema.load(params)
    except ValidationError:
        return "invalid"


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(QUERIES), params=st.dictionaries(NAMES, VALUES, max_size=4))
def test_the_quick_loader_gives_what_marshmallow_gives_or_leaves_it_to_marshmallow(name, params):
    schema = getattr(SCHEMAS, name)
    quick = quick_loader(schema)
    assert quick is not None  # every query schema of the service has one
    loaded = quick(params)
    if loaded is not None:
        assert loaded == _marshmallow(schema, params)


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("list_messages", {"order": "desc", "limit": "50"}, {"order": "desc", "limit": 50}),
        ("list_messages", {}, {"order": "asc", "limit": 100}),
        ("window_query", {"max_tokens": "2000"}, {"max_tokens": 2000, "pin_system": False}),
        ("window_query", {"max_tokens": "8000", "pin_system": "true"}, {"max_tokens": 8000, "pin_system": True}),
        ("message_query", {}, {}),
        ("context_query", {"as_of_version": "0"}, {"as_of_version": 0}),
        ("list_contexts", {"after": "x", "limit": "7"}, {"after": "x", "limit": 7}),
    ],
)
def test_the_requests_the_service_sees_most_are_loaded_quickly(name, params, expected):
    assert quick_loader(getattr(SCHEMAS, name))(params) == expected


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("list_messages", {"limit": "0"}),  # out of range: marshmallow words the error
        ("list_messages", {"order": "sideways"}),
        ("list_messages", {"limit": ["5", "6"]}),  # repeated parameter
        ("list_messages", {"after": "5"}),  # a custom field
        ("list_messages", {"unknown": "1"}),
        ("window_query", {}),  # a required one missing
        ("window_query", {"max_tokens": "10", "pin_system": "1"}),  # valid, but not how the quick path reads it
        ("window_query", {"max_tokens": "+10"}),
        ("context_query", {"as_of": "2026-01-01T00:00:00Z"}),
        ("list_contexts", {"metadata": "{}"}),
    ],
)
def test_what_the_quick_loader_cannot_vouch_for_is_left_to_marshmallow(name, params):
    assert quick_loader(getattr(SCHEMAS, name))(params) is None


def test_load_query_errors_are_marshmallows_and_name_the_parameter():
    with pytest.raises(Invalid) as caught:
        load_query(SCHEMAS.list_messages, {"limit": "0", "order": "desc"})
    assert [error["parameter"] for error in caught.value.errors] == ["limit"]
    with pytest.raises(Invalid) as caught:
        load_query(SCHEMAS.window_query, {"max_tokens": "5", "as_of_version": "1", "as_of": "2026-01-01T00:00:00Z"})
    assert [error["parameter"] for error in caught.value.errors] == ["as_of"]
    # Loaded by marshmallow, not the quick loader, yet the same answer.
    assert load_query(SCHEMAS.window_query, {"max_tokens": "10", "pin_system": "1"}) == {
        "max_tokens": 10, "pin_system": True
    }


def test_schemas_with_hooks_or_fields_the_quick_loader_does_not_know_always_go_to_marshmallow():
    class Hooked(Schema):
        limit = fields.Integer()

        @post_load
        def _double(self, data, **kwargs):
            return {key: value * 2 for key, value in data.items()}

    assert quick_loader(Hooked()) is None
    assert load_query(Hooked(), {"limit": "4"}) == {"limit": 8}

    class Computed(Schema):
        limit = fields.Integer(load_default=lambda: 3)

    assert quick_loader(Computed()) is None

    class Odd(Schema):
        nullable = fields.Integer(allow_none=True)
        sized = fields.String(validate=validate.Length(max=2))
        renamed = fields.Integer(data_key="other-name", validate=validate.Range(1, 9))
        plain = fields.String()

    quick = quick_loader(Odd())
    for params in ({"nullable": "1"}, {"sized": "ab"}, {"renamed": "1"}, {"other-name": "10"}):
        assert quick(params) is None
    assert quick({"other-name": "4", "plain": "p"}) == {"renamed": 4, "plain": "p"} == Odd().load(
        {"other-name": "4", "plain": "p"}
    )
