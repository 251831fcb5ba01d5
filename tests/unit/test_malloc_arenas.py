"""runtime.limit_malloc_arenas: the master caps glibc's malloc arenas before it
forks, so a worker's threads share two arenas instead of one each."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

from service import runtime

ROOT = Path(__file__).resolve().parents[2]

# Six threads alive at once, each allocating; then the number of malloc's heaps
# (arenas) from glibc's malloc_info.
PROBE = r"""
import ctypes, sys, tempfile, threading
from service import runtime
print(runtime.limit_malloc_arenas() if sys.argv[1] == "limit" else "-")
barrier = threading.Barrier(7)
kept = []
def work():
    kept.append([bytearray(3000) for _ in range(50)])
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
barrier.wait()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
fp = ctypes.c_void_p(libc.fopen(path.encode(), b"w"))
libc.malloc_info(0, fp)
libc.fclose(fp)
print(open(path).read().count("<heap nr="))
"""


def _heaps(mode: str, **env: str) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, env=environ, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    return out[0], int(out[1])


def test_threads_share_two_arenas_once_capped():
    assert _heaps("plain")[1] >= 7  # glibc's default: one arena per thread
    assert _heaps("limit") == ("True", 2)


def test_an_operators_malloc_arena_max_rules():
    assert _heaps("limit", MALLOC_ARENA_MAX="4") == ("False", 4)


def test_it_is_set_in_this_process_and_skipped_without_glibcs_mallopt(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert runtime.limit_malloc_arenas() is True

    class NoMallopt:
        def __init__(self, name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert runtime.limit_malloc_arenas() is False
