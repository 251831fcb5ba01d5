"""service.sql: the `-- name:` file convention and the Queries registry."""

from __future__ import annotations

import pytest

from service.paths import sql_dir
from service.sql import QUERIES, Queries, SqlFileError, Statement, parse

GOOD = """
-- name: get_one^
-- Returns one row
-- or none.
SELECT * FROM t WHERE id = %(id)s;

-- name: get_all
-- Returns every row.
SELECT *
FROM t
ORDER BY id;

-- name: count_rows$
-- Returns a count.
SELECT count(*) FROM t;

-- name: delete_rows!
-- Deletes rows, returns how many.
DELETE FROM t WHERE id = %(id)s
"""


def test_parse_reads_every_statement_with_its_kind():
    statements = parse(GOOD)
    assert list(statements) == ["get_one", "get_all", "count_rows", "delete_rows"]
    assert {name: s.kind for name, s in statements.items()} == {
        "get_one": "one",
        "get_all": "all",
        "count_rows": "value",
        "delete_rows": "rowcount",
    }
    assert all(isinstance(s, Statement) and s.name == name for name, s in statements.items())


def test_parse_joins_a_multi_line_description():
    assert parse(GOOD)["get_one"].doc == "Returns one row or none."


def test_parse_keeps_the_body_without_the_header_description_or_final_semicolon():
    statements = parse(GOOD)
    assert statements["get_one"].text == "SELECT * FROM t WHERE id = %(id)s"
    assert statements["get_all"].text == "SELECT *\nFROM t\nORDER BY id"
    assert statements["delete_rows"].text == "DELETE FROM t WHERE id = %(id)s"
    assert "--" not in statements["count_rows"].text


def test_parse_keeps_comments_inside_the_body():
    text = "-- name: q$\n-- Doc.\nSELECT 1 -- trailing\n-- inner\n+ 1;\n"
    assert parse(text)["q"].text == "SELECT 1 -- trailing\n-- inner\n+ 1"


def test_parse_of_empty_text_has_no_statements():
    assert parse("") == {}
    assert parse("\n  \n") == {}


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1;\n-- name: q$\n-- Doc.\nSELECT 1;\n",
        "-- a file comment\n-- name: q$\n-- Doc.\nSELECT 1;\n",
    ],
)
def test_text_before_the_first_header_is_refused(text):
    with pytest.raises(SqlFileError, match=r"queries\.sql: text before the first"):
        parse(text, "queries.sql")


@pytest.mark.parametrize(
    "header",
    [
        "-- name: aiosql_many*",
        "-- name: BadCase^",
        "-- name: bad-name^",
        "-- name: 1starts_with_digit^",
        "-- name: unknown_kind%",
        "-- name: two_kinds^*",
        "-- name: spaced ^",
    ],
)
def test_a_malformed_header_is_refused_and_quoted(header):
    with pytest.raises(SqlFileError, match=r"f\.sql: malformed header") as info:
        parse(f"{header}\n-- Doc.\nSELECT 1;\n", "f.sql")
    assert header in str(info.value)


def test_a_statement_without_description_is_refused():
    with pytest.raises(SqlFileError, match=r"f\.sql: statement q has no description"):
        parse("-- name: q$\nSELECT 1;\n", "f.sql")


@pytest.mark.parametrize("text", ["-- name: q$\n-- Doc.\n", "-- name: q$\n-- Doc.\n\n   \n", "-- name: q$\n-- Doc."])
def test_a_statement_without_sql_is_refused(text):
    with pytest.raises(SqlFileError, match=r"f\.sql: statement q has no SQL"):
        parse(text, "f.sql")


def test_a_statement_without_sql_before_the_next_header_is_refused():
    text = "-- name: a$\n-- Doc.\n-- name: b$\n-- Doc.\nSELECT 1;\n"
    with pytest.raises(SqlFileError, match=r"statement a has no SQL"):
        parse(text, "f.sql")


def test_a_name_defined_twice_in_one_file_is_refused():
    text = "-- name: q$\n-- One.\nSELECT 1;\n\n-- name: q^\n-- Two.\nSELECT 2;\n"
    with pytest.raises(SqlFileError, match=r"f\.sql: statement q is defined twice"):
        parse(text, "f.sql")


def test_sql_file_error_is_a_value_error():
    assert issubclass(SqlFileError, ValueError)


def test_queries_loads_the_real_statement_files():
    queries = Queries()
    names = queries.names()
    assert names == sorted(names)
    for expected in (
        "lock_migrations",
        "create_migrations_table",
        "list_migrations",
        "record_migration",
        "configure_session",
        "ping",
        "insert_context",
        "get_context",
        "insert_messages",
    ):
        assert expected in names
    assert queries.ping.kind == "value"
    assert queries.list_migrations.kind == "all"
    assert queries.record_migration.kind == "rowcount"
    assert queries.get_context.kind == "one"
    assert queries.ping.text == "SELECT 1"


def test_every_real_statement_file_parses_and_all_names_are_exposed():
    folder = sql_dir() / "queries"
    total = 0
    for path in folder.glob("*.sql"):
        total += len(parse(path.read_text(encoding="utf-8"), path.name))
    assert total == len(QUERIES.names()) > 0
    for name in QUERIES.names():
        statement = getattr(QUERIES, name)
        assert statement.name == name
        assert statement.doc and statement.text


def test_an_unknown_statement_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_statement"):
        QUERIES.no_such_statement  # noqa: B018
    assert not hasattr(QUERIES, "no_such_statement")
    assert getattr(QUERIES, "no_such_statement", None) is None


def test_queries_reads_only_sql_files_of_the_folder(tmp_path):
    (tmp_path / "a.sql").write_text("-- name: first$\n-- One.\nSELECT 1;\n", encoding="utf-8")
    (tmp_path / "b.sql").write_text("-- name: second\n-- Two.\nSELECT 2;\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("-- name: ignored$\n-- No.\nSELECT 3;\n", encoding="utf-8")
    queries = Queries(tmp_path)
    assert queries.names() == ["first", "second"]
    assert queries.second.kind == "all"


def test_a_name_defined_in_two_files_is_refused(tmp_path):
    (tmp_path / "a.sql").write_text("-- name: same$\n-- One.\nSELECT 1;\n", encoding="utf-8")
    (tmp_path / "b.sql").write_text("-- name: same$\n-- Two.\nSELECT 2;\n", encoding="utf-8")
    with pytest.raises(SqlFileError, match=r"b\.sql: statement same is defined in two files"):
        Queries(tmp_path)


def test_a_bad_file_in_the_folder_is_refused_with_its_name(tmp_path):
    (tmp_path / "broken.sql").write_text("SELECT 1;\n", encoding="utf-8")
    with pytest.raises(SqlFileError, match=r"broken\.sql"):
        Queries(tmp_path)
