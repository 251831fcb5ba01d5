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


def test_gunicorns_access_line_is_on_only_when_an_access_log_is_set():
    from gunicorn import glogging
    from gunicorn.config import Config

    from service.logs import GunicornLogger

    cfg = Config()
    logger = GunicornLogger(cfg)
    # What LOG_FORMAT=json gives gunicorn: a logging config, no access log.
    # (Set after the logger's setup, which would apply it to this process.)
    cfg.set("logconfig_dict", {"version": 1})
    assert glogging.Logger._compute_access_log_enabled(logger)  # gunicorn's own turns it on
    assert not logger._compute_access_log_enabled()
    cfg.set("accesslog", "-")
    assert logger._compute_access_log_enabled()


def test_the_service_uses_that_logger():
    import service.gunicorn_conf as conf

    assert conf.logger_class == "service.logs.GunicornLogger"
