"""One error boundary: no public method lets a raw psycopg error through; each raises a
PgvzError saying what it was doing (issue 15). The failure used: pgvz_nb's own tables renamed
away by hand, so every statement on them fails with UndefinedTable."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.embedders import HashingEmbedder
from pgvz_nb.errors import ConnectionFailed, connection_lost, rolled_back, translate
from pgvz_nb.queue import Queue
from pgvz_nb.sample import load_blog

PIPELINE_CALLS = {
    "status": lambda v: v.status(),
    "queue": lambda v: v.queue(),
    "errors": lambda v: v.errors(),
    "retry_failed": lambda v: v.retry_failed(),
    "reconcile": lambda v: v.reconcile(),
    "search": lambda v: v.search("cats"),
    "grant_worker": lambda v: v.grant_worker("pg_monitor"),
    "create_index": lambda v: v.create_index(),
    "process": lambda v: v.process(),
    "sync": lambda v: v.sync(progress=False),
}

CALLBACK_CALLS = {
    "state": lambda v: v.state(),
    "failed": lambda v: v.failed(),
    "retry_failed": lambda v: v.retry_failed(),
    "process": lambda v: v.process(lambda rows, vec: None),
}


def _rename(conn, tables, suffix_from, suffix_to):
    for schema, table in tables:
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            sql.Identifier(schema, table + suffix_from), sql.Identifier(table + suffix_to)))


@pytest.mark.parametrize("method", sorted(PIPELINE_CALLS))
def test_every_vectorizer_method_raises_a_pgvz_error(db, conn, schema, method):
    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=HashingEmbedder(16)).create()
    queue = Queue.open(conn, v.name)
    tables = [queue.queue, queue.inbox, queue.failed, v.destination]
    _rename(conn, tables, "", "_away")
    try:
        with pytest.raises(pgvz.PgvzError) as caught:
            PIPELINE_CALLS[method](v)
        assert not isinstance(caught.value, psycopg.Error)
        assert "does not exist" in str(caught.value) and v.name in str(caught.value)
    finally:
        _rename(conn, tables, "_away", "")
        v.close()


@pytest.mark.parametrize("method", sorted(CALLBACK_CALLS))
def test_every_vectorize_method_raises_a_pgvz_error(db, conn, schema, method):
    load_blog(db, schema=schema)
    v = pgvz.Vectorize(db, "blog", schema_name=schema)
    v.register()
    queue = Queue.open(conn, v.name)
    tables = [queue.queue, queue.inbox, queue.failed]
    _rename(conn, tables, "", "_away")
    try:
        with pytest.raises(pgvz.PgvzError) as caught:
            CALLBACK_CALLS[method](v)
        assert not isinstance(caught.value, psycopg.Error)
        assert "does not exist" in str(caught.value)
    finally:
        _rename(conn, tables, "_away", "")
        v.close()


def test_drop_and_unregister_with_their_tables_gone_by_hand_succeed(db, conn, schema):
    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=HashingEmbedder(16)).create()
    cb = pgvz.Vectorize(db, "blog", schema_name=schema)
    cb.register()
    for name in (v.name, cb.name):
        queue = Queue.open(conn, name)
        for rel in (queue.queue, queue.inbox, queue.failed):
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(*rel)))
    v.drop()
    cb.unregister()
    assert conn.execute("SELECT count(*) FROM pgvz.vectorizers WHERE name IN (%s, %s)",
                        [v.name, cb.name]).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                        [f"{schema}.blog"]).fetchone()[0] == 0


def test_a_lost_connection_is_told_apart_from_a_timeout_and_a_conflict(db):
    """The worker reconnects only for a lost connection; a lock timeout or a conflict leaves
    the connection usable (errors.connection_lost, the one place that decides)."""
    with db.connect(autocommit=True) as c:
        with pytest.raises(psycopg.Error) as timeout:
            c.execute("SET lock_timeout = '1ms'; DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '55P03'; END $$")
        with pytest.raises(psycopg.Error) as conflict:
            c.execute("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$")
        other = db.connect(autocommit=True)
        pid = other.info.backend_pid
        c.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(psycopg.Error) as lost:
            other.execute("SELECT 1")
        other.close()
    assert not connection_lost(timeout.value) and not connection_lost(conflict.value)
    assert rolled_back(conflict.value) and not rolled_back(timeout.value)
    assert connection_lost(lost.value)
    assert isinstance(translate(lost.value, "testing"), ConnectionFailed)
    assert not isinstance(translate(timeout.value, "testing"), ConnectionFailed)
