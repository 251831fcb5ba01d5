"""The health check's round trip: sql/queries/session.sql."""

from psycopg import Connection

from ..sql import QUERIES


def ping(conn: Connection) -> None:
    QUERIES.ping.run(conn)
