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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from .paths import sql_dir

_HEADER = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)(?P<kind>[\^$!]?)\s*$")
_KINDS = {"": "all", "^": "one", "$": "value", "!": "rowcount"}


class SqlFileError(ValueError):
    """A statement file that does not follow the header convention."""


@dataclass(frozen=True)
class Statement:
    """One named statement: `run` executes it and shapes the result by its kind."""

    name: str
    kind: str
    doc: str
    text: str

    def run(self, conn: Connection, **params: Any) -> Any:
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
