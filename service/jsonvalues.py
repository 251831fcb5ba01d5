"""Rules for JSON values that come from clients: parsing, depth, U+0000, size.

One metadata check (`metadata_problem`) serves every place metadata arrives: a
request body field and the list filter's query parameter."""

from __future__ import annotations

from typing import Any

import orjson

from .errors import MalformedBody
from .limits import MAX_JSON_DEPTH

NUL_MESSAGE = "Contains U+0000, which PostgreSQL text and jsonb cannot store."


def parse_json(raw: bytes | str, what: str) -> Any:
    """orjson.loads, with MalformedBody naming what was not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"The {what} is not valid JSON: {exc}") from None


def json_depth(value: Any) -> int:
    """Levels of objects and arrays in a JSON value (iterative: no recursion limit)."""
    depth, level = 0, [value]
    while True:
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            return depth
        depth += 1
        level = [child for c in containers for child in (c.values() if isinstance(c, dict) else c)]


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


def metadata_problem(value: Any, max_bytes: int) -> str | None:
    """Why a value cannot be metadata (None when it can): it must be a JSON object,
    at most MAX_JSON_DEPTH levels deep, at most max_bytes once serialized compactly,
    and free of U+0000."""
    if not isinstance(value, dict):
        return "Not a JSON object."
    if json_depth(value) > MAX_JSON_DEPTH:
        return f"Nested deeper than {MAX_JSON_DEPTH} levels."
    raw = orjson.dumps(value)
    if len(raw) > max_bytes:
        return f"Larger than {max_bytes} bytes of JSON."
    if has_nul(value, raw):
        return NUL_MESSAGE
    return None
