"""Running a request schema: marshmallow's nested error messages become Invalid,
one entry per error, with an RFC 6901 pointer (body) or a parameter name (query)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from marshmallow import Schema, ValidationError, fields, missing, validate

from ..errors import Invalid
from .requests import PointInTime


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


_DIGITS = re.compile(r"[0-9]{1,18}")
_KINDS = {fields.Integer: int, fields.String: str, fields.Boolean: bool}
# Schema-level validators the quick path may skip, with the reason: PointInTime's
# only looks at `as_of`, a Timestamp, which the quick path never vouches for.
_SKIPPABLE_HOOKS = {PointInTime._one_of}

QuickLoad = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def quick_loader(schema: Schema) -> QuickLoad | None:
    """A loader for the common query strings of `schema`, built once: for
    parameters that are all plain (an Integer written in digits, a Boolean
    written `true` or `false`, a String, each within its Range or OneOf), the
    dict `schema.load` returns for them; None for anything else, which
    marshmallow then loads (and words the errors of) as always. Building
    marshmallow's machinery per request cost 3-16 us; this costs about 1 us.
    None instead of a loader when the schema has hooks it cannot vouch for."""
    for hooks in schema._hooks.values():
        for attr, *_ in hooks:
            if getattr(type(schema), attr) not in _SKIPPABLE_HOOKS:
                return None
    plans: dict[str, tuple[str, type, Any, Any, frozenset | None] | None] = {}
    defaults: dict[str, Any] = {}
    required: list[str] = []
    for name, field in schema.load_fields.items():
        kind = _KINDS.get(type(field))
        low = high = choices = None
        for check in field.validators:
            if type(check) is validate.Range and check.min_inclusive and check.max_inclusive:
                low, high = check.min, check.max
            elif type(check) is validate.OneOf:
                choices = frozenset(check.choices)
            else:
                kind = None
        if callable(field.load_default):
            return None  # made afresh by marshmallow on every load
        if field.allow_none:
            kind = None
        plans[field.data_key or name] = None if kind is None else (name, kind, low, high, choices)
        if field.load_default is not missing:
            defaults[name] = field.load_default
        if field.required:
            required.append(name)

    def load(params: dict[str, Any]) -> dict[str, Any] | None:
        out = dict(defaults)
        for key, value in params.items():
            plan = plans.get(key)
            if plan is None or type(value) is not str:
                return None
            name, kind, low, high, choices = plan
            if kind is int:
                if _DIGITS.fullmatch(value) is None:
                    return None
                value = int(value)
                if (low is not None and value < low) or (high is not None and value > high):
                    return None
            elif kind is bool:
                if value != "true" and value != "false":
                    return None
                value = value == "true"
            elif choices is not None and value not in choices:
                return None
            out[name] = value
        for name in required:
            if name not in out:
                return None
        return out

    return load


_quick: dict[int, tuple[Schema, QuickLoad | None]] = {}


def load_query(schema: Schema, params: dict[str, Any]) -> dict[str, Any]:
    """Validate query parameters; raise Invalid naming each bad parameter."""
    entry = _quick.get(id(schema))
    if entry is None or entry[0] is not schema:
        # The schema is kept in the entry, so its id cannot be reused by another.
        entry = _quick[id(schema)] = (schema, quick_loader(schema))
    if entry[1] is not None:
        loaded = entry[1](params)
        if loaded is not None:
            return loaded
    try:
        return schema.load(params)
    except ValidationError as exc:
        raise Invalid(
            [{"parameter": path[0] if path else "", "detail": detail} for path, detail in flatten(exc.messages)]
        ) from None
