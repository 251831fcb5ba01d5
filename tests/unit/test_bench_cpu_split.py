"""bench/cpu_split.py's CPU accounting: a process group's CPU between two readings,
with processes that start or end in between (PostgreSQL starts a backend for each
new connection during a cell)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

# bench/ is not installed: it runs from the repository root, as here.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.cpu_split import _cpu, _spent  # noqa: E402


def test_a_process_started_between_readings_counts_from_zero():
    before = {1: (1.0, 0.5), 2: (2.0, 1.0)}
    after = {1: (1.5, 0.75), 3: (0.25, 0.125)}  # 3 started during the cell
    assert _spent(before, after) == (0.75, 0.375)


def test_a_reading_names_the_live_processes_and_skips_the_ended():
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    gone = psutil.Process(ended.pid)
    ended.wait()
    readings = _cpu([psutil.Process(os.getpid()), gone])
    assert list(readings) == [os.getpid()]
    user, system = readings[os.getpid()]
    assert user > 0 and system >= 0
