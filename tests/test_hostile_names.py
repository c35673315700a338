"""Hostile identifiers as schema, table and column names: quoted everywhere, nothing extra runs."""

from __future__ import annotations

import pytest
from psycopg import sql

import pgvz_nb as pgvz

from .conftest import drop_schema

HOSTILE = [
    'quote"inside',
    "single'quote",
    "semi;colon",
    "x'); DROP TABLE public.pgvz_canary; --",
    'y"; DROP TABLE public.pgvz_canary; --',
    "spaces in name",
    "MixedCase",
    "ünïcödé_表",
    "$$dollar$$",
    "/* comment */",
    "back\\slash",
    "line\nbreak",
    "select",
    "é" * 31 + "x",  # 63 bytes, PostgreSQL's limit
]


@pytest.fixture
def canary(conn):
    conn.execute("CREATE TABLE IF NOT EXISTS public.pgvz_canary (alive bool)")
    yield
    assert conn.execute("SELECT to_regclass('public.pgvz_canary') IS NOT NULL").fetchone()[0]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_schema_table_and_columns(db, conn, canary, name):
    assert len(name.encode()) <= 63
    schema, table, key, body = name, name[::-1] or "t", name + "_k" if len(name.encode()) < 61 else "k" + name[1:], "body " + name[:20]
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        t = sql.Identifier(schema, table)
        conn.execute(
            sql.SQL("CREATE TABLE {} ({} int PRIMARY KEY, {} text)").format(
                t, sql.Identifier(key), sql.Identifier(body)
            )
        )
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a'), (2, 'b')").format(t))
        v = pgvz.Vectorize(db.dsn, table, schema_name=schema, id_column_name=key)
        v.register()
        conn.execute(sql.SQL("INSERT INTO {} VALUES (3, 'c')").format(t))
        conn.execute(sql.SQL("UPDATE {} SET {} = 'changed' WHERE {} = 1").format(
            t, sql.Identifier(body), sql.Identifier(key)))
        conn.execute(sql.SQL("DELETE FROM {} WHERE {} = 2").format(t, sql.Identifier(key)))
        seen = {}
        while v.process(lambda rows, _: seen.update({r["locked_id"]: r[body] for r in rows}), 2) > 0:
            pass
        assert seen == {1: "changed", 2: None, 3: "c"}
        v.close()
    finally:
        drop_schema(db, schema)
