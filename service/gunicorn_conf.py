"""gunicorn settings from the environment (the repository's gunicorn.conf.py
imports this module, so `gunicorn -c gunicorn.conf.py` and `context-store serve`
run the same configuration)."""

from service import runtime
from service.config import Settings

_settings = Settings.from_env()

bind = f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
workers = _settings.web_concurrency
worker_class = _settings.worker_class
threads = _settings.threads
timeout = _settings.worker_timeout
graceful_timeout = 10
keepalive = 5
preload_app = False  # each worker builds its app, and its pool, after fork
wsgi_app = "service.runtime:worker_app()"
accesslog = None  # the app logs one line per request, with its request id
loglevel = _settings.log_level
proc_name = "context-store"
# gunicorn 24+ opens a control socket at one path per user: several `serve`s on one
# machine would take it from each other. Nothing here uses it.
control_socket_disable = True


def on_starting(server):
    runtime.configure_logging(_settings.log_level)
    try:
        runtime.prepare_database(_settings)
    except runtime.StartupError as exc:
        # Before any listener or worker exists: exit with the operator's one line.
        runtime.release_database()
        raise SystemExit(runtime.report_startup_error(exc)) from None


def on_exit(server):
    runtime.release_database()


def worker_exit(server, worker):
    runtime.close_worker()
