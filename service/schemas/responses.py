"""The documents the API returns, for the OpenAPI document (the resources build
them without marshmallow, for speed; the API tests hold every response to these)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from ..limits import ROLES


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


class SearchHit(Schema):
    message = fields.Nested(MessageOut, required=True)
    score = fields.Float(
        required=True,
        metadata={"description": "semantic: 1 - cosine distance; text: ts_rank normalized to 0..1 "
                                 "(rank / (rank + 1)); hybrid: sum of 1 / (60 + rank) over both rankings"},
    )


class SearchResult(Schema):
    data = fields.List(fields.Nested(SearchHit), required=True, metadata={"description": "best first, at most k"})
    mode = fields.String(
        required=True, validate=validate.OneOf(("text", "semantic", "hybrid")),
        metadata={"description": "how the results were ranked: text when the query could not be embedded"},
    )


class EmbeddingsHealth(Schema):
    status = fields.String(
        required=True, validate=validate.OneOf(("ok", "unavailable", "unknown", "disabled")),
        metadata={"description": "whether the embeddings endpoint answered lately; disabled without EMBEDDINGS_URL"},
    )
    backlog = fields.Integer(
        metadata={"description": "messages waiting for an embedding (counted up to 100000)"}
    )


class DatabaseHealth(Schema):
    status = fields.String(required=True, validate=validate.OneOf(("ok", "unavailable")))
    latency_ms = fields.Float(metadata={"description": "one round trip, when the database answered"})
    schema_version = fields.Integer(metadata={"description": "the last migration applied"})
    schema_expected = fields.Integer(metadata={"description": "the last migration this version of the code knows"})


class HealthOut(Schema):
    status = fields.String(required=True, validate=validate.OneOf(("ok", "unavailable")))
    detail = fields.String(metadata={"description": "why, when unavailable with a reachable database"})
    database = fields.Nested(DatabaseHealth, required=True)
    version = fields.String(required=True)
    tokenizer = fields.String(required=True)
    embeddings = fields.Nested(EmbeddingsHealth)
    auth = fields.String(
        required=True,
        validate=validate.OneOf(("enabled", "disabled", "unknown")),
        metadata={"description": "enabled: /v1 needs an API key; disabled: no key exists (open); unknown: database down or not migrated"},
    )


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
    errors = fields.List(fields.Nested(ValidationIssue), metadata={"description": "validation errors (422)"})
    head_version = fields.Integer(metadata={"description": "the current head, when If-Match failed (412)"})
