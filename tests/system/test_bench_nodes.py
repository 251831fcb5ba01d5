"""`python -m bench.nodes` end to end, on a tiny budget: one and two `serve` nodes
through one PgBouncer in transaction mode, every request answered, every process
it started stopped."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_one_node_against_two_through_one_pgbouncer(tmp_path):
    if not (shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")):
        pytest.skip("no pgbouncer executable (apt-get install pgbouncer)")
    out = tmp_path / "nodes.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.nodes", "--size", "100", "--clients", "4", "--rounds", "1",
         "--duration", "0.3", "--loads", "mixed", "--out-dir", str(tmp_path), "--json", str(out)],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    cells = {cell["topology"]: cell for cell in report["cells"]}
    assert set(cells) == {"a", "b"}
    for cell in cells.values():
        assert cell["errors"] == 0 and cell["requests"] > 0
        assert sum(cell["per_node"].values()) == cell["requests"]
        # every request ran at least one transaction, and all of them through PgBouncer
        assert cell["pools"]["xacts"] >= cell["requests"]
    # (a) is node 1 alone; (b) splits the clients, and both nodes answered and worked
    assert cells["a"]["per_node"]["2"] == 0
    assert cells["b"]["per_node"]["1"] > 0 and cells["b"]["per_node"]["2"] > 0
    assert cells["b"]["cpu"]["node 2"] > 0
    assert "| mixed | 4 |" in done.stdout
    # nothing it started still listens: both nodes and PgBouncer are gone
    for port in (*report["node_ports"], report["pgbouncer_port"]):
        assert _refused(port)
