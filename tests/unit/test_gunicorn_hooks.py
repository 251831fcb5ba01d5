"""The gunicorn hooks a worker runs once its app is loaded."""

from __future__ import annotations

import gc


def test_a_loaded_worker_moves_its_long_lived_objects_out_of_the_collectors_way():
    import service.gunicorn_conf as conf

    gc.unfreeze()
    try:
        conf.post_worker_init(None)
        assert gc.get_freeze_count() > 1000
        assert gc.get_count()[0] < 100  # collected first, so garbage is not frozen with them
    finally:
        gc.unfreeze()
