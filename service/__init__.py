"""Context Store: versioned, forkable conversation storage for LLM applications."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("context-store")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"
