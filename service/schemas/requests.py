"""Request schemas with one deployment's limits. They reject unknown fields and
parameters, and read an explicit null in an optional body field as the field's
absence (typed clients generated from the OpenAPI document send nulls)."""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from ..config import Settings
from ..limits import MAX_TOKEN_COUNT, MAX_VERSION, MAX_WINDOW_TOKENS, ROLES
from .fields import (
    VERSION_FROM_0,
    VERSION_FROM_1,
    Embedding,
    JsonObject,
    JsonObjectText,
    StrictInteger,
    StrictString,
    Timestamp,
    VersionCursor,
)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class Body(StrictSchema):
    """A request body: null in an optional field means the field is absent."""

    @post_load
    def _null_means_absent(self, data, **kwargs):
        return {key: value for key, value in data.items() if value is not None}


class PointInTime(StrictSchema):
    as_of_version = fields.Integer(
        validate=validate.Range(min=0, max=MAX_VERSION),
        metadata={"description": "read as of this version (0..head); not together with as_of"},
    )
    as_of = Timestamp(metadata={"description": "read as of this time (RFC 3339); not together with as_of_version"})

    @validates_schema
    def _one_of(self, data, **kwargs):
        if "as_of_version" in data and "as_of" in data:
            raise ValidationError("Give as_of_version or as_of, not both.", "as_of")


# Search (API.md): a query of 1..4096 characters, k of 1..100 results.
MAX_QUERY_CHARS = 4096
MAX_SEARCH_K = 100
DEFAULT_SEARCH_K = 10

INCLUDE = {"validate": validate.OneOf(("embedding",)), "metadata": {"description": "embedding: add each message's"}}


class RequestSchemas:
    """The request schema classes (for the OpenAPI document) and one instance of
    each (for validation), built for one deployment's limits."""

    def __init__(self, settings: Settings) -> None:
        meta_limit = {"max_bytes": settings.max_metadata_bytes}

        class MessageIn(Body):
            role = fields.String(required=True, validate=validate.OneOf(ROLES))
            content = StrictString(required=True, max_bytes=settings.max_content_bytes)
            token_count = StrictInteger(
                allow_none=True,
                validate=validate.Range(min=0, max=MAX_TOKEN_COUNT),
                metadata={"description": "counted by the server's tokenizer when absent or null"},
            )
            embedding = Embedding(dimension=settings.embedding_dim, allow_none=True)
            metadata = JsonObject(allow_none=True, **meta_limit)

        class ContextCreate(Body):
            metadata = JsonObject(allow_none=True, **meta_limit)

        class ContextPatch(StrictSchema):
            metadata = JsonObject(
                allow_none=True,
                metadata={"description": "JSON merge patch (RFC 7396) of the metadata; null empties it"},
                **meta_limit,
            )

        class AppendMessages(Body):
            messages = fields.List(
                fields.Nested(MessageIn),
                required=True,
                validate=validate.Length(min=1, max=settings.max_batch_messages),
            )

        class ForkCreate(Body):
            at_version = StrictInteger(
                allow_none=True,
                validate=validate.Range(min=0, max=MAX_VERSION),
                metadata={"description": "0..head; the head when absent or null"},
            )
            metadata = JsonObject(
                allow_none=True, metadata={"description": "a copy of the parent's when absent or null"}, **meta_limit
            )

        def limit_field() -> fields.Integer:
            return fields.Integer(
                load_default=min(100, settings.max_page_size), validate=validate.Range(1, settings.max_page_size)
            )

        class ListContextsQuery(StrictSchema):
            limit = limit_field()
            after = fields.String(metadata={"description": "a next_cursor of this listing"})
            metadata = JsonObjectText(
                metadata={"description": "URL-encoded JSON object, matched like jsonb @>"}, **meta_limit
            )

        class ContextQuery(PointInTime):
            pass

        class ListMessagesQuery(PointInTime):
            limit = limit_field()
            order = fields.String(load_default="asc", validate=validate.OneOf(("asc", "desc")))
            after = VersionCursor(
                pattern=VERSION_FROM_0, metadata={"description": "versions after this one (a next_cursor)"}
            )
            before = VersionCursor(
                pattern=VERSION_FROM_1, metadata={"description": "versions before this one (a next_cursor)"}
            )
            include = fields.String(**INCLUDE)

        class MessageQuery(StrictSchema):
            include = fields.String(**INCLUDE)

        class WindowQuery(PointInTime):
            max_tokens = fields.Integer(required=True, validate=validate.Range(1, MAX_WINDOW_TOKENS))
            pin_system = fields.Boolean(load_default=False)

        class NoQuery(StrictSchema):
            pass

        class SearchBody(Body):
            query = StrictString(
                allow_none=True, max_bytes=4 * MAX_QUERY_CHARS, validate=validate.Length(min=1, max=MAX_QUERY_CHARS),
                metadata={"description": "words, in websearch_to_tsquery syntax (\"a phrase\", or, -not)"},
            )
            embedding = Embedding(dimension=settings.embedding_dim, query=True, allow_none=True)
            k = StrictInteger(allow_none=True, validate=validate.Range(min=1, max=MAX_SEARCH_K),
                              metadata={"description": "how many results at most (default 10)"})
            roles = fields.List(
                fields.String(validate=validate.OneOf(ROLES)), allow_none=True, validate=validate.Length(min=1),
                metadata={"description": "only messages of these roles (default all)"},
            )

            @validates_schema
            def _something_to_search(self, data, **kwargs):
                if data.get("query") is None and data.get("embedding") is None:
                    raise ValidationError("Give a query, an embedding or both.", "query")

            @post_load
            def _default_k(self, data, **kwargs):
                if data.get("k") is None:
                    data["k"] = DEFAULT_SEARCH_K
                return data

        class SearchContext(SearchBody):
            as_of_version = StrictInteger(
                allow_none=True, validate=validate.Range(min=0, max=MAX_VERSION),
                metadata={"description": "search the view as of this version (0..head); not together with as_of"},
            )
            as_of = Timestamp(
                allow_none=True,
                metadata={"description": "search the view as of this time (RFC 3339); not with as_of_version"},
            )

            @validates_schema
            def _one_point_in_time(self, data, **kwargs):
                if data.get("as_of_version") is not None and data.get("as_of") is not None:
                    raise ValidationError("Give as_of_version or as_of, not both.", "as_of")

        class SearchTenant(SearchBody):
            metadata = JsonObject(
                allow_none=True, metadata={"description": "only contexts whose metadata contains this (jsonb @>)"},
                **meta_limit,
            )

        self.classes: dict[str, type[Schema]] = {
            cls.__name__: cls
            for cls in (
                MessageIn,
                ContextCreate,
                ContextPatch,
                AppendMessages,
                ForkCreate,
                ListContextsQuery,
                ContextQuery,
                ListMessagesQuery,
                MessageQuery,
                WindowQuery,
                NoQuery,
                SearchContext,
                SearchTenant,
            )
        }
        self.context_create = ContextCreate()
        self.context_patch = ContextPatch()
        self.append_messages = AppendMessages()
        self.fork_create = ForkCreate()
        self.list_contexts = ListContextsQuery()
        self.context_query = ContextQuery()
        self.list_messages = ListMessagesQuery()
        self.message_query = MessageQuery()
        self.window_query = WindowQuery()
        self.no_query = NoQuery()
        self.search_context = SearchContext()
        self.search_tenant = SearchTenant()
