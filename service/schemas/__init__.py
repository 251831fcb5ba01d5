"""marshmallow schemas, the single source of request validation and of the
OpenAPI document: fields.py (JSON-typed fields), requests.py (request schemas
with a deployment's limits), loading.py (running them, errors as pointers),
responses.py (the documents the API returns)."""
