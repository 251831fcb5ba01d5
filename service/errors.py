"""The errors the service raises on purpose. They know nothing of HTTP:
service/problems.py is the one place that maps them onto responses."""

from __future__ import annotations


class DomainError(Exception):
    """Base of the errors the service raises on purpose."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    """The addressed context or version does not exist for this tenant."""


class PreconditionFailed(DomainError):
    """A conditional write's precondition (If-Match) does not hold; nothing was written."""

    def __init__(self, detail: str, head_version: int) -> None:
        super().__init__(detail)
        self.head_version = head_version


class IdempotencyKeyInUse(DomainError):
    """Another request with the same Idempotency-Key is still running."""


class IdempotencyKeyReused(DomainError):
    """The Idempotency-Key answered a different request before."""


class Misconfigured(DomainError):
    """The service reaches its database in a way that cannot work; an operator
    must fix it (logged once, where it is found). A retry cannot cure it."""


class Unavailable(DomainError):
    """The database cannot be reached or did not answer in time."""


class MalformedBody(DomainError):
    """A body (or a JSON query parameter) that is not JSON at all."""


class Invalid(DomainError):
    """Well-formed input that breaks the rules: each error names where it is.

    errors: [{"pointer": "/messages/0/role" | "parameter": "limit" |
              "header": "If-Match", "detail": "..."}]
    """

    def __init__(self, errors: list[dict[str, str]], detail: str | None = None) -> None:
        super().__init__(detail or "The request is not valid; see errors.")
        self.errors = errors

    @classmethod
    def parameter(cls, name: str, detail: str) -> Invalid:
        return cls([{"parameter": name, "detail": detail}])

    @classmethod
    def pointer(cls, pointer: str, detail: str) -> Invalid:
        return cls([{"pointer": pointer, "detail": detail}])


