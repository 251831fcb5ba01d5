"""The `context-store` command: serve, migrate, keys, worker, version."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from . import __version__
from .config import ConfigError, Settings

if TYPE_CHECKING:
    from uuid import UUID

    from .queries.keys import Keys


def _serve(settings: Settings) -> int:
    from gunicorn.app.wsgiapp import WSGIApplication

    from . import runtime

    runtime.use_settings(settings)
    # Prepared before gunicorn starts, so that a database the service cannot use
    # is reported in one line before gunicorn says anything (its on_starting hook
    # then finds the work done; plain `gunicorn -c gunicorn.conf.py` does it there).
    runtime.configure_logging(settings.log_level, settings.log_format)
    try:
        runtime.prepare_database(settings)
    except runtime.StartupError as exc:
        runtime.release_database()
        return runtime.report_startup_error(exc)
    sys.argv = ["context-store", "-c", "python:service.gunicorn_conf"]
    master = os.getpid()
    try:
        # Never returns: gunicorn's master ends with sys.exit (its exit status),
        # and so does every worker it forks, through this same frame.
        WSGIApplication("%(prog)s [OPTIONS]").run()
    finally:
        if os.getpid() == master:  # pragma: no branch (a worker leaving holds no claim on the database)
            runtime.release_database()


def _migrate(settings: Settings) -> int:
    from . import runtime

    runtime.configure_logging(settings.log_level, settings.log_format)
    try:
        if settings.database_migration_url is not None and settings.database_url is not None:
            # Only the migration URL is used (DATABASE_URL may be a pooler).
            conninfo = runtime.migration_conninfo(settings, settings.database_url)
        else:
            conninfo = runtime.start_database(settings)  # refuses DATABASE_MIGRATION_URL alone
            runtime.check_connection(settings, conninfo)
        applied = runtime.apply_migrations(conninfo)
    except runtime.StartupError as exc:
        return runtime.report_startup_error(exc)
    finally:
        runtime.release_database()
    print("applied: " + ", ".join(applied) if applied else "migrations: up to date")
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from . import runtime, worker

    runtime.configure_logging(settings.log_level)
    try:
        conninfo = runtime.start_database(settings)
        return worker.main(settings, conninfo, once=args.once, only_indexes=args.ensure_indexes)
    finally:
        runtime.release_database()


def _fail(message: str, code: int) -> int:
    print(f"context-store: {message}", file=sys.stderr)
    return code


def _when(moment) -> str:
    # To the minute: last_used_at is only noted once a minute anyway.
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%MZ")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _keys_command(keys: Keys, args: argparse.Namespace, key_id: UUID | None) -> None:
    if args.keys_command == "create":
        created = keys.create(args.tenant, args.name)
        print(f"id: {created.id}\ntenant: {created.tenant}\nname: {created.name or '-'}\nkey: {created.key}")
        print("context-store: the key is shown only this once (only its hash is stored)", file=sys.stderr)
    elif args.keys_command == "list":
        header = ["ID", "TENANT", "NAME", "KEY", "CREATED", "LAST USED", "REVOKED"]
        rows = [
            [str(r["id"]), r["tenant"], r["name"] or "-", r["prefix"] + "...",
             _when(r["created_at"]), _when(r["last_used_at"]), _when(r["revoked_at"])]
            for r in keys.list(args.tenant)
        ]  # fmt: skip
        print(_table([header, *rows]))
    else:
        row = keys.revoke(key_id)
        state = "was already revoked" if row["was_revoked"] else "revoked"
        print(f"{row['id']} (tenant {row['tenant']}) {state} at {_when(row['revoked_at'])}")


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses
    from uuid import UUID

    import psycopg

    from . import runtime
    from .db import Database
    from .errors import Invalid, NotFound, Unavailable
    from .queries.keys import Keys, keys_table_exists

    key_id = None
    if args.keys_command == "revoke":
        try:
            key_id = UUID(args.key_id)
        except ValueError:
            return _fail(f"invalid KEY_ID {args.key_id!r}: expected a key id as `keys list` shows it", 2)
    runtime.configure_logging(settings.log_level, settings.log_format)
    database = None
    try:
        conninfo = runtime.start_database(settings)
        if not keys_table_exists(conninfo, settings.connect_timeout):
            return _fail("the database has no api_keys table yet: run `context-store migrate` first", 1)
        # One command, one statement: a single connection is plenty.
        database = Database(dataclasses.replace(settings, pool_min_size=1, pool_max_size=1), conninfo)
        database.open()
        _keys_command(Keys(database), args, key_id)
    except Invalid as exc:
        return _fail("invalid " + ", ".join(f"--{e.get('parameter')}: {e['detail']}" for e in exc.errors), 2)
    except (NotFound, Unavailable) as exc:
        return _fail(exc.detail, 1)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _fail(f"the database is unavailable: {reason}", 1)
    finally:
        if database is not None:
            database.close()
        runtime.release_database()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="context-store", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the API under gunicorn (configuration from the environment)")
    commands.add_parser("migrate", help="apply pending SQL migrations, then exit")
    commands.add_parser("version", help="print the version")
    keys = commands.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key for a tenant and print it, once")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument("--name", help="a note to tell keys apart (who or what holds it)")
    listing = keys.add_parser("list", help="list keys: id, tenant, name, created, last used, revoked")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = keys.add_parser("revoke", help="revoke a key (refused within 5 seconds by every worker)")
    revoke.add_argument("key_id", metavar="KEY_ID")
    work = commands.add_parser("worker", help="embed messages appended without an embedding (EMBEDDINGS_URL)")
    work.add_argument("--once", action="store_true", help="stop when the queue is empty")
    work.add_argument("--ensure-indexes", action="store_true",
                      help="create the HNSW index for EMBEDDING_DIM and re-index words for TEXT_SEARCH_CONFIG "
                           "(rewrites messages), then exit")
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
    if args.command == "keys":
        return _keys(settings, args)
    if args.command == "worker":
        return _worker(settings, args)
    return _migrate(settings)


if __name__ == "__main__":
    sys.exit(main())
