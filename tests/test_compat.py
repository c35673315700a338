"""Side by side with the original timescale_vector.pgvectorizer.Vectorize (installed with
--no-deps by `make test`): same attributes, same rows handed to the callback, and the
original's defects fixed."""

from __future__ import annotations

import uuid

import pytest
from psycopg import sql

import pgvz_nb as pgvz

original = pytest.importorskip("timescale_vector.pgvectorizer")


@pytest.fixture
def twin_tables(db, conn):
    """Two identical blog tables in public (the original only works there)."""
    names = [f"twin_{uuid.uuid4().hex[:8]}_{side}" for side in ("orig", "ours")]
    for n in names:
        conn.execute(sql.SQL(
            "CREATE TABLE {} (id serial PRIMARY KEY, title text, author text, "
            "published_time timestamptz)").format(sql.Identifier("public", n)))
    yield names
    orig, ours = names
    v = pgvz.Vectorize(db, ours)
    try:
        v.unregister()
    except pgvz.PgvzError:
        pass
    for n in names:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier("public", n)))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
        sql.Identifier("public", f"{orig}_embedding_work_queue")))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
        sql.Identifier("public", f"{orig}_wq_for_embedding")))


def apply(conn, table, statements):
    for stmt in statements:
        conn.execute(sql.SQL(stmt).format(t=sql.Identifier("public", table)))


def drain(v, batch=3):
    seen = {}
    while v.process(lambda rows, _: seen.update({r["locked_id"]: dict(r) for r in rows}), batch) > 0:
        pass
    return seen


def test_same_attributes_as_the_original(db):
    kw = dict(schema_name="public", id_column_name="id")
    a = original.Vectorize(db.dsn, "blog", **kw)
    b = pgvz.Vectorize(db.dsn, "blog", **kw)
    for attr in ("service_url", "table_name_unquoted", "schema_name_unquoted", "table_name",
                 "schema_name", "id_column_name", "work_queue_table_name", "trigger_name",
                 "trigger_name_fn"):
        assert getattr(b, attr) == getattr(a, attr), attr
    long = "x" * 60
    assert pgvz.Vectorize(db.dsn, long).work_queue_table_name == \
        original.Vectorize(db.dsn, long).work_queue_table_name


def test_callback_sees_the_same_rows_as_with_the_original(db, conn, twin_tables):
    orig_t, ours_t = twin_tables
    setup = [
        "INSERT INTO {t} (title, author, published_time) VALUES "
        "('First Post', 'Matvey Arye', '2021-01-01'), ('Second', 'Ana', NULL), ('Third', 'Kim', '2023-05-02 12:00+00')",
    ]
    changes = [
        "UPDATE {t} SET title = 'First Post, edited' WHERE id = 1",
        "DELETE FROM {t} WHERE id = 2",
        "INSERT INTO {t} (title, author) VALUES ('Fourth', 'Raj')",
    ]
    for t in twin_tables:
        apply(conn, t, setup)
    a = original.Vectorize(db.dsn, orig_t)
    b = pgvz.Vectorize(db.dsn, ours_t)
    first_a, first_b = drain(a), drain(b)
    assert first_a == first_b and sorted(first_b) == [1, 2, 3]
    for t in twin_tables:
        apply(conn, t, changes)
    second_a, second_b = drain(a), drain(b)
    assert second_a == second_b
    assert sorted(second_b) == [1, 2, 4]
    assert second_b[2]["title"] is None  # the deleted row: every column None
    b.close()


def test_noop_update_requeues_with_the_original_but_not_here(db, conn, twin_tables):
    orig_t, ours_t = twin_tables
    for t in twin_tables:
        apply(conn, t, ["INSERT INTO {t} (title, author) VALUES ('a', 'b')"])
    a, b = original.Vectorize(db.dsn, orig_t), pgvz.Vectorize(db.dsn, ours_t)
    drain(a), drain(b)
    for t in twin_tables:
        apply(conn, t, ["UPDATE {t} SET title = title"])
    assert list(drain(a)) == [1], "the original re-queues a no-op UPDATE"
    assert drain(b) == {}
    b.close()


def test_original_breaks_outside_public_and_pgvz_does_not(db, conn, schema):
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
        sql.Identifier(schema, "notes")))
    original.Vectorize(db.dsn, "notes", schema_name=schema).register()
    with pytest.raises(Exception, match="notes_embedding_work_queue"):
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'x')").format(sql.Identifier(schema, "notes")))
    # remove the original's trigger, then attach pgvz_nb under other names
    conn.execute(sql.SQL("DROP TRIGGER track_changes_for_embedding ON {}").format(
        sql.Identifier(schema, "notes")))
    v = pgvz.Vectorize(db.dsn, "notes", schema_name=schema,
                       work_queue_table_name="notes_queue", trigger_name_fn="notes_fn")
    v.register()
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'x')").format(sql.Identifier(schema, "notes")))
    assert list(drain(v)) == [1]
    v.close()
