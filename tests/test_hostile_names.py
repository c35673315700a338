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


@pytest.mark.parametrize("keys", [["queued"], ["queued", "a0"]], ids=["one", "composite"])
def test_columns_named_like_the_trigger_own_variables_and_aliases(db, conn, schema, keys):
    """The trigger body declares a variable (queued) and uses aliases (a, a0, s, t, n, o,
    k0, w0, present); a source whose columns carry those names must still be writable."""
    t = sql.Identifier(schema, "clash")
    others = ["a", "s", "t", "n", "o", "k0", "w0", "present"]
    conn.execute(sql.SQL("CREATE TABLE {} ({}, {}, PRIMARY KEY ({}))").format(
        t, sql.SQL(", ").join(sql.SQL("{} int").format(sql.Identifier(k)) for k in keys),
        sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in others),
        sql.SQL(", ").join(map(sql.Identifier, keys))))
    v = pgvz.Vectorize(db.dsn, "clash", schema_name=schema, id_column_name=keys)
    v.register()
    values = sql.SQL(", ").join(sql.Literal(i) for i in range(len(keys)))
    conn.execute(sql.SQL("INSERT INTO {} ({}, present) VALUES ({}, 'one')").format(
        t, sql.SQL(", ").join(map(sql.Identifier, keys)), values))
    conn.execute(sql.SQL("UPDATE {} SET present = 'two'").format(t))
    conn.execute(sql.SQL("DELETE FROM {}").format(t))
    seen: list = []
    while v.process(lambda rows, _: seen.extend(r["present"] for r in rows), 10) > 0:
        pass
    assert seen == [None]  # insert, update and delete of one key: processed once, as deleted
    v.close()
