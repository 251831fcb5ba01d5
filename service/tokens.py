"""Token counting with tiktoken, or a documented estimate when no vocabulary loads.

tiktoken reads its vocabulary from TIKTOKEN_CACHE_DIR when set (offline machines
point it at a folder of cached files). Without one the service still starts and
counts ceil(UTF-8 bytes / 4), the usual rule of thumb for English text with BPE
vocabularies; /health reports which counter is active.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("context_store")

ESTIMATE = "estimate:utf8_bytes/4"


@dataclass(frozen=True)
class Tokenizer:
    """name: `tiktoken:<encoding>` or the estimate; count(text) -> tokens."""

    name: str
    count: Callable[[str], int]


def estimate_tokens(text: str) -> int:
    return (len(text.encode("utf-8")) + 3) // 4


def load_tokenizer(encoding: str) -> Tokenizer:
    """tiktoken's encoding when its vocabulary loads, else the estimate (logged)."""
    try:
        import tiktoken

        enc = tiktoken.get_encoding(encoding)
    except Exception as exc:  # unknown encoding, no vocabulary offline, corrupt cache
        log.warning(
            "tokenizer %s unavailable (%s: %s); counting tokens as %s",
            encoding,
            type(exc).__name__,
            exc,
            ESTIMATE,
        )
        return Tokenizer(ESTIMATE, estimate_tokens)

    def count(text: str) -> int:
        return len(enc.encode_ordinary(text))

    return Tokenizer(f"tiktoken:{encoding}", count)
