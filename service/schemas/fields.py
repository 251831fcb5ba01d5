"""marshmallow fields that accept exactly the JSON the API documents: no strings
for numbers, no booleans for integers, byte limits measured in UTF-8."""

from __future__ import annotations

import math
import re

from marshmallow import ValidationError, fields

from ..jsonvalues import NUL_MESSAGE, metadata_problem, parse_json
from ..limits import FLOAT32_MAX

_NUMBER_TYPES = {int, float}  # exact types: bool is an int subclass and is refused
# The square root of the smallest float4 subnormal (2**-149): a smaller number
# squares to zero in single precision.
_FLOAT32_SQRT_TINY = math.sqrt(2.0**-149)


class StrictInteger(fields.Integer):
    """A JSON integer: no strings or booleans. A number with a zero fraction (1.0)
    is an integer to JSON Schema, and so here."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictString(fields.String):
    """A JSON string without U+0000, at most max_bytes of UTF-8."""

    def __init__(self, *, max_bytes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_bytes = max_bytes
        # JSON Schema counts characters; every character is at least one byte.
        self.metadata.setdefault("maxLength", max_bytes)
        self.metadata.setdefault("pattern", "^[^\\u0000]*$")

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if "\x00" in value:
            raise ValidationError(NUL_MESSAGE)
        # A str of n code points is at most 4n bytes: encode only when it might be over.
        if len(value) * 4 > self.max_bytes and len(value.encode("utf-8")) > self.max_bytes:
            raise ValidationError(f"Longer than {self.max_bytes} bytes of UTF-8.")
        return value


# The OpenAPI document replaces a field marked so with a reference to its recursive
# JSON object schema (no U+0000 in any key or string, integers that fit 64 bits).
METADATA_MARK = "x-json-object"


class JsonObject(fields.Dict):
    """Metadata: a JSON object within the deployment's limits (jsonvalues.metadata_problem)."""

    def __init__(self, *, max_bytes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_bytes = max_bytes
        self.metadata.setdefault(METADATA_MARK, True)

    def _deserialize(self, value, attr, data, **kwargs):
        problem = metadata_problem(value, self.max_bytes)
        if problem is not None:
            raise ValidationError(problem)
        return value


class JsonObjectText(fields.String):
    """A query parameter holding metadata as URL-encoded JSON: parsed here (400
    when it is not JSON at all), then held to the same rules as a body's metadata."""

    def __init__(self, *, max_bytes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_bytes = max_bytes
        self.metadata.setdefault(METADATA_MARK, "text")

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        parsed = parse_json(text, f"{attr} parameter")
        problem = metadata_problem(parsed, self.max_bytes)
        if problem is not None:
            raise ValidationError(problem)
        return parsed


class Embedding(fields.List):
    """A list of exactly `dimension` finite numbers that fit a float4.

    With `query=True` (what a search compares by cosine distance) the vector
    must also have a direction: pgvector's cosine distance from a zero vector,
    or from one whose squared length overflows a float4, is NaN, which no score
    can carry."""

    def __init__(self, *, dimension: int, query: bool = False, **kwargs) -> None:
        super().__init__(
            fields.Float(metadata={"minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}),
            **kwargs,
        )
        self.dimension = dimension
        self.query = query
        self.metadata.setdefault("minItems", dimension)
        self.metadata.setdefault("maxItems", dimension)
        description = f"exactly {dimension} finite numbers (32-bit floats)"
        if query:
            description += (", not all zero, whose squared length (the sum of their squares) fits a 32-bit float: "
                            "cosine distance is undefined otherwise")
        self.metadata.setdefault("description", description)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, list):
            raise ValidationError("Not a list of numbers.")
        if len(value) != self.dimension:
            raise ValidationError(f"Expected {self.dimension} dimensions, got {len(value)}.")
        # Checked at C speed (a batch can hold 250 x 1536 numbers); only a bad list
        # is walked in Python, to name its first bad item.
        if not set(map(type, value)) <= _NUMBER_TYPES:
            index = next(i for i, item in enumerate(value) if type(item) not in _NUMBER_TYPES)
            raise ValidationError(f"Item {index} is not a number.")
        if max(map(abs, value), default=0) > FLOAT32_MAX or any(map(math.isnan, value)):
            index = next(i for i, item in enumerate(value) if not abs(item) <= FLOAT32_MAX)
            raise ValidationError(f"Item {index} is not a finite 32-bit float.")
        if self.query:
            # float4 arithmetic, as pgvector's: a square under its smallest
            # subnormal is 0 there, and a sum past FLOAT32_MAX is infinite.
            length = sum(x * x for x in value if abs(x) >= _FLOAT32_SQRT_TINY)
            if length == 0:
                raise ValidationError("A zero vector has no direction: cosine distance from it is undefined.")
            if length > FLOAT32_MAX:
                raise ValidationError(
                    "Its squared length overflows a 32-bit float: cosine distance from it is undefined."
                )
        return value


class Timestamp(fields.AwareDateTime):
    """An RFC 3339 timestamp with an offset; a '+' that arrived as a space is forgiven."""

    def __init__(self, **kwargs) -> None:
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = value.replace(" ", "+")
        return super()._deserialize(value, attr, data, **kwargs)


# Versions as strings of digits, at most 18 significant ones (below MAX_VERSION):
# the server accepts exactly what these patterns, published in the document, match.
VERSION_FROM_0 = "^0*[0-9]{1,18}$"
VERSION_FROM_1 = "^0*[1-9][0-9]{0,17}$"


class VersionCursor(fields.String):
    """A version given as a string of digits: what next_cursor holds, passed back as
    `after` or `before` exactly as it came."""

    def __init__(self, *, pattern: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pattern = re.compile(pattern)
        self.metadata.setdefault("pattern", pattern)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not self.pattern.fullmatch(text):
            raise ValidationError(f"Not a version: expected a next_cursor, digits matching {self.pattern.pattern}.")
        return int(text)
