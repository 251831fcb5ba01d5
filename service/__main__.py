"""The `context-store` command: serve, migrate, version."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import ConfigError, Settings


def _serve(settings: Settings) -> int:
    from gunicorn.app.wsgiapp import WSGIApplication

    from . import runtime

    # Prepared before gunicorn starts, so that a database the service cannot use
    # is reported in one line before gunicorn says anything (its on_starting hook
    # then finds the work done; plain `gunicorn -c gunicorn.conf.py` does it there).
    runtime.configure_logging(settings.log_level)
    try:
        runtime.prepare_database(settings)
    except runtime.StartupError as exc:
        runtime.release_database()
        return runtime.report_startup_error(exc)
    sys.argv = ["context-store", "-c", "python:service.gunicorn_conf"]
    try:
        WSGIApplication("%(prog)s [OPTIONS]").run()
    finally:
        runtime.release_database()
    return 0


def _migrate(settings: Settings) -> int:
    from . import runtime

    runtime.configure_logging(settings.log_level)
    try:
        conninfo = runtime.start_database(settings)
        runtime.check_connection(settings, conninfo)
        applied = runtime.apply_migrations(conninfo)
    except runtime.StartupError as exc:
        return runtime.report_startup_error(exc)
    finally:
        runtime.release_database()
    print("applied: " + ", ".join(applied) if applied else "migrations: up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="context-store", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the API under gunicorn (configuration from the environment)")
    commands.add_parser("migrate", help="apply pending SQL migrations, then exit")
    commands.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"context-store: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(settings)
    return _migrate(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
