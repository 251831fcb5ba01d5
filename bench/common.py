"""What every module of the suite shares: paths, the loopback host, logging, number format."""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
RESULTS_MD = REPO / "bench" / "RESULTS.md"
HOST = "127.0.0.1"  # the suite never talks to anything else


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt_n(n: int) -> str:
    return f"{n:,}"
