"""gunicorn settings from the environment (the repository's gunicorn.conf.py
imports this module, so `gunicorn -c gunicorn.conf.py` and `context-store serve`
run the same configuration)."""

import gc
import importlib
import logging

from service import auth, metrics, runtime

_settings = runtime.settings()
_conninfo: str | None = None
_metrics_folder: str | None = None
# What a worker would otherwise import itself on its first request (the service's
# own modules, falcon, psycopg, marshmallow and apispec come with `runtime`): imported
# in the master, they are shared copy-on-write instead of held by every worker.
# prometheus_client picks its storage when imported, so only once on_starting has
# prepared the samples' folder.
_WORKER_IMPORTS = ("prometheus_client", "prometheus_client.multiprocess")

bind = f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"
workers = _settings.web_concurrency
# `gthread` is gunicorn's threaded worker with deadlines on slow clients (see
# service/workers.py); `gthread-stock` is gunicorn's own, kept for comparison.
worker_class = {
    "gthread": "service.workers.DeadlineWorker",
    "gthread-stock": "gthread",
    "sync": "sync",
}[_settings.worker_class]
threads = _settings.threads
# A threaded worker's heartbeat comes from its event loop, not its threads: this
# restarts a worker whose loop is stuck (or a sync worker stuck in a request).
# It does not bound a request's threads; DB_STATEMENT_TIMEOUT_MS, the pool's
# timeout and CLIENT_BODY_TIMEOUT do, and CLIENT_HEADER_TIMEOUT bounds a client
# before it gets a thread at all.
timeout = _settings.worker_timeout
graceful_timeout = 10
keepalive = 5
preload_app = False  # each worker builds its app, and its pool, after fork
wsgi_app = "service.runtime:worker_app()"
accesslog = None  # the app logs one line per request, with its request id
# gunicorn's own access line stays off with LOG_FORMAT=json's logging config too.
logger_class = "service.logs.GunicornLogger"
loglevel = _settings.log_level
if _settings.log_format == "json":
    # gunicorn's own lines (boot, worker exits) as JSON too: one format per stream.
    _json_stderr = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "service.logs.JsonFormatter"}},
        "handlers": {"console": _json_stderr, "error_console": _json_stderr},
        "root": {"handlers": ["console"], "level": _settings.log_level.upper()},
        "loggers": {
            "gunicorn.error": {"handlers": ["error_console"], "propagate": False, "qualname": "gunicorn.error"},
            "gunicorn.access": {"handlers": ["console"], "propagate": False, "qualname": "gunicorn.access"},
        },
    }
proc_name = "context-store"
# gunicorn 24+ opens a control socket at one path per user: several `serve`s on one
# machine would take it from each other. Nothing here uses it.
control_socket_disable = True


def on_starting(server):
    global _conninfo, _metrics_folder
    runtime.configure_logging(_settings.log_level, _settings.log_format)
    # Before any worker (or its threads) exists: the workers inherit the cap.
    runtime.limit_malloc_arenas()
    # Before any worker exists, so that each writes its samples where /metrics reads.
    _metrics_folder = metrics.prepare_multiprocess()
    try:
        _conninfo = runtime.prepare_database(_settings)
    except runtime.StartupError as exc:
        # Before any listener or worker exists: exit with the operator's one line.
        runtime.release_database()
        raise SystemExit(runtime.report_startup_error(exc)) from None


def when_ready(server):
    # After binding and before forking: the real listeners, however the bind was
    # given (HOST, GUNICORN_CMD_ARGS, a config file, systemd sockets). With
    # --reuse-port the workers bind instead, so the configured addresses stand in.
    refusal = auth.open_access_refusal(_settings, _conninfo, server.LISTENERS or server.cfg.address)
    if refusal is not None:
        logging.getLogger("context_store").error("%s", refusal)
        server.halt(exit_status=1)


def on_exit(server):
    runtime.release_database()
    metrics.release_multiprocess(_metrics_folder)


def child_exit(server, worker):
    metrics.worker_exited(worker.pid)


def pre_fork(server, worker):
    for name in _WORKER_IMPORTS:
        importlib.import_module(name)
    # Everything the master holds now (modules, settings, the tokenizer's tables)
    # is out of the collector's generations: a worker's collections, its own
    # gc.freeze() included, no longer write to these objects' headers, which would
    # copy their pages into every worker (measured: 4 MiB of PSS per worker).
    gc.collect()
    gc.freeze()


def post_worker_init(worker):
    # The app, the tokenizer's tables, schemas, routes and modules live as long as
    # the worker: moved out of the collector's generations, a full collection no
    # longer walks them (measured: 47-95 ms before, under 0.1 ms after).
    gc.collect()
    gc.freeze()


def worker_exit(server, worker):
    runtime.close_worker()
