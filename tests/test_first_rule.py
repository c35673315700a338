"""The first rule, case by case: pgvz_nb is never the reason an application's statement fails,
hangs, waits on a lock, leaks data to another role or loses a change. One test per way it was
found to break (issue 13, items 1-15), each checked against the database's state; the random
search for new ways is tests/test_ddl_property.py."""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgvz_nb as pgvz
from pgvz_nb import queue as queue_mod
from pgvz_nb.embedders import HashingEmbedder
from pgvz_nb.errors import (EmbeddingUnavailable, LockUnavailable, PgvzError, RowSecurityActive,
                            UntrustedObject)

s = sql.Identifier


@contextmanager
def role(conn, prefix="r", *, options=""):
    """A login role for the test (roles are cluster-wide), dropped with what it owns."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN " + options).format(s(name)))
    try:
        yield name
    finally:
        conn.rollback()
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(s(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(s(name)))


def as_role(db, name, **kw) -> psycopg.Connection:
    return psycopg.connect(make_conninfo(db.dsn, user=name), autocommit=True, **kw)


def make_posts(conn, schema, n=3, table="posts"):
    t = s(schema, table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT i, 'post ' || i FROM generate_series(1, %s) i").format(t), [n])


def embedded(conn, schema, table="posts"):
    return sorted(conn.execute(sql.SQL("SELECT {}, contents FROM {}").format(
        s(f"{table}_id"), s(schema, f"{table}_embedding"))).fetchall())


def rows_of(conn, schema, table="posts"):
    return sorted(conn.execute(sql.SQL("SELECT id, body FROM {}").format(s(schema, table))).fetchall())


def failed_count(conn, v) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(s(*v._queue.failed))).fetchone()[0]


def pipeline(db, schema, table="posts", **kw):
    kw.setdefault("embedder", HashingEmbedder(8))
    return pgvz.Vectorizer(db, f"{schema}.{table}", template="{body}", **kw)


# --- 1, 2: security ----------------------------------------------------------------------


def test_1_a_destination_made_by_another_role_is_refused_not_adopted(db, conn, schema):
    """A role with only CREATE on the schema made <table>_embedding first, with a row trigger
    that makes it a superuser when the syncing role (a superuser here) writes. Before,
    create() adopted it and the first sync ran the trigger."""
    make_posts(conn, schema)
    with role(conn, "mallory") as mallory:
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(s(schema), s(mallory)))
        with as_role(db, mallory) as m:
            m.execute(sql.SQL(
                "CREATE TABLE {} (id uuid PRIMARY KEY, metadata jsonb NOT NULL DEFAULT '{{}}', contents text, "
                "embedding vector(8) NOT NULL, posts_id int, chunk_seq int NOT NULL, chunk_hash text NOT NULL)"
            ).format(s(schema, "posts_embedding")))
            m.execute(sql.SQL(
                "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "EXECUTE format('ALTER ROLE %I SUPERUSER', {}); RETURN NULL; END $$"
            ).format(s(schema, "grab"), sql.Literal(mallory)))
            m.execute(sql.SQL("CREATE TRIGGER grab AFTER INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
                s(schema, "posts_embedding"), s(schema, "grab")))
        with pytest.raises(UntrustedObject, match=f"owned by role {mallory}"):
            pipeline(db, schema).create()
        assert not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [mallory]).fetchone()[0]
        assert conn.execute("SELECT count(*) FROM pgvz.vectorizers WHERE source_schema = %s",
                            [schema]).fetchone()[0] == 0
        # nor does a sync write into its own destination once someone else has put a trigger on it
        conn.execute(sql.SQL("DROP TABLE {}").format(s(schema, "posts_embedding")))
        v = pipeline(db, schema).create()
        conn.execute(sql.SQL("GRANT TRIGGER ON {} TO {}").format(s(schema, "posts_embedding"), s(mallory)))
        with as_role(db, mallory) as m:
            m.execute(sql.SQL("CREATE TRIGGER grab AFTER INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
                s(schema, "posts_embedding"), s(schema, "grab")))
        with pytest.raises(UntrustedObject, match="grab"):
            v.sync(progress=False)
        assert not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [mallory]).fetchone()[0]
        assert failed_count(conn, v) == 0 and len(v.queue()) == 3, "refused, nothing charged"
        v.close()


def test_1_a_pgvz_schema_made_by_another_role_is_refused(db, conn):
    """The same for schema pgvz itself, on a fresh database: whoever creates it first owns
    the tables pgvz_nb writes its catalog into."""
    dbname = f"pgvz_t_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE DATABASE {}").format(s(dbname)))
    try:
        with role(conn, "mallory") as mallory:
            conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(s(dbname), s(mallory)))
            with psycopg.connect(make_conninfo(db.dsn, dbname=dbname, user=mallory), autocommit=True) as m:
                m.execute("CREATE SCHEMA pgvz")
            other = pgvz.Database(make_conninfo(db.dsn, dbname=dbname))
            with other.connect(autocommit=True) as c:
                c.execute("CREATE EXTENSION vector")
                c.execute("CREATE TABLE posts (id int PRIMARY KEY, body text)")
            with pytest.raises(UntrustedObject, match=f"schema pgvz exists and is owned by role {mallory}"):
                pgvz.Vectorizer(other, "posts", template="{body}", embedder=HashingEmbedder(8)).create()
            with psycopg.connect(make_conninfo(db.dsn, dbname=dbname), autocommit=True) as c:
                c.execute("DROP SCHEMA pgvz CASCADE")
                c.execute(sql.SQL("DROP OWNED BY {}").format(s(mallory)))
    finally:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(s(dbname)))


def test_2_row_level_security_on_the_source_never_deletes_embeddings(db, conn, schema):
    """A worker role without BYPASSRLS saw the rows its policy hides as deleted: one sync,
    10 rows 'processed', their 10 embeddings gone, no error. Now the sync refuses and says
    what the role needs; nothing is charged; with BYPASSRLS it syncs."""
    make_posts(conn, schema, n=10)
    v = pipeline(db, schema).create()
    v.sync(progress=False)
    assert len(embedded(conn, schema)) == 10
    with role(conn, "worker") as worker:
        v.grant_worker(worker)
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(s(schema, "posts")))
        conn.execute(sql.SQL("CREATE POLICY only_mine ON {} USING (body LIKE 'mine%%')").format(s(schema, "posts")))
        conn.execute(sql.SQL("UPDATE {} SET body = body || ' edited'").format(s(schema, "posts")))
        as_worker = pgvz.Vectorizer.open(pgvz.Database(make_conninfo(db.dsn, user=worker)), v.name,
                                         embedder=HashingEmbedder(8))
        with pytest.raises(RowSecurityActive, match="BYPASSRLS"):
            as_worker.sync(progress=False)
        assert len(embedded(conn, schema)) == 10, "no embedding may go for a row the policy hides"
        assert failed_count(conn, v) == 0 and sorted(v.queue()["attempts"]) == [0] * 10
        as_worker.close()
        conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(s(worker)))
        as_worker = pgvz.Vectorizer.open(pgvz.Database(make_conninfo(db.dsn, user=worker)), v.name,
                                         embedder=HashingEmbedder(8))
        assert as_worker.sync(progress=False).processed == 10
        assert embedded(conn, schema) == [(i, f"post {i} edited") for i in range(1, 11)]
        as_worker.close()
    v.close()


# --- 3-8: the application's DDL and transactions --------------------------------------


def test_3_alter_and_recreate_a_table_under_a_callback_vectorizer(db, conn, schema):
    """config->'watched' is JSON null for a callback vectorizer: the event trigger failed
    every ALTER TABLE of its table ("cannot extract elements from a scalar"), and CREATE
    TABLE of the name after a DROP."""
    make_posts(conn, schema)
    v = pgvz.Vectorize(db.dsn, "posts", schema_name=schema)
    v.register()
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN x int").format(s(schema, "posts")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (4, 'four', 1)").format(s(schema, "posts")))
    conn.execute(sql.SQL("DROP TABLE {}").format(s(schema, "posts")))
    make_posts(conn, schema, n=2)
    seen = {}
    while v.process(lambda rows, _: seen.update({r["locked_id"]: r["body"] for r in rows})) > 0:
        pass
    assert seen[1] == "post 1" and seen[2] == "post 2", "the new table is followed"
    v.close()


def test_4_a_table_dropped_and_created_again_is_followed(db, conn, schema):
    """DROP TABLE then CREATE TABLE of the name: with the same shape the new table got no
    triggers (its rows never arrived, the old embeddings stayed, coverage 200%); with
    another key the CREATE was refused. Now the same shape is taken on (its rows queued, the
    old ones' embeddings deleted, unchanged texts keep their vectors), and another key is
    accepted with a warning and left alone."""
    make_posts(conn, schema, n=4)
    v = pipeline(db, schema).create()
    v.sync(progress=False)
    conn.execute(sql.SQL("DROP TABLE {}").format(s(schema, "posts")))
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(s(schema, "posts")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'post 1'), (2, 'changed'), (9, 'new')").format(s(schema, "posts")))
    report = v.sync(progress=False)
    assert embedded(conn, schema) == rows_of(conn, schema) == [(1, "post 1"), (2, "changed"), (9, "new")]
    assert report.embedded == 2, "the unchanged row keeps its vector"
    st = v.status()
    assert st["coverage_pct"][0] == 100.0 and st["embedded_rows"][0] == 3
    # another key: the CREATE goes through, the vectorizer leaves that table alone
    conn.execute(sql.SQL("DROP TABLE {}").format(s(schema, "posts")))
    conn.execute(sql.SQL("CREATE TABLE {} (post_id int PRIMARY KEY, body text)").format(s(schema, "posts")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'x')").format(s(schema, "posts")))
    assert conn.execute("SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal",
                        [f'"{schema}"."posts"']).fetchone()[0] == 0
    # a key of another type is followed: the vectorizer's tables take the type
    conn.execute(sql.SQL("DROP TABLE {}").format(s(schema, "posts")))
    conn.execute(sql.SQL("CREATE TABLE {} (id text PRIMARY KEY, body text)").format(s(schema, "posts")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('a', 'text key')").format(s(schema, "posts")))
    v.close()
    v = pgvz.Vectorizer.open(db, v.name, embedder=HashingEmbedder(8))
    v.sync(progress=False)
    assert embedded(conn, schema) == [("a", "text key")]
    # and back to a number, which the key 'a' kept for the dropped table cannot become: the
    # embeddings of that table's rows go, the new table is followed (found by the property test)
    conn.execute(sql.SQL("DROP TABLE {}").format(s(schema, "posts")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('b')").format(s(*v._queue.queue)))
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, body text)").format(s(schema, "posts")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (5, 'five')").format(s(schema, "posts")))
    v.sync(progress=False)
    assert embedded(conn, schema) == [(5, "five")]
    v.close()


def test_5_the_tables_owner_gets_the_guards_for_its_partitions_too(db, conn, schema):
    """The owner without access to pgvz: its new partition gets the triggers (before: none,
    and no warning), so rows written straight into it are synced."""
    t = s(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text, PRIMARY KEY (id, at)) "
                         "PARTITION BY RANGE (at)").format(t))
    v = pipeline(db, schema, table="ev").create()
    with role(conn, "owner") as owner:
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(t, s(owner)))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(s(schema), s(owner)))
        with as_role(db, owner) as o:
            o.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
                      .format(s(schema, "ev_2026"), t))
            o.execute(sql.SQL("INSERT INTO {} VALUES (1, '2026-03-01', 'straight in')").format(s(schema, "ev_2026")))
        v.sync(progress=False)
        assert conn.execute(sql.SQL("SELECT ev_id, contents FROM {}").format(s(schema, "ev_embedding"))).fetchall() \
            == [(1, "straight in")]
        v.drop()


def test_6_two_phase_commit_works_on_vectorized_tables(db, conn, schema):
    """The trigger's NOTIFY made PREPARE TRANSACTION fail on the table ("cannot PREPARE a
    transaction that has executed LISTEN, UNLISTEN, or NOTIFY"), for both APIs. Where the
    server allows prepared transactions the trigger sends none; workers poll."""
    if int(conn.execute("SHOW max_prepared_transactions").fetchone()[0]) == 0:
        pytest.skip("this server allows no prepared transactions (max_prepared_transactions = 0)")
    make_posts(conn, schema, n=1)
    make_posts(conn, schema, n=1, table="notes")
    v = pipeline(db, schema).create()
    cb = pgvz.Vectorize(db.dsn, "notes", schema_name=schema)
    cb.register()
    for table, key in (("posts", 2), ("notes", 2)):
        gid = f"pgvz-{uuid.uuid4().hex[:8]}"
        with psycopg.connect(db.dsn, autocommit=True) as c:
            c.execute("BEGIN")
            c.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'prepared')").format(s(schema, table)), [key])
            c.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
            c.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(gid)))
    v.sync(progress=False)
    assert embedded(conn, schema) == [(1, "post 1"), (2, "prepared")]
    seen = {}
    while cb.process(lambda rows, _: seen.update({r["locked_id"]: r["body"] for r in rows})) > 0:
        pass
    assert seen == {1: "post 1", 2: "prepared"}
    v.close(), cb.close()


@pytest.mark.slow
def test_7_a_statement_whose_keys_pass_1_gb_is_queued_in_slices(db, conn, schema):
    """8,000 keys of 150 kB are 1.2 GB: one array_agg of them failed the INSERT ("array size
    exceeds the maximum allowed"). ~50 s for the data alone: make stress runs it."""
    t = s(schema, "wide")
    conn.execute(sql.SQL("CREATE TABLE {} (k text PRIMARY KEY, body text)").format(t))
    v = pgvz.Vectorize(db.dsn, "wide", schema_name=schema, id_column_name="k")
    v.register()
    conn.execute(sql.SQL("INSERT INTO {} SELECT repeat('x', 150000) || i, 'b' FROM generate_series(1, 8000) i")
                 .format(t))
    inbox = v._queue.inbox
    slices, keys = conn.execute(sql.SQL("SELECT count(*), sum(cardinality(k)) FROM {}").format(s(*inbox))).fetchone()
    assert keys == 8000 and slices >= 9
    v.close()


def test_8_create_never_makes_the_application_wait(db, conn, schema, monkeypatch):
    """CREATE TRIGGER waited forever behind an open transaction on the table, and the
    application's next INSERT queued behind it; a create() on another table waited on the
    install lock. Now each try waits 100 ms, then create() gives up saying who holds it."""
    make_posts(conn, schema)
    make_posts(conn, schema, table="notes")
    monkeypatch.setattr(queue_mod, "LOCK_WAIT", 3.0)
    holder = psycopg.connect(db.dsn)
    holder.execute(sql.SQL("INSERT INTO {} VALUES (10, 'open transaction')").format(s(schema, "posts")))
    outcome = {}

    def create():
        try:
            pipeline(db, schema).create()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=create)
    thread.start()
    try:
        time.sleep(0.3)
        # the application's writes go on, not queued behind the create's lock request
        with psycopg.connect(db.dsn, autocommit=True, options="-c lock_timeout=2s") as app:
            for i in range(20, 25):
                app.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'app')").format(s(schema, "posts")), [i])
                time.sleep(0.05)
        # and a vectorizer on another table is created meanwhile
        other = pipeline(db, schema, table="notes").create()
        thread.join(30)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), LockUnavailable)
        assert f"pid {holder.info.backend_pid}" in str(outcome["error"])
    finally:
        holder.rollback()
        holder.close()
        thread.join(30)
    assert other.sync(progress=False).processed == 3
    v = pipeline(db, schema).create()  # and once the transaction has ended it goes through
    assert v.sync(progress=False).processed == 8
    v.close(), other.close()


# --- 9-15: batches, the queue and the model --------------------------------------------


class Gate(HashingEmbedder):
    """Blocks in the model call until released: a slow embedding service."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.entered, self.release = threading.Event(), threading.Event()

    def embed_documents(self, texts):
        self.entered.set()
        self.release.wait(60)
        return super().embed_documents(texts)


def test_9_no_lock_on_the_source_while_the_model_works(db, conn, schema):
    """The model ran inside the claim's transaction, which held AccessShareLock on the source:
    an ALTER TABLE waited for the model, and every query behind it too."""
    make_posts(conn, schema)
    gate = Gate(8)
    v = pipeline(db, schema, embedder=gate).create()
    thread = threading.Thread(target=lambda: v.sync(progress=False, lanes=1))
    thread.start()
    try:
        assert gate.entered.wait(30)
        with psycopg.connect(db.dsn, autocommit=True, options="-c lock_timeout=3s") as app:
            app.execute(sql.SQL("ALTER TABLE {} ADD COLUMN extra int").format(s(schema, "posts")))
            assert app.execute(sql.SQL("SELECT count(*) FROM {}").format(s(schema, "posts"))).fetchone()[0] == 3
            held = app.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.relation = %s::regclass AND a.application_name = 'pgvz_nb worker'",
                [f'"{schema}"."posts"']).fetchone()[0]
            assert held == 0
    finally:
        gate.release.set()
        thread.join(60)
    assert embedded(conn, schema) == rows_of(conn, schema)
    v.close()


SERVER_STATES = ["40001", "40P01", "55P03", "55006", "57014", "57P01", "25P03", "25006", "08006", "53100",
                 "53200", "53300", "53400", "58030", "XX000", "42501", "42P01", "3F000"]


@pytest.mark.parametrize("state", SERVER_STATES)
def test_10_a_server_error_in_a_batch_charges_no_row(db, conn, schema, state):
    """The fault-class test: an error of each SQLSTATE class that is the server's doing
    (serialization, deadlock, lock/statement/idle timeouts, admin shutdown, connection loss,
    insufficient resources, system, privileges, missing objects), raised by the server in
    the middle of a batch, puts no row in the failed table and charges no attempt; the next
    round syncs them. (Raised with RAISE ... USING ERRCODE in the claim's transaction: the
    server sends that SQLSTATE; the real lock, statement and idle timeouts and a terminated
    session follow below.)"""
    make_posts(conn, schema, n=6)
    v = pgvz.Vectorize(db.dsn, "posts", schema_name=schema, max_attempts=1)
    calls, seen = [], []

    def callback(rows, vec):
        calls.append(len(rows))
        if len(calls) == 1:
            vec.connection.execute(sql.SQL(
                "DO $$ BEGIN RAISE EXCEPTION 'injected by the test' USING ERRCODE = {}; END $$"
            ).format(sql.Literal(state)))
        seen.extend(r["locked_id"] for r in rows)

    outcome = _try(lambda: v.process(callback))
    assert failed_count(conn, v) == 0
    if state in ("40001", "40P01"):  # rolled back by the server: claimed again at once
        assert outcome == 6 and sorted(seen) == [1, 2, 3, 4, 5, 6]
    else:
        assert isinstance(outcome, PgvzError) and "injected by the test" in str(outcome)
        assert conn.execute(sql.SQL("SELECT count(*), max(attempts) FROM {}").format(
            s(*v._queue.queue))).fetchone() == (6, 0), "the whole claim went back, uncharged"
        while v.process(callback) > 0:
            pass
        assert sorted(seen) == [1, 2, 3, 4, 5, 6] and failed_count(conn, v) == 0
    v.close()


def test_10_real_lock_statement_and_idle_timeouts_and_a_killed_session_charge_no_row(db, conn, schema):
    """The same with the server's own errors in the pipeline: a lock held on the destination
    (CREATE INDEX, REINDEX) meets the worker's lock_timeout; a statement_timeout; an
    idle_in_transaction_session_timeout while the model works; the session terminated by an
    administrator. Before, a lock timeout was charged to the rows: halved to single rows,
    all of them in the failed table."""
    make_posts(conn, schema, n=20)
    slow = Gate(8)
    v = pipeline(db, schema, embedder=slow, max_attempts=1).create()
    dest = s(schema, "posts_embedding")

    def run(setup=None, during=None):
        slow.entered.clear(), slow.release.clear()
        v._ready()
        if setup:
            v._conn.execute(setup)
            v._conn.commit()
        thread = threading.Thread(target=lambda: outcome.append(_try(lambda: v.sync(progress=False, lanes=1))))
        thread.start()
        assert slow.entered.wait(30)
        if during:
            during()
        slow.release.set()
        thread.join(60)

    with psycopg.connect(db.dsn) as other:
        outcome: list = []
        # a lock on the destination, met by the worker's lock_timeout
        run(during=lambda: other.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(dest)))
        # and by a statement_timeout instead
        run(setup=sql.SQL("SET lock_timeout = 0; SET statement_timeout = '300ms'"))
        other.rollback()
        run(setup=sql.SQL("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = '200ms'"),
            during=lambda: time.sleep(0.6))
        v.close()
        run(during=lambda: other.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         "WHERE application_name = 'pgvz_nb worker' AND state LIKE 'idle in transaction%%'"))
        other.rollback()
    assert all(isinstance(o, PgvzError) for o in outcome), outcome
    assert failed_count(conn, v) == 0
    assert conn.execute(sql.SQL("SELECT count(*), max(attempts) FROM {}").format(s(*v._queue.queue))).fetchone() == (20, 0)
    v.close()
    slow.release.set()
    v = pgvz.Vectorizer.open(db, v.name, embedder=HashingEmbedder(8))
    assert v.sync(progress=False).processed == 20 and failed_count(conn, v) == 0
    v.close()


def _try(fn):
    try:
        return fn()
    except BaseException as exc:  # recorded for the test to look at
        return exc


def make_timed(conn, schema):
    t = s(schema, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, at timestamptz, day date, "
                         "score float8, amount numeric)").format(t))
    conn.execute(sql.SQL(
        "INSERT INTO {} VALUES (1, 'forever', 'infinity', 'infinity', 'NaN', 'NaN'), "
        "(2, 'long ago', '0044-03-15 BC', '0044-03-15 BC', 'Infinity', 'Infinity'), "
        "(3, 'far ahead', '12000-01-01', '12000-01-01', '-Infinity', '-Infinity'), "
        "(4, 'today', '2026-12-01 10:00+00', '2026-12-01', 1.5, 2.5)").format(t))


def test_11_12_values_python_cannot_hold_are_embedded_not_blocking(db, conn, schema):
    """One 'infinity' timestamp failed the claim's fetch itself: the row stayed first in
    line and every later sync failed, with nothing in errors(). NaN or Infinity in a float or
    numeric metadata column could never be stored (jsonb has no NaN). Now such values are
    embedded: times Python cannot hold come as their text, and non-finite numbers as
    strings in the metadata; a time no uuid can hold gets a random id."""
    make_timed(conn, schema)
    v = pgvz.Vectorizer(db, f"{schema}.events", template="{body} at {at} on {day}", time_column="at",
                        metadata=["at", "day", "score", "amount"], embedder=HashingEmbedder(8)).create()
    report = v.sync(progress=False)
    assert report.failed == 0 and report.processed == 4
    got = {r[0]: r[1:] for r in conn.execute(sql.SQL(
        "SELECT events_id, contents, metadata->>'score', metadata->>'amount', metadata->>'at' FROM {}").format(
        s(schema, "events_embedding")))}
    assert got[1] == ("forever at infinity on infinity", "NaN", "NaN", "infinity")
    assert got[2][1:3] == ("Infinity", "Infinity") and got[3][1:3] == ("-Infinity", "-Infinity")
    assert got[4][0].startswith("today at 2026-12-01")
    # and later edits arrive, as they did not before
    conn.execute(sql.SQL("UPDATE {} SET body = body || ' (edited)'").format(s(schema, "events")))
    assert v.sync(progress=False).processed == 4
    assert all("(edited) at" in c for c, in conn.execute(sql.SQL(
        "SELECT contents FROM {}").format(s(schema, "events_embedding"))).fetchall())
    v.close()
    # a key Python cannot hold, through the callback API
    conn.execute(sql.SQL("CREATE TABLE {} (at timestamptz PRIMARY KEY, body text)").format(s(schema, "ticks")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('infinity', 'last'), ('2026-01-01', 'first')").format(
        s(schema, "ticks")))
    cb = pgvz.Vectorize(db.dsn, "ticks", schema_name=schema, id_column_name="at")
    seen = []
    while cb.process(lambda rows, _: seen.extend(r["body"] for r in rows)) > 0:
        pass
    assert sorted(seen) == ["first", "last"]
    cb.close()


def test_13_a_where_that_can_change_by_itself_is_refused(db, conn, schema):
    """where="publish_at <= now()" was accepted, and a scheduled post was never embedded
    after it went live (the filter is evaluated when a row changes)."""
    make_timed(conn, schema)
    for where in ("at <= now()", "random() > 0.5", "at::date > '2026-01-01'",
                  "id IN (SELECT 1)"):
        with pytest.raises(PgvzError, match="can change its answer"):
            pgvz.Vectorizer(db, f"{schema}.events", template="{body}", where=where,
                            embedder=HashingEmbedder(8)).create()
    v = pgvz.Vectorizer(db, f"{schema}.events", template="{body}", where="at IS NOT NULL AND score > 0",
                        embedder=HashingEmbedder(8)).create()
    assert v.sync(progress=False).processed == 4
    v.close()


class WrongCount(HashingEmbedder):
    def embed_documents(self, texts):
        return []


def test_14_an_embedder_returning_the_wrong_number_of_vectors_says_so(db, conn, schema):
    make_posts(conn, schema, n=3)
    v = pipeline(db, schema, embedder=WrongCount(8)).create()
    v.sync(progress=False)
    errors = set(v.queue()["last_error"])
    assert errors == {"DimensionMismatch: the embedder returned 0 vector(s) for 1 text(s) of "
                      f"{schema}.posts_embedding; an Embeddings.embed_documents must return one vector "
                      "per text, in order"}
    v.close()


def test_15_rows_the_service_answers_with_500_are_isolated_the_rest_embed(db, conn, schema, monkeypatch):
    """HTTP 500 for some texts counted as an outage: the whole batch waited out the 120 s
    budget, went back with attempts + 1 and was never halved (20 such rows in 1,000: 33 rows
    embedded in 160 s). A probe tells the two apart: the service answers pgvz_nb's own text,
    so the 500s are the rows'; they are isolated, the others embed in the same sync."""
    langchain_openai = pytest.importorskip("langchain_openai")
    from .openai_server import FakeOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    t = s(schema, "docs")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT i, CASE WHEN mod(i, 50) = 7 THEN 'poison ' ELSE 'doc ' END || i "
                         "FROM generate_series(1, 400) i").format(t))
    with FakeOpenAI(HashingEmbedder(8)) as server:
        server.fail_texts = lambda text: text.startswith("poison")
        emb = langchain_openai.OpenAIEmbeddings(model="m", base_url=server.base_url, max_retries=0,
                                                dimensions=8, check_embedding_ctx_length=False)
        v = pgvz.Vectorizer(db, f"{schema}.docs", template="{body}", embedder=emb).create()
        report = v.sync(progress=False)
        assert report.processed == 392 and report.failed == 8
        retrying = v.queue()
        assert sorted(retrying["id"]) == [i for i in range(1, 401) if i % 50 == 7]
        assert set(retrying["attempts"]) == {1} and failed_count(conn, v) == 0
        assert all("answers others" in e for e in retrying["last_error"])
        # while the service is down for everything, nothing is charged
        conn.execute(sql.SQL("UPDATE {} SET body = 'doc again ' || id WHERE id <= 10").format(t))
        server.fail_texts = lambda text: True
        monkeypatch.setattr("pgvz_nb.pipeline._UP_FOR", 0.0)
        v._ready()[1]._service_up_at = float("-inf")
        v.config.transient_budget = 2.0
        with pytest.raises(EmbeddingUnavailable):
            v.sync(progress=False)
        assert set(v.queue().query("id <= 10 and id != 7")["attempts"]) == {0}
        v.close()


def test_15_a_worker_stops_within_seconds_of_sigterm_whatever_it_waits_for(db, conn, schema, tmp_path):
    """During a long wait on the model's service `pgvz worker` did not stop within 15 s of
    SIGTERM. Now the model call is waited on in slices, and the batch goes back whole."""
    import os
    import signal
    import subprocess
    import sys

    pytest.importorskip("langchain_openai")
    from .openai_server import FakeOpenAI

    make_posts(conn, schema, n=5)
    with FakeOpenAI(HashingEmbedder(8)) as server:
        import langchain_openai

        os.environ.setdefault("OPENAI_API_KEY", "sk-test")
        emb = langchain_openai.OpenAIEmbeddings(model="m", base_url=server.base_url, max_retries=0,
                                                dimensions=8, check_embedding_ctx_length=False)
        v = pipeline(db, schema, embedder=emb).create()
        server.hang = 120.0
        env = {**os.environ, "PGVZ_DSN": db.dsn, "OPENAI_API_KEY": "sk-test"}
        proc = subprocess.Popen([sys.executable, "-m", "pgvz_nb.cli", "worker", v.name], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not server.requests and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.requests, "the worker never called the model"
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)  # the service would hang for 120 s more
        finally:
            if proc.poll() is None:
                proc.kill()
            server.hang = 0.0
        assert failed_count(conn, v) == 0
        assert sorted(v.queue()["attempts"]) == [0] * 5, "the batch went back whole"
        v.close()


# --- found by the DDL property test ------------------------------------------------------


def test_16_a_schema_renamed_under_its_vectorizers_is_followed(db, conn):
    """ALTER SCHEMA ... RENAME was followed by nothing (the event trigger did not even run
    for it): a callback vectorizer's trigger named its inbox in that schema, so every write
    to the table failed from then on ("relation ... does not exist"), and the catalog named
    a source, queue, destination that were gone. Found by tests/test_ddl_property.py."""
    from .conftest import drop_schema

    schema = f"t_{uuid.uuid4().hex[:10]}"
    renamed = schema + "_r"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(s(schema)))
    try:
        make_posts(conn, schema, n=2)
        make_posts(conn, schema, n=2, table="notes")
        v = pipeline(db, schema).create()
        cb = pgvz.Vectorize(db.dsn, "notes", schema_name=schema)
        cb.register()
        v.sync(progress=False)
        conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(s(schema), s(renamed)))
        for table in ("posts", "notes"):  # the application's writes go on
            conn.execute(sql.SQL("INSERT INTO {} VALUES (3, 'after the rename')").format(s(renamed, table)))
        v.close(), cb.close()
        v = pgvz.Vectorizer.open(db, v.name, embedder=HashingEmbedder(8))
        assert v.source == (renamed, "posts") and v.destination == (renamed, "posts_embedding")
        v.sync(progress=False)
        assert embedded(conn, renamed) == [(1, "post 1"), (2, "post 2"), (3, "after the rename")]
        row = conn.execute("SELECT source_schema, queue_schema, config->'failed'->>0, config->'function'->>0 "
                           "FROM pgvz.vectorizers WHERE name = %s", [cb.name]).fetchone()
        assert row == (renamed, renamed, renamed, renamed)
        v.close()
    finally:
        conn.rollback()
        drop_schema(db, renamed)
        drop_schema(db, schema)


def test_16_renaming_schema_pgvz_is_refused(db, conn, schema):
    make_posts(conn, schema, n=1)
    pipeline(db, schema).create().close()
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as err:
        conn.execute("ALTER SCHEMA pgvz RENAME TO pgvz_old")
    assert "keep the name pgvz" in err.value.diag.message_hint
    conn.rollback()
    conn.execute(sql.SQL("INSERT INTO {} VALUES (2, 'still queued')").format(s(schema, "posts")))


def test_17_a_callback_vectorizers_partition_is_detached_before_it_is_dropped(db, conn, schema):
    """DROP TABLE of a partition takes rows no trigger can read, and a callback queue has no
    destination to find their keys in: the consumer never heard of them (found by the DDL
    property test). The DROP is refused with what to do; DETACH first queues them."""
    t = s(schema, "ev")
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date, body text, PRIMARY KEY (id, at)) "
                         "PARTITION BY RANGE (at)").format(t))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
                 .format(s(schema, "ev_2025"), t))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
                 .format(s(schema, "ev_2026"), t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2025-05-01', 'old'), (2, '2026-05-01', 'new')").format(t))
    cb = pgvz.Vectorize(db.dsn, "ev", schema_name=schema, id_column_name=["id", "at"])
    mirror = {}

    def drain():
        def callback(rows, _):
            for r in rows:
                key = r["locked_id"]
                if r["id"] is None:
                    mirror.pop(key, None)
                else:
                    mirror[key] = r["body"]
        while cb.process(callback) > 0:
            pass

    drain()
    assert sorted(mirror.values()) == ["new", "old"]
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as err:
        conn.execute(sql.SQL("DROP TABLE {}").format(s(schema, "ev_2025")))
    assert "detach it first" in err.value.diag.message_hint
    conn.rollback()
    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(t, s(schema, "ev_2025")))
    conn.execute(sql.SQL("DROP TABLE {}").format(s(schema, "ev_2025")))
    drain()
    assert list(mirror.values()) == ["new"]
    # dropping the whole source is the application's to do
    conn.execute(sql.SQL("DROP TABLE {}").format(t))
    cb.close()


def test_16_a_schema_holding_an_old_layout_inbox_is_not_renamed_under_it(db, conn, schema):
    """Callback vectorizers made before this version keep their inbox beside the table;
    renaming that schema would make every write fail, so it is refused, saying how to move
    the inbox (register again)."""
    from pgvz_nb.queue import Queue

    make_posts(conn, schema, n=1)
    with db.connect() as c:
        Queue.register(c, name=f"{schema}.legacy", source=(schema, "posts"), queue=(schema, "legacy_q"),
                       inbox=(schema, "legacy_inbox"), failed=(schema, "legacy_failed"),
                       function=(schema, "legacy_fn"), triggers={e: f"legacy_{e}" for e in
                                                                 ("insert", "update", "delete", "truncate")},
                       extra={"kind": "callback"})
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as err:
        conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(s(schema), s(schema + "_r")))
    assert "register() it again" in err.value.diag.message_hint
    conn.rollback()
    conn.execute(sql.SQL("INSERT INTO {} VALUES (2, 'written')").format(s(schema, "posts")))


def test_18_a_column_named_like_the_triggers_aliases_does_not_hide_updates(db, conn, schema):
    """The UPDATE trigger of a callback vectorizer (which compares whole rows) read the row
    as ``t::text``, and a column called "t" is what PostgreSQL reads for that: from the
    moment the application added one, no UPDATE was queued (found by the DDL property test,
    after ADD COLUMN t). Now ``ROW(t.*)``."""
    t = s(schema, "posts")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, t bool DEFAULT true, "
                         "n int, o int, present bool)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (1, 'one'), (2, 'two')").format(t))
    cb = pgvz.Vectorize(db.dsn, "posts", schema_name=schema)
    while cb.process(lambda rows, _: None) > 0:
        pass
    conn.execute(sql.SQL("UPDATE {} SET body = 'changed' WHERE id = 1").format(t))
    conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (2, 'upserted') ON CONFLICT (id) DO UPDATE "
                         "SET body = excluded.body").format(t))
    seen = {}
    while cb.process(lambda rows, _: seen.update({r["locked_id"]: r["body"] for r in rows})) > 0:
        pass
    assert seen == {1: "changed", 2: "upserted"}
    cb.close()


def test_19_a_running_worker_follows_a_key_made_bigint(db, conn, schema):
    """A vectorizer kept open (a worker) cached the destination's column types for its binary
    COPY: after the application's ALTER COLUMN id TYPE bigint, every row past 2^31 failed
    in the COPY and was charged until it landed in the failed table (found while fixing the
    property test's re-created tables)."""
    make_posts(conn, schema, n=2)
    v = pipeline(db, schema).create()
    v.sync(progress=False)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id TYPE bigint").format(s(schema, "posts")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (3000000000, 'big')").format(s(schema, "posts")))
    report = v.sync(progress=False)
    assert report.failed == 0 and embedded(conn, schema)[-1] == (3000000000, "big")
    v.close()


# --- found by the review of this change (each made a role a superuser, leaked, or stalled) ----


def _evil(conn, schema, who):
    """A function that makes ``who`` a superuser when a superuser runs it (and does nothing
    when anyone else does)."""
    conn.execute(sql.SQL(
        "CREATE FUNCTION {}(text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
        "BEGIN EXECUTE format('ALTER ROLE %I SUPERUSER', {}); EXCEPTION WHEN insufficient_privilege THEN NULL; END; "
        "RETURN true; END $$"
    ).format(s(schema, "evil"), sql.Literal(who)))


def _is_super(conn, who) -> bool:
    return conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [who]).fetchone()[0]


def test_20_the_event_triggers_touch_no_table_another_role_put_in_pgvz_nbs_place(db, conn):
    """The event functions run as a superuser. The owner of the source's schema could drop the
    superuser's destination and put in its place a view (read when a table of the source's
    name was taken on) or a table with a CHECK calling its function (rewritten when the key
    was retyped): either made it a superuser. They now act only on tables as pgvz_nb made
    them, and a new table under the source's name only if it belongs to the source's owner."""
    with role(conn, "alice") as alice:
        schema = f"t_{uuid.uuid4().hex[:8]}"
        conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(s(schema), s(alice)))
        try:
            with as_role(db, alice) as a:
                make_posts(a, schema)
                _evil(a, schema, alice)
            v = pipeline(db, schema).create()
            v.sync(progress=False)
            with as_role(db, alice) as a:
                a.execute(sql.SQL("DROP TABLE {}").format(s(schema, "posts_embedding")))
                a.execute(sql.SQL("CREATE VIEW {} AS SELECT 1 AS posts_id WHERE {}('x')").format(
                    s(schema, "posts_embedding"), s(schema, "evil")))
                a.execute(sql.SQL("DROP TABLE {}").format(s(schema, "posts")))
                make_posts(a, schema)
                assert not _is_super(conn, alice)
                a.execute(sql.SQL("DROP VIEW {}").format(s(schema, "posts_embedding")))
                a.execute(sql.SQL(
                    "CREATE TABLE {} (id uuid, metadata jsonb, contents text, embedding vector(8), posts_id int "
                    "CHECK ({}(posts_id::text)), chunk_seq int, chunk_hash text)").format(
                    s(schema, "posts_embedding"), s(schema, "evil")))
                a.execute(sql.SQL("INSERT INTO {} (posts_id) VALUES (1)").format(s(schema, "posts_embedding")))
                try:
                    a.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id TYPE bigint").format(s(schema, "posts")))
                except psycopg.errors.FeatureNotSupported as exc:  # refused, saying why
                    assert "posts_embedding is owned by" in str(exc)
            assert not _is_super(conn, alice)
            v.close()
        finally:
            conn.rollback()
            drop = __import__("tests.conftest", fromlist=["drop_schema"]).drop_schema
            drop(db, schema)


def test_20_a_key_type_of_another_role_is_refused_at_create(db, conn, schema):
    """A key of a type another role owns (an enum, a domain) would run that role's casts and
    CHECKs inside the trigger and the event functions, with their privileges."""
    with role(conn, "alice") as alice:
        conn.execute(sql.SQL("CREATE TYPE {} AS ENUM ('a', 'b')").format(s(schema, "kind")))
        conn.execute(sql.SQL("ALTER TYPE {} OWNER TO {}").format(s(schema, "kind"), s(alice)))
        conn.execute(sql.SQL("CREATE TABLE {} (id {} PRIMARY KEY, body text)").format(
            s(schema, "posts"), s(schema, "kind")))
        with pytest.raises(UntrustedObject, match=f"owned by {alice}"):
            pipeline(db, schema).create()
        with pytest.raises(UntrustedObject):
            pgvz.Vectorize(db.dsn, "posts", schema_name=schema).register()
        conn.execute(sql.SQL("DROP TABLE {}").format(s(schema, "posts")))


def test_20_a_sync_writes_no_destination_another_role_replaced(db, conn):
    """A destination replaced by its schema's owner with one of its own (a CHECK calling its
    function): a superuser's sync ran that code. Now the sync refuses: the table is not the
    vectorizer owner's."""
    with role(conn, "alice") as alice:
        schema = f"t_{uuid.uuid4().hex[:8]}"
        conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(s(schema), s(alice)))
        try:
            make_posts(conn, schema)
            v = pipeline(db, schema).create()
            with as_role(db, alice) as a:
                _evil(a, schema, alice)
                a.execute(sql.SQL("DROP TABLE {}").format(s(schema, "posts_embedding")))
                a.execute(sql.SQL(
                    "CREATE TABLE {} (id uuid PRIMARY KEY, metadata jsonb, contents text CHECK ({}(contents)), "
                    "embedding vector(8), posts_id int, chunk_seq int, chunk_hash text)").format(
                    s(schema, "posts_embedding"), s(schema, "evil")))
            with pytest.raises(UntrustedObject, match=f"owned by role {alice}"):
                v.sync(progress=False)
            assert not _is_super(conn, alice)
            v.close()
        finally:
            conn.rollback()
            __import__("tests.conftest", fromlist=["drop_schema"]).drop_schema(db, schema)


def test_20_renaming_an_unrelated_schema_takes_nothing_on(db, conn):
    """The catalog followed a schema rename by name ("the old schema is gone, and the renamed
    one holds a table of the source's name"): a vectorizer whose source was dropped took on
    an unrelated table and embedded its rows. Now the old names are noted at the statement's
    start, by the schema's oid, and followed exactly."""
    from .conftest import drop_schema

    src, dst, other = (f"t_{uuid.uuid4().hex[:8]}" for _ in range(3))
    for name in (src, dst):
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(s(name)))
    mallory = f"mallory_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(s(mallory)))
    conn.execute(sql.SQL("GRANT CREATE ON DATABASE postgres TO {}").format(s(mallory)))
    try:
        make_posts(conn, src)
        v = pipeline(db, src, destination=(dst, "posts_embedding")).create()
        v.sync(progress=False)
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(s(src)))
        with as_role(db, mallory) as m:  # an unrelated role, with a table of its own
            m.execute(sql.SQL("CREATE SCHEMA {}").format(s(other)))
            m.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(s(other, "posts")))
            m.execute(sql.SQL("INSERT INTO {} VALUES (7, 'CONFIDENTIAL')").format(s(other, "posts")))
            m.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(s(other), s(src)))
            m.execute(sql.SQL("ALTER TABLE {} ADD COLUMN x int").format(s(src, "posts")))
        assert conn.execute("SELECT source_schema FROM pgvz.vectorizers WHERE name = %s", [v.name]).fetchone() == (src,)
        assert "CONFIDENTIAL" not in str(conn.execute(sql.SQL("SELECT contents FROM {}").format(
            s(dst, "posts_embedding"))).fetchall())
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                            [f'"{src}"."posts"']).fetchone()[0] == 0
        assert len(embedded(conn, dst)) == 3
        v.close()
    finally:
        conn.rollback()
        for name in (src, dst, other):
            drop_schema(db, name)
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(s(mallory)))
        conn.execute(sql.SQL("DROP ROLE {}").format(s(mallory)))


def test_20_a_where_that_raises_for_one_row_sets_that_row_aside(db, conn, schema):
    """A where= whose (immutable) function raised for one row failed the read of every batch
    holding it, and so every sync: nothing was embedded, nothing was in errors()."""
    conn.execute(sql.SQL(
        "CREATE FUNCTION {}(text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN "
        "IF $1 = 'post 7' THEN RAISE EXCEPTION 'cannot decide for %%', $1; END IF; RETURN true; END $$"
    ).format(s(schema, "decide")), [])
    make_posts(conn, schema, n=20)
    v = pipeline(db, schema, where=sql.SQL("{}(body)").format(s(schema, "decide")).as_string(conn),
                 max_attempts=1).create()
    report = v.sync(progress=False)
    assert report.processed == 19 and report.failed == 1
    assert "cannot decide for post 7" in v.errors()["last_error"][0]
    v.close()


def test_20_a_pending_backfill_follows_a_renamed_table(db, conn, schema):
    """An install that stopped before queueing the rows (a killed notebook) left the tables to
    queue by name: after a rename they were skipped, and the rows never reached the
    destination."""
    make_posts(conn, schema, n=5)
    v = pipeline(db, schema).create()
    conn.execute("UPDATE pgvz.vectorizers SET config = jsonb_set(config, '{backfill}', %s) WHERE name = %s",
                 [psycopg.types.json.Jsonb([[schema, "posts"]]), v.name])
    conn.execute(sql.SQL("DELETE FROM {}").format(s(*v._queue.queue)))  # as if never queued
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO articles").format(s(schema, "posts")))
    v.close()
    v = pgvz.Vectorizer.open(db, v.name, embedder=HashingEmbedder(8))
    assert v.sync(progress=False).processed == 5
    v.close()


def test_20_without_event_triggers_a_key_change_never_fails_the_applications_writes(db, conn, schema):
    """Where no event trigger follows the table (none installed: no superuser ever ran
    create()), an int key made bigint failed every INSERT past 2^31 inside the trigger, and a
    renamed key every write. The statement now goes on, with a WARNING saying what to do."""
    make_posts(conn, schema, n=1)
    v = pipeline(db, schema).create()
    warnings = []
    conn.add_notice_handler(lambda d: warnings.append(d.message_primary))
    conn.execute("SET pgvz.partition_event_trigger = off")
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id TYPE bigint").format(s(schema, "posts")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (3000000000, 'big')").format(s(schema, "posts")))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN id TO post_id").format(s(schema, "posts")))
    conn.execute(sql.SQL("UPDATE {} SET body = 'still written'").format(s(schema, "posts")))
    assert any("were not queued" in w for w in warnings)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(s(schema, "posts"))).fetchone()[0] == 2
    v.close()
