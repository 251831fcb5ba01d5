"""Running a request schema: marshmallow's nested error messages become Invalid,
one entry per error, with an RFC 6901 pointer (body) or a parameter name (query)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError

from ..errors import Invalid


def _escape(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def flatten(messages: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """(path, message) for every message of marshmallow's nested error structure;
    `_schema` (whole-object errors) adds no path segment."""
    out: list[tuple[tuple[str, ...], str]] = []
    stack = [(messages, path)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict):
            stack.extend((value, at if key == "_schema" else (*at, _escape(key))) for key, value in item.items())
        elif isinstance(item, list):
            stack.extend((value, at) for value in item)
        else:
            out.append((at, str(item)))
    return sorted(out)


def load_body(schema: Schema, body: Any) -> dict[str, Any]:
    """Validate a parsed JSON body; raise Invalid with a pointer per error."""
    if not isinstance(body, dict):
        raise Invalid.pointer("", "The body must be a JSON object.")
    try:
        return schema.load(body)
    except ValidationError as exc:
        raise Invalid(
            [{"pointer": "".join(f"/{p}" for p in path), "detail": detail} for path, detail in flatten(exc.messages)]
        ) from None


def load_query(schema: Schema, params: dict[str, Any]) -> dict[str, Any]:
    """Validate query parameters; raise Invalid naming each bad parameter."""
    try:
        return schema.load(params)
    except ValidationError as exc:
        raise Invalid(
            [{"parameter": path[0] if path else "", "detail": detail} for path, detail in flatten(exc.messages)]
        ) from None
