"""The metrics folder the gunicorn master prepares for its workers' samples."""

from __future__ import annotations

import os
from pathlib import Path

import falcon
import falcon.testing

from service import metrics


def test_the_master_makes_a_fresh_folder_and_removes_it_on_exit(monkeypatch):
    monkeypatch.setenv(metrics.VARIABLE, "")  # restored after the test, whatever prepare sets
    folder = metrics.prepare_multiprocess()
    assert os.environ[metrics.VARIABLE] == folder and Path(folder).is_dir()
    metrics.release_multiprocess(folder)
    assert not Path(folder).exists()


def test_a_folder_the_operator_names_is_emptied_of_old_samples_and_kept(monkeypatch, tmp_path):
    named = tmp_path / "samples"
    named.mkdir()
    (named / "counter_123.db").write_bytes(b"old")
    (named / "notes.txt").write_text("mine")
    monkeypatch.setenv(metrics.VARIABLE, str(named))
    assert metrics.prepare_multiprocess() == str(named)
    assert sorted(p.name for p in named.iterdir()) == ["notes.txt"]
    metrics.release_multiprocess(str(named))
    assert named.is_dir()


def test_a_worker_exit_needs_no_folder_in_a_single_process(monkeypatch):
    monkeypatch.delenv(metrics.VARIABLE, raising=False)
    metrics.worker_exited(12345)  # nothing to mark: no error


def test_a_request_that_never_started_is_not_counted():
    app = falcon.App(middleware=[metrics.RequestMetrics(lambda: {})])
    app.add_route("/x", type("R", (), {"on_get": lambda self, req, resp: None})())
    before = metrics.render()
    falcon.testing.TestClient(app).simulate_get("/x")
    assert b'route="/x"' not in metrics.render() and b'route="/x"' not in before


def test_threads_asking_together_make_the_instruments_once(monkeypatch):
    import threading
    import time

    made = []

    class Slow:  # as slow to build as it takes for another thread to ask
        def __init__(self):
            made.append(self)
            time.sleep(0.05)

    monkeypatch.setattr(metrics, "_instruments", None)
    monkeypatch.setattr(metrics, "Instruments", Slow)
    barrier = threading.Barrier(8)
    seen = []

    def ask():
        barrier.wait()
        seen.append(metrics.instruments())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and all(x is made[0] for x in seen)
