"""Token counting with tiktoken, or a documented estimate when no vocabulary loads.

tiktoken reads its vocabulary from TIKTOKEN_CACHE_DIR when set (offline machines
point it at a folder of cached files), else downloads it, with no time-out of its
own. Without a vocabulary in time the service still starts and counts
ceil(UTF-8 bytes / 4), the usual rule of thumb for English text with BPE
vocabularies; /health reports which counter is active.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("context_store")

ESTIMATE = "estimate:utf8_bytes/4"


@dataclass(frozen=True)
class Tokenizer:
    """name: `tiktoken:<encoding>` or the estimate; count(text) -> tokens."""

    name: str
    count: Callable[[str], int]


def estimate_tokens(text: str) -> int:
    return (len(text.encode("utf-8")) + 3) // 4


def load_tokenizer(encoding: str, timeout: float | None = None) -> Tokenizer:
    """tiktoken's encoding when its vocabulary loads within `timeout` seconds (None:
    however long it takes), else the estimate, logged in one line.

    The load runs in a daemon thread: on time-out it is left behind (a download
    cannot be interrupted) and its result, should it come, is ignored."""
    outcome: list[Any] = []

    def load() -> None:
        try:
            import tiktoken

            outcome.append(tiktoken.get_encoding(encoding))
        except Exception as exc:  # unknown encoding, no vocabulary offline, corrupt cache
            outcome.append(exc)

    loader = threading.Thread(target=load, name="tokenizer-load", daemon=True)
    loader.start()
    loader.join(timeout)
    if not outcome:
        log.warning(
            "tokenizer %s did not load within %gs (no vocabulary in TIKTOKEN_CACHE_DIR and no answer from "
            "its download); counting tokens as %s",
            encoding,
            timeout,
            ESTIMATE,
        )
        return Tokenizer(ESTIMATE, estimate_tokens)
    enc = outcome[0]
    if isinstance(enc, Exception):
        reason = str(enc).strip().splitlines()[0] if str(enc).strip() else ""
        log.warning(
            "tokenizer %s unavailable (%s: %s); counting tokens as %s",
            encoding,
            type(enc).__name__,
            reason,
            ESTIMATE,
        )
        return Tokenizer(ESTIMATE, estimate_tokens)

    def count(text: str) -> int:
        return len(enc.encode_ordinary(text))

    return Tokenizer(f"tiktoken:{encoding}", count)
