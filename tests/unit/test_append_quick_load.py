"""The append body's quick loader (service/schemas/loading.py): for every body it
either declines (None) or returns exactly what marshmallow's schema returns; it
never accepts a body the schema refuses, and it does take the common batches."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, post_load, validate

from service.config import Settings
from service.errors import Invalid
from service.limits import MAX_TOKEN_COUNT
from service.schemas import loading
from service.schemas.fields import Embedding, JsonObject, StrictInteger, StrictString
from service.schemas.loading import load_body, quick_append_loader
from service.schemas.requests import Body, RequestSchemas

LIMITS = Settings(max_content_bytes=64, max_metadata_bytes=64, max_batch_messages=3, embedding_dim=3)
SCHEMAS = RequestSchemas(LIMITS)
SCHEMA = SCHEMAS.append_messages
QUICK = quick_append_loader(SCHEMA)
REFUSED = object()

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, MAX_TOKEN_COUNT + 3), st.floats(allow_nan=False),
                    st.text(max_size=3))
contents = st.one_of(st.text(max_size=20), st.text(min_size=15, max_size=70), st.just("a\x00b"),
                     st.just("é" * 33), st.just("x" * 64), st.just("x" * 65), scalars)
token_counts = st.one_of(st.integers(-2, 10), st.just(MAX_TOKEN_COUNT), st.just(MAX_TOKEN_COUNT + 1),
                         st.just(3.0), st.just(True), st.none(), st.text(max_size=2))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5),
                                     st.just("\x00")),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                           max_leaves=12)
metadata = st.one_of(st.none(), st.dictionaries(st.text(max_size=4), json_values, max_size=4), json_values)
embeddings = st.one_of(st.none(), st.lists(st.floats(-2, 2), min_size=3, max_size=3), scalars)
messages = st.fixed_dictionaries(
    {},
    optional={"role": st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "robot"]), scalars),
              "content": contents, "token_count": token_counts, "metadata": metadata, "embedding": embeddings,
              "name": scalars},
)
bodies = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(messages, max_size=5)}),
    st.fixed_dictionaries({"messages": st.one_of(scalars, st.dictionaries(st.text(max_size=2), scalars))}),
    st.fixed_dictionaries({"messages": st.lists(messages, min_size=1, max_size=2)}, optional={"extra": scalars}),
    st.dictionaries(st.text(max_size=8), scalars, max_size=2),
)


def marshmallow(body):
    try:
        return SCHEMA.load(body)
    except ValidationError:
        return REFUSED


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_the_quick_loader_declines_or_agrees_with_marshmallow(body):
    quick = QUICK(body)
    if quick is not None:
        assert quick == marshmallow(body)


def test_the_common_batches_take_the_quick_way():
    valid = [
        {"messages": [{"role": "user", "content": "Hello"}]},
        {"messages": [{"role": "assistant", "content": "é" * 16, "token_count": 0, "metadata": {"k": [1, "v"]}},
                      {"role": "tool", "content": "", "token_count": None, "metadata": None, "embedding": None},
                      {"role": "system", "content": "x" * 64, "token_count": MAX_TOKEN_COUNT}]},
    ]
    for body in valid:
        assert QUICK(body) is not None
        assert QUICK(body) == SCHEMA.load(body)
    assert QUICK(valid[1])["messages"][1] == {"role": "tool", "content": ""}  # nulls are absences


@pytest.mark.parametrize("body", [
    {"messages": []},
    {"messages": [{"role": "user", "content": "x"}] * 4},
    {"messages": [{"role": "user", "content": "x", "embedding": [0.1, 0.2, 0.3]}]},  # marshmallow's to check
    {"messages": [{"role": "user", "content": "x", "token_count": 3.0}]},  # an integer to JSON Schema
    {"messages": [{"role": "user", "content": "x", "token_count": True}]},
    {"messages": [{"role": "user", "content": "x" * 65}]},
    {"messages": [{"role": "user", "content": "é" * 33}]},  # 66 bytes
    {"messages": [{"role": "user", "content": "a\x00b"}]},
    {"messages": [{"role": "user", "content": "x", "metadata": {"k": "\x00"}}]},
    {"messages": [{"role": "user", "content": "x", "metadata": {"k": "v" * 64}}]},
    {"messages": [{"role": "user", "content": "x", "name": "n"}]},
    {"messages": [{"role": "robot", "content": "x"}]},
    {"messages": [{"content": "x"}]},
    {"messages": [{"role": "user", "content": "x"}], "extra": 1},
    {"messages": ["x"]},
])
def test_anything_else_is_left_to_marshmallow_and_its_errors(body):
    assert QUICK(body) is None
    loaded = marshmallow(body)
    if loaded is REFUSED:
        with pytest.raises(Invalid):
            load_body(SCHEMA, body)
    else:
        assert load_body(SCHEMA, body) == loaded


def test_other_schemas_get_no_quick_loader():
    assert quick_append_loader(SCHEMAS.context_create) is None
    assert quick_append_loader(SCHEMAS.fork_create) is None

    # The append's shape with anything changed: a hook, a validator, a field.
    class Message(Body):
        role = fields.String(required=True)
        content = fields.String(required=True)

    class Append(Body):
        messages = fields.List(fields.Nested(Message), required=True)

    assert quick_append_loader(Append()) is None

    class Plain(Schema):
        messages = fields.List(fields.Nested(Message), required=True)

    assert quick_append_loader(Plain()) is None

    class Raw(Body):
        messages = fields.List(fields.Dict(), required=True)

    assert quick_append_loader(Raw()) is None


def test_load_body_builds_each_loader_once():
    loading._quick_bodies.clear()
    load_body(SCHEMA, {"messages": [{"role": "user", "content": "x"}]})
    load_body(SCHEMAS.context_create, {})
    entry = loading._quick_bodies[id(SCHEMA)]
    load_body(SCHEMA, {"messages": [{"role": "user", "content": "y"}]})
    assert loading._quick_bodies[id(SCHEMA)] is entry and entry[1] is not None
    assert loading._quick_bodies[id(SCHEMAS.context_create)][1] is None


def replica(*, hook=False, length=True, content_check=False, metadata_check=False, open_range=False):
    """The append schema's shape built by hand, with one thing changed on demand."""

    class Message(Body):
        role = fields.String(required=True, validate=validate.OneOf(["user"]))
        content = StrictString(required=True, max_bytes=8, validate=[validate.Length(max=4)] if content_check else [])
        token_count = StrictInteger(allow_none=True, validate=validate.Range(0, 9, max_inclusive=not open_range))
        embedding = Embedding(dimension=2, allow_none=True)
        metadata = JsonObject(allow_none=True, max_bytes=8, validate=[validate.Length(max=1)] if metadata_check else [])

        if hook:
            @post_load
            def _more(self, data, **kwargs):
                return data

    class Append(Body):
        messages = fields.List(fields.Nested(Message), required=True,
                               validate=validate.Length(min=1, max=2) if length else [])

    return Append()


def test_a_schema_of_the_append_shape_but_one_rule_gets_no_quick_loader():
    faithful = quick_append_loader(replica())
    assert faithful is not None and faithful({"messages": [{"role": "user", "content": "hi"}]}) is not None
    for changed in ({"hook": True}, {"length": False}, {"content_check": True}, {"metadata_check": True},
                    {"open_range": True}):
        assert quick_append_loader(replica(**changed)) is None, changed
