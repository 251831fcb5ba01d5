"""The slow-client settings: CLIENT_HEADER_TIMEOUT, CLIENT_BODY_TIMEOUT, and the
worker classes GUNICORN_WORKER_CLASS offers."""

from __future__ import annotations

import pytest

from service.config import ConfigError, Settings


def test_defaults_bound_a_head_to_5_s_and_a_stalled_body_to_10_s():
    settings = Settings.from_env({})
    assert settings.client_header_timeout == 5.0
    assert settings.client_body_timeout == 10.0
    assert settings.worker_class == "gthread"


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    [
        ("CLIENT_HEADER_TIMEOUT", "2.5", "client_header_timeout", 2.5),
        ("CLIENT_HEADER_TIMEOUT", " 300 ", "client_header_timeout", 300.0),
        ("CLIENT_BODY_TIMEOUT", "0.5", "client_body_timeout", 0.5),
        ("GUNICORN_WORKER_CLASS", "gthread-stock", "worker_class", "gthread-stock"),
    ],
)
def test_each_value_is_parsed(variable, raw, field, expected):
    assert getattr(Settings.from_env({variable: raw}), field) == expected


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("CLIENT_HEADER_TIMEOUT", "0"),
        ("CLIENT_HEADER_TIMEOUT", "301"),
        ("CLIENT_HEADER_TIMEOUT", "soon"),
        ("CLIENT_BODY_TIMEOUT", "0.1"),
        ("GUNICORN_WORKER_CLASS", "gevent"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(variable, raw):
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: raw})


def test_gunicorn_runs_the_deadline_worker_for_gthread():
    import importlib

    import service.gunicorn_conf as conf
    from service import runtime
    from service.config import Settings

    before = runtime.settings()
    try:
        for chosen, runs in (("gthread", "service.workers.DeadlineWorker"), ("gthread-stock", "gthread"),
                             ("sync", "sync")):
            runtime.use_settings(Settings(worker_class=chosen))
            assert importlib.reload(conf).worker_class == runs
    finally:
        runtime.use_settings(before)
        importlib.reload(conf)  # leave the module as the process's settings have it
