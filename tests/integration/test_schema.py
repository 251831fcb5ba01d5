"""sql/schema.sql is the current schema in one readable file: a database built from
it and one built by the migrations have the same catalog."""

from __future__ import annotations

import psycopg
import pytest

from service.paths import sql_dir

CATALOG = {
    "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute AS a
        JOIN pg_class AS c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
          AND c.relname <> 'schema_migrations' AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> 'schema_migrations'
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'schema_migrations' ORDER BY 1, 2""",
    # The schema's own functions, not the extensions'.
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
        FROM pg_proc AS p
        WHERE p.pronamespace = 'public'::regnamespace
          AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.objid = p.oid AND d.deptype = 'e')
        ORDER BY 1, 2""",
}


def catalog(conninfo: str) -> dict[str, list[tuple]]:
    with psycopg.connect(conninfo) as conn:
        return {name: conn.execute(query).fetchall() for name, query in CATALOG.items()}


def test_schema_sql_builds_the_catalog_the_migrations_build(conninfo, empty_database):
    with psycopg.connect(empty_database.url, autocommit=True) as conn:
        conn.execute((sql_dir() / "schema.sql").read_text(encoding="utf-8"))
    from_migrations, from_file = catalog(conninfo), catalog(empty_database.url)
    assert from_migrations["functions"], "the comparison must see the schema's functions"
    for name in CATALOG:
        assert from_file[name] == from_migrations[name], name


@pytest.mark.parametrize("table", ["contexts", "messages"])
def test_the_catalog_comparison_sees_a_difference(conninfo, table):
    before = catalog(conninfo)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN stray integer")
    assert catalog(conninfo)["columns"] != before["columns"]
