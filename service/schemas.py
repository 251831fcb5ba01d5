"""marshmallow schemas: the single source of request validation and of the
OpenAPI document. Request schemas reject unknown fields; response schemas
describe what the resources emit (and the tests hold responses to them).

`Schemas(settings)` builds the request schemas with the deployment's limits.
`load_body` / `load_query` run one and turn its errors into `Invalid`, with RFC
6901 pointers for body fields and parameter names for query parameters.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from .config import Settings
from .errors import Invalid, MalformedBody

ROLES = ("system", "user", "assistant", "tool")
MAX_TOKEN_COUNT = 2**31 - 1
MAX_WINDOW_TOKENS = 10_000_000
MAX_VERSION = 2**62  # far past any head, well inside bigint
FLOAT32_MAX = 3.4028234663852886e38
_NUMBER_TYPES = {int, float}  # exact types: bool is an int subclass and is refused


MAX_JSON_DEPTH = 32  # orjson writes at most 254 levels; merge patches recurse per level


def json_depth(value: Any) -> int:
    """Levels of objects and arrays in a JSON value (iterative: no recursion limit)."""
    depth, level = 0, [value]
    while True:
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            return depth
        depth += 1
        level = [child for c in containers for child in (c.values() if isinstance(c, dict) else c)]


NUL_MESSAGE = "Contains U+0000, which PostgreSQL text and jsonb cannot store."


def has_nul(value: Any, serialized: bytes) -> bool:
    """Whether any string or key of a JSON value holds U+0000. orjson writes it as
    \\u0000, so only a document whose text contains that is walked."""
    if b"\\u0000" not in serialized:
        return False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class StrictInteger(fields.Integer):
    """A JSON integer: no strings, booleans or fractional numbers."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictString(fields.String):
    """A JSON string, at most max_bytes of UTF-8."""

    def __init__(self, *, max_bytes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_bytes = max_bytes

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if "\x00" in value:
            raise ValidationError(NUL_MESSAGE)
        # A str of n code points is at most 4n bytes: encode only when it might be over.
        if len(value) * 4 > self.max_bytes and len(value.encode("utf-8")) > self.max_bytes:
            raise ValidationError(f"Longer than {self.max_bytes} bytes of UTF-8.")
        return value


class JsonObject(fields.Dict):
    """A JSON object of at most max_bytes once serialized compactly."""

    def __init__(self, *, max_bytes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_bytes = max_bytes

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("Not a JSON object.")
        if json_depth(value) > MAX_JSON_DEPTH:
            raise ValidationError(f"Nested deeper than {MAX_JSON_DEPTH} levels.")
        raw = orjson.dumps(value)
        if len(raw) > self.max_bytes:
            raise ValidationError(f"Larger than {self.max_bytes} bytes of JSON.")
        if has_nul(value, raw):
            raise ValidationError(NUL_MESSAGE)
        return value


class Embedding(fields.Field):
    """A list of exactly `dimension` finite numbers that fit a float4."""

    def __init__(self, *, dimension: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dimension = dimension
        self.metadata.setdefault("description", f"exactly {dimension} finite numbers")

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, list):
            raise ValidationError("Not a list of numbers.")
        if len(value) != self.dimension:
            raise ValidationError(f"Expected {self.dimension} dimensions, got {len(value)}.")
        # Fast path at C speed (a batch can hold 250 x 1536 numbers); the loop
        # below only runs to name the offending item.
        if set(map(type, value)) <= _NUMBER_TYPES and max(map(abs, value), default=0) <= FLOAT32_MAX:
            return value
        for index, item in enumerate(value):
            if type(item) not in _NUMBER_TYPES:
                raise ValidationError(f"Item {index} is not a number.")
            if not math.isfinite(item) or abs(item) > FLOAT32_MAX:
                raise ValidationError(f"Item {index} is not a finite 32-bit float.")
        raise ValidationError("Not a list of finite numbers.")  # pragma: no cover - NaN only


class Timestamp(fields.AwareDateTime):
    """An RFC 3339 timestamp with an offset; a '+' that arrived as a space is forgiven."""

    def __init__(self, **kwargs) -> None:
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = value.replace(" ", "+")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class PointInTime(StrictSchema):
    as_of_version = fields.Integer(
        validate=validate.Range(min=0, max=MAX_VERSION), metadata={"description": "read as of this version (0..head)"}
    )
    as_of = Timestamp(metadata={"description": "read as of this time (RFC 3339)"})

    @validates_schema
    def _one_of(self, data, **kwargs):
        if "as_of_version" in data and "as_of" in data:
            raise ValidationError("Give as_of_version or as_of, not both.", "as_of")


# ---------------------------------------------------------------- requests


def build_message_in(settings: Settings) -> type[Schema]:
    class MessageIn(StrictSchema):
        role = fields.String(required=True, validate=validate.OneOf(ROLES))
        content = StrictString(required=True, max_bytes=settings.max_content_bytes)
        token_count = StrictInteger(
            validate=validate.Range(min=0, max=MAX_TOKEN_COUNT),
            metadata={"description": "counted by the server's tokenizer when omitted"},
        )
        embedding = Embedding(dimension=settings.embedding_dim, allow_none=True)
        metadata = JsonObject(max_bytes=settings.max_metadata_bytes)

    return MessageIn


def build_request_schemas(settings: Settings) -> dict[str, type[Schema]]:
    meta_limit = {"max_bytes": settings.max_metadata_bytes}
    message_in = build_message_in(settings)

    class ContextCreate(StrictSchema):
        metadata = JsonObject(**meta_limit)

    class ContextPatch(StrictSchema):
        metadata = JsonObject(
            allow_none=True,
            metadata={"description": "JSON merge patch (RFC 7396) of the metadata; null empties it"},
            **meta_limit,
        )

    class AppendMessages(StrictSchema):
        messages = fields.List(
            fields.Nested(message_in),
            required=True,
            validate=validate.Length(min=1, max=settings.max_batch_messages),
        )

    class ForkCreate(StrictSchema):
        at_version = StrictInteger(
            validate=validate.Range(min=0, max=MAX_VERSION), metadata={"description": "0..head, default head"}
        )
        metadata = JsonObject(metadata={"description": "default: a copy of the parent's"}, **meta_limit)

    def limit_field() -> fields.Integer:
        return fields.Integer(
            load_default=min(100, settings.max_page_size), validate=validate.Range(1, settings.max_page_size)
        )

    class ListContextsQuery(StrictSchema):
        limit = limit_field()
        after = fields.String(metadata={"description": "an opaque next_cursor"})
        metadata = fields.String(metadata={"description": "URL-encoded JSON object, matched like jsonb @>"})

    class ContextQuery(PointInTime):
        pass

    class ListMessagesQuery(PointInTime):
        limit = limit_field()
        order = fields.String(load_default="asc", validate=validate.OneOf(("asc", "desc")))
        after = fields.Integer(
            validate=validate.Range(min=0, max=MAX_VERSION), metadata={"description": "versions after this one"}
        )
        before = fields.Integer(
            validate=validate.Range(min=1, max=MAX_VERSION), metadata={"description": "versions before this one"}
        )
        include = fields.String(validate=validate.OneOf(("embedding",)))

    class MessageQuery(StrictSchema):
        include = fields.String(validate=validate.OneOf(("embedding",)))

    class WindowQuery(PointInTime):
        max_tokens = fields.Integer(required=True, validate=validate.Range(1, MAX_WINDOW_TOKENS))
        pin_system = fields.Boolean(load_default=False)

    class NoQuery(StrictSchema):
        pass

    return {
        "MessageIn": message_in,
        "ContextCreate": ContextCreate,
        "ContextPatch": ContextPatch,
        "AppendMessages": AppendMessages,
        "ForkCreate": ForkCreate,
        "ListContextsQuery": ListContextsQuery,
        "ContextQuery": ContextQuery,
        "ListMessagesQuery": ListMessagesQuery,
        "MessageQuery": MessageQuery,
        "WindowQuery": WindowQuery,
        "NoQuery": NoQuery,
    }


class Schemas:
    """Instances of the request schemas for one deployment's limits."""

    def __init__(self, settings: Settings) -> None:
        self.classes = build_request_schemas(settings)
        self._instances = {name: cls() for name, cls in self.classes.items()}

    def __getattr__(self, name: str) -> Schema:
        try:
            return self.__dict__["_instances"][name]
        except KeyError:
            raise AttributeError(name) from None


def _escape(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def _flatten(messages: Any, path: tuple[str, ...], out: list[tuple[tuple[str, ...], str]]) -> None:
    if isinstance(messages, dict):
        for key, value in messages.items():
            _flatten(value, path if key == "_schema" else (*path, _escape(key)), out)
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out.extend((path, message) for message in messages)
    elif isinstance(messages, list):
        for message in messages:
            _flatten(message, path, out)
    else:
        out.append((path, str(messages)))


def _errors(error: ValidationError) -> list[tuple[tuple[str, ...], str]]:
    out: list[tuple[tuple[str, ...], str]] = []
    _flatten(error.messages, (), out)
    return out


def load_body(schema: Schema, body: Any) -> dict[str, Any]:
    """Validate a parsed JSON body; raise Invalid with a pointer per error."""
    if not isinstance(body, dict):
        raise Invalid.pointer("", "The body must be a JSON object.")
    try:
        return schema.load(body)
    except ValidationError as exc:
        raise Invalid(
            [{"pointer": "".join(f"/{p}" for p in path), "detail": detail} for path, detail in _errors(exc)]
        ) from None


def load_query(schema: Schema, params: dict[str, Any]) -> dict[str, Any]:
    """Validate query parameters; raise Invalid naming each bad parameter."""
    try:
        return schema.load(params)
    except ValidationError as exc:
        raise Invalid(
            [{"parameter": path[0] if path else "", "detail": detail} for path, detail in _errors(exc)]
        ) from None


def parse_json(raw: bytes | str, what: str) -> Any:
    """orjson.loads, with MalformedBody naming what was not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"The {what} is not valid JSON: {exc}") from None


# ---------------------------------------------------------------- responses
# These describe the documents the resources build by hand (for speed); the
# OpenAPI document is generated from them and the API tests validate against it.


class ContextOut(Schema):
    id = fields.UUID(required=True)
    metadata = fields.Dict(required=True)
    parent_id = fields.UUID(required=True, allow_none=True)
    fork_version = fields.Integer(required=True, allow_none=True)
    head_version = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)
    created_at = fields.String(required=True, metadata={"format": "date-time"})
    updated_at = fields.String(required=True, metadata={"format": "date-time"})


class MessageOut(Schema):
    context_id = fields.UUID(required=True, metadata={"description": "the context physically holding it"})
    version = fields.Integer(required=True)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = fields.String(required=True)
    token_count = fields.Integer(required=True)
    metadata = fields.Dict(required=True)
    created_at = fields.String(required=True, metadata={"format": "date-time"})
    embedding = fields.List(
        fields.Float(), allow_none=True, metadata={"description": "only with include=embedding"}
    )


class ContextPage(Schema):
    data = fields.List(fields.Nested(ContextOut), required=True)
    has_more = fields.Boolean(required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class MessagePage(Schema):
    data = fields.List(fields.Nested(MessageOut), required=True)
    has_more = fields.Boolean(required=True)
    next_cursor = fields.String(required=True, allow_none=True)


class AppendResult(Schema):
    data = fields.List(fields.Nested(MessageOut), required=True)
    head_version = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)


class WindowOut(Schema):
    data = fields.List(fields.Nested(MessageOut), required=True)
    token_count = fields.Integer(required=True)
    max_tokens = fields.Integer(required=True)
    from_version = fields.Integer(required=True, allow_none=True)
    to_version = fields.Integer(required=True, allow_none=True)
    truncated = fields.Boolean(required=True)


class DatabaseHealth(Schema):
    status = fields.String(required=True, validate=validate.OneOf(("ok", "unavailable")))
    latency_ms = fields.Float()


class HealthOut(Schema):
    status = fields.String(required=True, validate=validate.OneOf(("ok", "unavailable")))
    database = fields.Nested(DatabaseHealth, required=True)
    version = fields.String(required=True)
    tokenizer = fields.String(required=True)
    auth = fields.String(required=True)


class ValidationIssue(Schema):
    pointer = fields.String(metadata={"description": "RFC 6901 pointer into the body"})
    parameter = fields.String(metadata={"description": "query parameter"})
    header = fields.String(metadata={"description": "request header"})
    detail = fields.String(required=True)


class ProblemOut(Schema):
    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    instance = fields.String(required=True)
    errors = fields.List(fields.Nested(ValidationIssue))
