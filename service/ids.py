"""Time-ordered UUIDv7 ids (RFC 9562), so new rows land at the right edge of indexes."""

import os
import time
from uuid import UUID


def uuid7() -> UUID:
    """48 bits of Unix milliseconds, version 7, 74 random bits, RFC 4122 variant."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return UUID(int=value)
