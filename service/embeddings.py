"""An OpenAI-compatible embeddings client: POST {EMBEDDINGS_URL}/embeddings with
{"model": ..., "input": [texts]}, answered {"data": [{"index": i, "embedding": [...]}]}.

EMBEDDINGS_URL is a base URL as OpenAI's own clients take it
(`https://api.openai.com/v1`, `http://localhost:11434/v1`). The standard
library's urllib is enough for one JSON POST; no HTTP client dependency.

Search embeds one query per request, within EMBEDDINGS_TIMEOUT; after a failure
the endpoint counts as down for a while, so a search falls back to words at once
instead of waiting on a dead endpoint every time. The worker embeds batches and
retries by itself (service/worker.py). The API key is sent, never logged.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import orjson

from .config import Settings

# After a failed call, searches skip the endpoint for this long.
DOWN_FOR_SECONDS = 10.0
# /health reports the last outcome; with none this recent, it makes one call.
HEALTH_FRESH_SECONDS = 30.0


class EmbeddingsError(Exception):
    """The endpoint did not give embeddings. `retry_after`: seconds it asked to wait."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class EmbeddingsUnavailable(EmbeddingsError):
    """Worth retrying later: no connection, a time-out, 429 or 5xx."""


class EmbeddingsRejected(EmbeddingsError):
    """The endpoint refused this input (400, 413, 422): retrying it will not help."""


class EmbeddingsMisconfigured(EmbeddingsError):
    """Refused whatever the input (401, 403, 404), or vectors of the wrong dimension."""


@dataclass(frozen=True)
class EndpointStatus:
    status: str  # ok, unavailable
    checked_at: float  # time.monotonic()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the caller's own backoff applies
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class Embedder:
    """Calls one endpoint with one model; vectors must have `dim` dimensions."""

    def __init__(self, url: str, model: str, api_key: str | None, dim: int, timeout: float) -> None:
        self.endpoint = url.rstrip("/") + "/embeddings"
        self.model = model
        self.dim = dim
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._lock = threading.Lock()
        self._last: EndpointStatus | None = None
        self._down_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder | None:
        """The deployment's embedder, or None when EMBEDDINGS_URL is unset."""
        if settings.embeddings_url is None:
            return None
        return cls(settings.embeddings_url, settings.embeddings_model, settings.embeddings_api_key,
                   settings.embedding_dim, settings.embeddings_timeout)

    def embed(self, texts: list[str], timeout: float | None = None) -> list[list[float]]:
        """One call: an embedding per text, in order. Raises EmbeddingsUnavailable,
        EmbeddingsRejected or EmbeddingsMisconfigured; notes the outcome for /health."""
        try:
            vectors = self._call(texts, self.timeout if timeout is None else timeout)
        except (EmbeddingsUnavailable, EmbeddingsMisconfigured):
            self._note("unavailable")
            raise
        self._note("ok")
        return vectors

    def embed_query(self, text: str) -> list[float]:
        """The embedding of one search query within the query time-out; raises
        EmbeddingsUnavailable at once while the endpoint is believed down."""
        if time.monotonic() < self._down_until:
            raise EmbeddingsUnavailable("the embeddings endpoint failed moments ago")
        try:
            return self.embed([text])[0]
        except EmbeddingsError as exc:
            self._down_until = time.monotonic() + DOWN_FOR_SECONDS
            raise EmbeddingsUnavailable(str(exc), exc.status) from exc

    def status(self) -> str:
        """ok or unavailable: the last call's outcome, with one probe when none is
        recent (at most one call per HEALTH_FRESH_SECONDS, whoever asks)."""
        last = self._last
        now = time.monotonic()
        if last is not None and now - last.checked_at < HEALTH_FRESH_SECONDS:
            return last.status
        if not self._lock.acquire(blocking=False):
            return last.status if last is not None else "unknown"
        try:
            try:
                self.embed(["health"])
            except EmbeddingsRejected:
                self._note("ok")  # it answered
            except EmbeddingsError:
                pass
            return self._last.status if self._last is not None else "unknown"
        finally:
            self._lock.release()

    def _note(self, status: str) -> None:
        self._last = EndpointStatus(status, time.monotonic())

    def _call(self, texts: list[str], timeout: float) -> list[list[float]]:
        body = orjson.dumps({"model": self.model, "input": texts})
        request = urllib.request.Request(self.endpoint, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) only, checked by config)
                payload = response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            retry_after = _retry_after(exc.headers.get("Retry-After"))
            exc.close()
            message = f"the embeddings endpoint answered {status}"
            if status == 429 or status >= 500 or status == 408:
                raise EmbeddingsUnavailable(message, status, retry_after) from None
            if status in (400, 413, 422):
                raise EmbeddingsRejected(message, status) from None
            raise EmbeddingsMisconfigured(message, status) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EmbeddingsUnavailable(f"the embeddings endpoint is unreachable ({type(reason).__name__})") from None
        try:
            data = orjson.loads(payload)["data"]
            ordered = sorted(data, key=lambda item: item["index"])
            vectors = [item["embedding"] for item in ordered]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise EmbeddingsUnavailable("the embeddings endpoint answered something that is not embeddings") from exc
        if len(vectors) != len(texts):
            raise EmbeddingsUnavailable(f"asked for {len(texts)} embeddings, got {len(vectors)}")
        for vector in vectors:
            if not isinstance(vector, list) or len(vector) != self.dim:
                got = len(vector) if isinstance(vector, list) else type(vector).__name__
                raise EmbeddingsMisconfigured(
                    f"the model returns vectors of {got} dimensions but EMBEDDING_DIM is {self.dim}"
                )
        return vectors
