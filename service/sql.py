"""Named SQL statements, loaded once from `sql/queries/*.sql`.

Each statement sits under a header naming it, followed by a description, in
aiosql's convention::

    -- name: get_context^
    -- Returns a live context.
    SELECT ...

The name's suffix is aiosql's operator and says what running it returns: none
for all rows, `^` one row or None, `$` one value, `!` the row count
(insert/update/delete). aiosql's other operators (`<!`, `*!`, `#`) are not used
here and are refused. Parameters are psycopg's `%(name)s`, bound by the driver;
no value ever enters SQL text.

A statement whose parameters are all plain scalars (None, str, bool, int, UUID,
an aware datetime) goes to libpq through psycopg's `pq` layer, its values sent
as text and its rows loaded by psycopg's own loaders: a cursor's machinery
(query conversion, the prepared-statement manager, per-call adapters) cost
30-140 us of CPU a request (bench.profile A/B, bench/RESULTS.md). Anything
else (arrays, JSON values, floats, a str holding NUL, a connection that is not
in autocommit and not in a transaction) takes the cursor, so behaviour and
errors stay psycopg's. Prepared statements follow the connection's
`prepare_threshold` as psycopg's do (None: never, else after that many runs),
under names of their own (`cs_<statement>`).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from psycopg import Connection, errors, generators, pq
from psycopg.adapt import Transformer
from psycopg.rows import dict_row

from .paths import sql_dir

_HEADER = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)(?P<kind>[\^$!]?)\s*$")
_KINDS = {"": "all", "^": "one", "$": "value", "!": "rowcount"}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
_IDLE = pq.TransactionStatus.IDLE
_SQLSTATE = pq.DiagnosticField.SQLSTATE
_NO_SUCH_STATEMENT = b"26000"  # invalid_sql_statement_name
_ALREADY_PREPARED = b"42P05"  # duplicate_prepared_statement


class SqlFileError(ValueError):
    """A statement file that does not follow the header convention."""


@dataclass(frozen=True)
class Statement:
    """One named statement: `run` executes it and shapes the result by its kind."""

    name: str
    kind: str
    doc: str
    text: str
    # libpq's form: the parameters in order, the text with $1.. for them
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    positional: bytes = field(init=False, repr=False, compare=False)
    prepared_name: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match[1]
            if name is None:
                return "%"
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        positional = _PLACEHOLDER.sub(number, self.text)
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "positional", positional.encode())
        object.__setattr__(self, "prepared_name", f"cs_{self.name}".encode())

    def run(self, conn: Connection, **params: Any) -> Any:
        values = _text_values(self.names, params)
        if values is not None and (conn.autocommit or conn.pgconn.transaction_status != _IDLE):
            session = _sessions.get(conn) or _Session.of(conn)
            if session.utf8:
                return self._run_on_libpq(conn, session, values)
        return self._run_on_cursor(conn, params)

    def _run_on_cursor(self, conn: Connection, params: dict[str, Any]) -> Any:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(self.text, params)
            if self.kind == "one":
                return cur.fetchone()
            if self.kind == "all":
                return cur.fetchall()
            if self.kind == "value":
                row = cur.fetchone()
                return None if row is None else next(iter(row.values()))
            return cur.rowcount

    def _run_on_libpq(self, conn: Connection, session: _Session, values: list[bytes | None]) -> Any:
        pgconn = conn.pgconn
        with conn.lock:
            if pgconn.transaction_status != _IDLE or conn.prepare_threshold is None:
                # In a transaction, unnamed: psycopg deallocates every prepared
                # statement after a rollback (DEALLOCATE ALL), and finding ours
                # gone would abort the transaction. Outside one it is prepared
                # again below, at the cost of one round trip.
                pgconn.send_query_params(self.positional, values)
                result = _fetch(conn)
            elif self.name in session.prepared:
                pgconn.send_query_prepared(self.prepared_name, values)
                result = _fetch(conn)
                if result.error_field(_SQLSTATE) == _NO_SUCH_STATEMENT:  # nothing ran: Bind failed
                    session.prepared.clear()
                    result = self._prepare_and_run(conn, session, values)
            elif session.count(self.name) > conn.prepare_threshold:
                result = self._prepare_and_run(conn, session, values)
            else:
                pgconn.send_query_params(self.positional, values)
                result = _fetch(conn)
            session.check(result)
        if self.kind == "rowcount":
            return result.command_tuples
        rows = result.ntuples
        if rows == 0:
            return [] if self.kind == "all" else None
        tx = session.transformer
        tx.set_pgresult(result)
        if self.kind == "value":
            return tx.load_row(0, tuple)[0]
        encoding = session.encoding
        columns = [result.fname(i).decode(encoding) for i in range(result.nfields)]
        if self.kind == "one":
            return dict(zip(columns, tx.load_row(0, tuple)))
        return [dict(zip(columns, row)) for row in tx.load_rows(0, rows, tuple)]

    def _prepare_and_run(self, conn: Connection, session: _Session, values: list[bytes | None]) -> pq.abc.PGresult:
        pgconn = conn.pgconn
        pgconn.send_prepare(self.prepared_name, self.positional)
        prepared = _fetch(conn)
        if prepared.error_field(_SQLSTATE) != _ALREADY_PREPARED:  # still there from before a 26000
            session.check(prepared)
        session.prepared.add(self.name)
        pgconn.send_query_prepared(self.prepared_name, values)
        return _fetch(conn)


def _fetch(conn: Connection) -> pq.abc.PGresult:
    return conn.wait(generators.execute(conn.pgconn))[-1]


def _text_values(names: tuple[str, ...], params: dict[str, Any]) -> list[bytes | None] | None:
    """The parameters as libpq's text values, or None when one is not a plain
    scalar (or is missing: the cursor then raises psycopg's error)."""
    values: list[bytes | None] = []
    for name in names:
        value = params.get(name, params)
        kind = type(value)
        if value is None:
            values.append(None)
        elif kind is str:
            if "\x00" in value:
                return None
            values.append(value.encode())
        elif kind is bool:
            values.append(b"t" if value else b"f")
        elif kind is int or kind is UUID:
            values.append(str(value).encode())
        elif kind is datetime and value.tzinfo is not None:
            # In UTC: PostgreSQL reads offsets up to 15:59 only, Python has them
            # up to 23:59 (psycopg's binary form has no offset at all).
            try:
                values.append(value.astimezone(UTC).isoformat().encode())
            except OverflowError:  # the first or last day Python has, moved past it
                return None
        else:
            return None
    return values


class _Session:
    """What the libpq path keeps per connection: the statements prepared on it,
    how often the others ran, and one Transformer for loading rows with the
    connection's loaders (pgvector's, the raw JSON one). The Transformer is
    made from the loaders, not the connection: a session must not keep its
    connection alive (_sessions holds connections weakly), and the loaders then
    decode text as UTF-8, the only encoding this path is taken with."""

    def __init__(self, conn: Connection) -> None:
        self.prepared: set[str] = set()
        self.runs: dict[str, int] = {}
        self.transformer = Transformer(conn.adapters)
        self.encoding = conn.info.encoding
        self.utf8 = self.encoding == "utf-8"  # the values are encoded as UTF-8

    @classmethod
    def of(cls, conn: Connection) -> _Session:
        return _sessions.setdefault(conn, cls(conn))

    def count(self, name: str) -> int:
        runs = self.runs[name] = self.runs.get(name, 0) + 1
        return runs

    def check(self, result: pq.abc.PGresult) -> pq.abc.PGresult:
        if result.status not in _OK:
            raise errors.error_from_result(result, encoding=self.encoding)
        return result


_sessions: weakref.WeakKeyDictionary[Connection, _Session] = weakref.WeakKeyDictionary()


def parse(source: str, origin: str = "<string>") -> dict[str, Statement]:
    """Parse one file's statements; raise SqlFileError on anything odd."""
    statements: dict[str, Statement] = {}
    blocks = re.split(r"(?m)^(?=-- name: )", source)
    if blocks[0].strip():
        raise SqlFileError(f"{origin}: text before the first '-- name:' header")
    for block in blocks[1:]:
        lines = block.strip().splitlines()
        match = _HEADER.match(lines[0])
        if match is None:
            raise SqlFileError(f"{origin}: malformed header {lines[0]!r}")
        name = match["name"]
        doc_lines = []
        body_start = 1
        for line in lines[1:]:
            if not line.startswith("--"):
                break
            doc_lines.append(line[2:].strip())
            body_start += 1
        body = "\n".join(lines[body_start:]).strip()
        if not doc_lines:
            raise SqlFileError(f"{origin}: statement {name} has no description")
        if not body:
            raise SqlFileError(f"{origin}: statement {name} has no SQL")
        if name in statements:
            raise SqlFileError(f"{origin}: statement {name} is defined twice")
        statements[name] = Statement(name, _KINDS[match["kind"]], " ".join(doc_lines), body.rstrip(";"))
    return statements


class Queries:
    """Every named statement of `sql/queries`, as attributes (`queries.get_context`)."""

    def __init__(self, folder: Path | None = None) -> None:
        folder = folder or sql_dir() / "queries"
        self._statements: dict[str, Statement] = {}
        for path in sorted(folder.glob("*.sql")):
            for name, statement in parse(path.read_text(encoding="utf-8"), path.name).items():
                if name in self._statements:
                    raise SqlFileError(f"{path.name}: statement {name} is defined in two files")
                self._statements[name] = statement

    def __getattr__(self, name: str) -> Statement:
        try:
            return self.__dict__["_statements"][name]
        except KeyError:
            raise AttributeError(f"no SQL statement named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._statements)


QUERIES = Queries()
