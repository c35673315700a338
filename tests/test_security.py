"""Hostile input, least privilege, look-alike functions, and passwords that never show."""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgvz_nb as pgvz
from pgvz_nb.embedders import HashingEmbedder
from pgvz_nb.errors import InvalidName
from pgvz_nb.sql import Name

from .conftest import drop_schema

HOSTILE = [
    'quote"inside', "single'quote", "semi;colon", "x'); DROP TABLE public.pgvz_canary; --",
    'y"; DROP TABLE public.pgvz_canary; --', "spaces in name", "MixedCase", "ünïcödé_表",
    "$$dollar$$", "/* comment */", "back\\slash", "line\nbreak", "select", "%s", "%(x)s",
    "{0}", "NULL", "tab\there", "emoji🐘", "zero\u200bwidth", "-- dash", "a.b",
    "é" * 31 + "x",  # 63 bytes
]


@pytest.fixture
def canary(conn):
    conn.execute("CREATE TABLE IF NOT EXISTS public.pgvz_canary (alive bool)")
    yield
    assert conn.execute("SELECT to_regclass('public.pgvz_canary') IS NOT NULL").fetchone()[0], \
        "the canary table was dropped: some input ran as SQL"


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_names_filters_and_queries_in_the_pipeline(db, conn, canary, name):
    schema, table = name, ("t_" + name)[:20]
    key, body, meta = "k " + name[:30], "b " + name[:30], "m " + name[:30]
    dest = ("d_" + name)[:20]
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Name(schema)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(Name(schema)))
    try:
        t = Name(schema, table)
        conn.execute(sql.SQL("CREATE TABLE {} ({} int PRIMARY KEY, {} text, {} text)").format(
            t, Name(key), Name(body), Name(meta)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s, %s), (2, 'plain text', 'other')").format(t),
                     [f"text about {name}", name])
        v = pgvz.Vectorizer(db, table, schema=schema, chunk_column=body, metadata=[meta],
                            destination=(schema, dest), embedder=HashingEmbedder(16),
                            name=f"hostile {uuid.uuid4().hex[:6]}").create()
        assert v.destination == (schema, dest)
        assert v.sync(progress=False).processed == 2
        hits = v.search(f"text about {name}", k=5, filter={meta: name})
        assert list(hits[meta]) == [name] and hits["contents"][0] == f"text about {name}"
        assert v.search(name, k=5, filter={name: "x"}).empty
        conn.execute(sql.SQL("DELETE FROM {} WHERE {} = 1").format(t, Name(key)))
        v.sync(progress=False)
        assert v.search("anything", k=5)["contents"].tolist() == ["plain text"]
        v.close()
    finally:
        drop_schema(db, schema)


def test_names_postgres_would_cut_or_reject_are_clear_errors(db):
    with pytest.raises(InvalidName, match="64 bytes"):
        pgvz.Vectorizer(db, "x" * 64, chunk_column="body", embedder=HashingEmbedder()).create()
    with pytest.raises(InvalidName, match="NUL"):
        pgvz.Vectorizer(db, "bad\x00name", chunk_column="body", embedder=HashingEmbedder()).create()
    with pytest.raises(InvalidName, match="destination table"):
        pgvz.Vectorizer(db, "blog", chunk_column="body", destination="é" * 40, embedder=HashingEmbedder())


def test_lookalike_operator_on_the_search_path_does_not_hijack_the_trigger(db, conn, schema):
    evil = f"evil_{uuid.uuid4().hex[:6]}"
    s = sql.Identifier
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(s(evil)))
    try:
        conn.execute(sql.SQL("CREATE TABLE {}.hits (n int)").format(s(evil)))
        # text = text that always says "equal" and logs that it ran
        conn.execute(sql.SQL(
            "CREATE FUNCTION {e}.eq(text, text) RETURNS bool LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO {e}.hits VALUES (1); RETURN true; END $$; "
            "CREATE OPERATOR {e}.= (LEFTARG = text, RIGHTARG = text, FUNCTION = {e}.eq); "
            "CREATE FUNCTION {e}.array_agg(int) RETURNS int LANGUAGE sql AS 'SELECT 0'").format(e=s(evil)))
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(s(schema, "docs")))
        v = pgvz.Vectorizer(db, f"{schema}.docs", chunk_column="body", embedder=HashingEmbedder(8)).create()
        conn.execute(sql.SQL("SET search_path = {}, public, pg_catalog").format(s(evil)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'one'), (2, 'two')").format(s(schema, "docs")))
        conn.execute(sql.SQL("UPDATE {} SET id = 3 WHERE id = 2").format(s(schema, "docs")))
        conn.execute("RESET search_path")
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}.hits").format(s(evil))).fetchone()[0] == 0
        assert sorted(v.queue()["id"]) == [1, 2, 2, 3]  # the PK change queued old key 2 and new key 3
        v.close()
    finally:
        conn.execute("RESET search_path")
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(s(evil)))


def test_least_privilege_worker_and_app_roles(db, conn, schema):
    app, worker = f"app_{uuid.uuid4().hex[:6]}", f"worker_{uuid.uuid4().hex[:6]}"
    s = sql.Identifier
    for role in (app, worker):
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(s(role)))
    try:
        conn.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, body text)").format(s(schema, "notes")))
        v = pgvz.Vectorizer(db, f"{schema}.notes", chunk_column="body", embedder=HashingEmbedder(8)).create()
        v.grant_worker(worker)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s(schema), s(app)))
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(s(schema, "notes"), s(app)))
        conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s(schema), s(app)))
        with psycopg.connect(make_conninfo(db.dsn, user=app), autocommit=True) as c:
            c.execute(sql.SQL("INSERT INTO {} (body) VALUES ('written by the app'), ('and more')").format(
                s(schema, "notes")))
            c.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(s(schema, "notes")))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql.SQL("SELECT * FROM {}").format(s(*v._queue.queue)))
        as_worker = pgvz.Vectorizer.open(pgvz.Database(make_conninfo(db.dsn, user=worker)), v.name)
        report = as_worker.sync(progress=False)
        assert report.failed == 0 and report.processed == 2
        assert conn.execute(sql.SQL("SELECT notes_id, contents FROM {}").format(
            s(schema, "notes_embedding"))).fetchall() == [(1, "written by the app")]
        with psycopg.connect(make_conninfo(db.dsn, user=worker), autocommit=True) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql.SQL("INSERT INTO {} (body) VALUES ('no')").format(s(schema, "notes")))
        as_worker.close(), v.close()
    finally:
        for role in (app, worker):
            conn.execute(sql.SQL("DROP OWNED BY {}").format(s(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(s(role)))


def test_a_worker_role_sees_only_its_own_vectorizers_keys_in_flight(db, conn, schema):
    """pgvz.in_flight is one table for every vectorizer: row-level security keeps a worker
    role to the rows of the vectorizers whose queues it may work, so it can neither read
    the keys other vectorizers are processing nor write rows for them."""
    worker = f"worker_{uuid.uuid4().hex[:6]}"
    s = sql.Identifier
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(s(worker)))
    try:
        for table in ("mine", "theirs"):
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(s(schema, table)))
            conn.execute(sql.SQL("INSERT INTO {} SELECT i, 'text ' || i FROM generate_series(1, 5) i").format(
                s(schema, table)))
        mine = pgvz.Vectorizer(db, f"{schema}.mine", template="{body}", embedder=HashingEmbedder(8)).create()
        theirs = pgvz.Vectorizer(db, f"{schema}.theirs", template="{body}", embedder=HashingEmbedder(8)).create()
        mine.grant_worker(worker)
        # what dead workers left behind, one batch per vectorizer
        conn.execute("INSERT INTO pgvz.in_flight (vectorizer, keys) VALUES (%s, %s), (%s, %s)",
                     [mine._queue.id, ["2"], theirs._queue.id, ["secret-key"]])
        with psycopg.connect(make_conninfo(db.dsn, user=worker), autocommit=True) as c:
            seen = c.execute("SELECT vectorizer, keys FROM pgvz.in_flight").fetchall()
            assert seen == [(mine._queue.id, ["2"])]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("INSERT INTO pgvz.in_flight (vectorizer, keys) VALUES (%s, %s)",
                          [theirs._queue.id, ["3"]])
            assert c.execute("DELETE FROM pgvz.in_flight WHERE vectorizer = %s",
                             [theirs._queue.id]).rowcount == 0
        # and it still works its own queue, dead worker's key included (taken alone)
        as_worker = pgvz.Vectorizer.open(pgvz.Database(make_conninfo(db.dsn, user=worker)), mine.name)
        report = as_worker.sync(progress=False, lanes=1)
        assert report.processed == 5 and report.failed == 0
        left = conn.execute("SELECT vectorizer, keys FROM pgvz.in_flight WHERE vectorizer IN (%s, %s)",
                            [mine._queue.id, theirs._queue.id]).fetchall()
        assert left == [(theirs._queue.id, ["secret-key"])]
        as_worker.close(), mine.close(), theirs.close()
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(s(worker)))
        conn.execute(sql.SQL("DROP ROLE {}").format(s(worker)))


def test_a_role_without_access_to_pgvz_creates_and_alters_tables_undisturbed(db, conn, schema):
    """The partition event trigger runs at the end of everyone's CREATE TABLE and ALTER
    TABLE: it must never make such a command fail, whoever runs it."""
    role = f"plain_{uuid.uuid4().hex[:6]}"
    s = sql.Identifier
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(s(role)))
    conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(s(schema), s(role)))
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(s(schema, "tracked")))
    pgvz.Vectorizer(db, f"{schema}.tracked", template="{body}", embedder=HashingEmbedder(8)).create().close()
    assert conn.execute("SELECT count(*) FROM pg_event_trigger WHERE evtname = 'pgvz_follow_ddl'").fetchone()[0] == 1
    conn.commit()
    try:
        with psycopg.connect(make_conninfo(db.dsn, user=role), autocommit=True) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT 1 FROM pgvz.vectorizers")
            c.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY) PARTITION BY RANGE (id)").format(s(schema, "own")))
            c.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (0) TO (10)").format(
                s(schema, "own_0"), s(schema, "own")))
            c.execute(sql.SQL("ALTER TABLE {} ADD COLUMN note text").format(s(schema, "own")))
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(s(schema, "own_0"))).fetchone()[0] == 0
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(s(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(s(role)))


def test_password_never_shown(db):
    dsn = "postgresql://alice:s3cr3t-pw@127.0.0.1:1/app?connect_timeout=1"
    d = pgvz.Database(dsn)
    shown = [repr(d), str(d), repr(pgvz.Vectorize(d, "blog")),
             repr(pgvz.Vectorizer(d, "blog", chunk_column="body", embedder=HashingEmbedder()))]
    try:
        pgvz.connect(dsn)
    except pgvz.PgvzError as exc:
        shown.append(str(exc))
    out = subprocess.run([sys.executable, "-m", "pgvz_nb.cli", "worker", "--dsn", dsn, "--once",
                          "--give-up-after", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    shown += [out.stdout, out.stderr]
    assert "connection lost" in out.stderr
    assert all("s3cr3t-pw" not in text for text in shown), [t for t in shown if "s3cr3t-pw" in t]
