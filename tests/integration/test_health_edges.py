"""The embeddings backlog /health reports is counted once for threads asking
together: one that waited for another's count takes it instead of counting again."""

from __future__ import annotations

import threading
import time


class ObservedLock:
    """A lock that says when a thread starts waiting for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting = threading.Event()

    def __enter__(self) -> None:
        self.waiting.set()
        self.lock.acquire()

    def __exit__(self, *exc) -> None:
        self.lock.release()


def test_a_thread_that_waited_for_another_count_takes_its_result(store):
    health = store.health
    gate = ObservedLock()
    health._lock = gate
    answers: list[dict] = []
    gate.lock.acquire()  # another thread is counting
    asking = threading.Thread(target=lambda: answers.append(health.embeddings(5.0)))
    asking.start()
    assert gate.waiting.wait(5.0)
    health._backlog = (time.monotonic(), 42)  # what the other thread counted
    gate.lock.release()
    asking.join(5.0)
    # The database holds no waiting message: 42 is the other thread's count, taken as is.
    assert answers == [{"status": "disabled", "backlog": 42}]
