"""The `context-store` command: serve, migrate, version."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import ConfigError, Settings


def _serve(settings: Settings) -> int:
    from gunicorn.app.wsgiapp import WSGIApplication

    from . import runtime

    runtime.use_settings(settings)
    sys.argv = ["context-store", "-c", "python:service.gunicorn_conf"]
    WSGIApplication("%(prog)s [OPTIONS]").run()
    return 0


def _migrate(settings: Settings) -> int:
    from . import runtime
    from .migrate import MigrationError, migrate

    runtime.configure_logging(settings.log_level)
    try:
        conninfo = runtime.start_database(settings)
        applied = migrate(conninfo)
    except MigrationError as exc:
        print(f"context-store: {exc}", file=sys.stderr)
        return 1
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
