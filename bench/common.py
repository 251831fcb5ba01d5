"""What every module of the suite shares: paths, the loopback host, logging, number format."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
RESULTS_MD = REPO / "bench" / "RESULTS.md"
HOST = "127.0.0.1"  # the suite never talks to anything else


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt_n(n: int) -> str:
    return f"{n:,}"


def interrupt(signum, frame) -> None:
    """A SIGTERM handler: the suite stops as on Ctrl-C, through its cleanup."""
    raise KeyboardInterrupt


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored inside the block, their handlers restored after:
    a cleanup cut short by a second one would leave gunicorn and PostgreSQL
    running with no one left to stop them."""
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
