"""Running a request schema: marshmallow's nested error messages become Invalid,
one entry per error, with an RFC 6901 pointer (body) or a parameter name (query)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from marshmallow import Schema, ValidationError, fields, missing, validate

from ..errors import Invalid
from ..jsonvalues import metadata_problem
from .fields import Embedding, JsonObject, StrictInteger, StrictString
from .requests import Body, PointInTime


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
    quick = _cached(_quick_bodies, schema, quick_append_loader)
    loaded = None if quick is None else quick(body)
    if loaded is not None:
        return loaded
    try:
        return schema.load(body)
    except ValidationError as exc:
        raise Invalid(
            [{"pointer": "".join(f"/{p}" for p in path), "detail": detail} for path, detail in flatten(exc.messages)]
        ) from None


QuickBody = Callable[[dict[str, Any]], "dict[str, Any] | None"]
_quick_bodies: dict[int, tuple[Schema, QuickBody | None]] = {}
# The fields of a message an append may carry, in the schema's order.
_MESSAGE_FIELDS = {"role": fields.String, "content": StrictString, "token_count": StrictInteger,
                   "embedding": Embedding, "metadata": JsonObject}


def _only(field: fields.Field, kind: type) -> Any:
    """The field's one validator, when it has exactly one and of that kind."""
    checks = field.validators
    return checks[0] if len(checks) == 1 and type(checks[0]) is kind else None


def quick_append_loader(schema: Schema) -> QuickBody | None:
    """For the append body (`{"messages": [...]}`, schemas.requests), a loader of
    the common batch: messages of a role, a content and optionally a token count
    and metadata, each plainly valid. It returns what `schema.load` returns for
    them, or None for anything else (an embedding, a number written 3.0, any
    error), which marshmallow then loads and words as always. Loading a
    one-message body through marshmallow cost 30 us of the append's 71 (in one
    process, warm). None instead of a loader for a schema of another shape."""
    messages = schema.load_fields.get("messages")
    if (type(schema).__mro__[1] is not Body or set(schema.load_fields) != {"messages"}
            or type(messages) is not fields.List or type(messages.inner) is not fields.Nested):
        return None
    inner = messages.inner.schema
    if (type(inner).__mro__[1] is not Body or list(inner.load_fields) != list(_MESSAGE_FIELDS)
            or any(type(inner.load_fields[name]) is not kind for name, kind in _MESSAGE_FIELDS.items())):
        return None
    for hooks in (schema._hooks, inner._hooks):
        if any(attr != "_null_means_absent" for entries in hooks.values() for attr, *_ in entries):
            return None
    length = _only(messages, validate.Length)
    roles = _only(inner.load_fields["role"], validate.OneOf)
    counts = _only(inner.load_fields["token_count"], validate.Range)
    if length is None or roles is None or counts is None or inner.load_fields["content"].validators:
        return None
    if inner.load_fields["metadata"].validators or not (counts.min_inclusive and counts.max_inclusive):
        return None
    fewest, most = length.min, length.max
    choices = frozenset(roles.choices)
    low, high = counts.min, counts.max
    content_bytes = inner.load_fields["content"].max_bytes
    metadata_bytes = inner.load_fields["metadata"].max_bytes

    def load(body: dict[str, Any]) -> dict[str, Any] | None:
        batch = body.get("messages")
        if len(body) != 1 or type(batch) is not list or not fewest <= len(batch) <= most:
            return None
        out = []
        for message in batch:
            if type(message) is not dict:
                return None
            role, content = message.get("role"), message.get("content")
            if type(role) is not str or role not in choices or type(content) is not str or "\x00" in content:
                return None
            if len(content) * 4 > content_bytes and len(content.encode("utf-8")) > content_bytes:
                return None
            loaded = {"role": role, "content": content}
            known = 2
            if "token_count" in message:
                known += 1
                count = message["token_count"]
                if count is not None:
                    if type(count) is not int or not low <= count <= high:
                        return None
                    loaded["token_count"] = count
            if "embedding" in message:
                known += 1
                if message["embedding"] is not None:
                    return None
            if "metadata" in message:
                known += 1
                metadata = message["metadata"]
                if metadata is not None:
                    if type(metadata) is not dict or metadata_problem(metadata, metadata_bytes) is not None:
                        return None
                    loaded["metadata"] = metadata
            if len(message) != known:  # a key the schema does not know
                return None
            out.append(loaded)
        return {"messages": out}

    return load


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


def _cached(cache: dict[int, tuple[Schema, Any]], schema: Schema, build: Callable[[Schema], Any]) -> Any:
    """build(schema), made once per schema object."""
    entry = cache.get(id(schema))
    if entry is None or entry[0] is not schema:
        # The schema is kept in the entry, so its id cannot be reused by another.
        entry = cache[id(schema)] = (schema, build(schema))
    return entry[1]


def load_query(schema: Schema, params: dict[str, Any]) -> dict[str, Any]:
    """Validate query parameters; raise Invalid naming each bad parameter."""
    quick = _cached(_quick, schema, quick_loader)
    loaded = None if quick is None else quick(params)
    if loaded is not None:
        return loaded
    try:
        return schema.load(params)
    except ValidationError as exc:
        raise Invalid(
            [{"parameter": path[0] if path else "", "detail": detail} for path, detail in flatten(exc.messages)]
        ) from None
