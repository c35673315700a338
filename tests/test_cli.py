"""The pgvz command: status, sync, export, and workers woken by NOTIFY."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.embedders import HashingEmbedder
from pgvz_nb.sample import BLOG_POSTS, load_blog

from .chaos import spawn_worker, stop_workers


def pgvz_cmd(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pgvz_nb.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def make(db, schema, **kw):
    load_blog(db, schema=schema)
    return pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=HashingEmbedder(16),
                           name=f"cli_{schema}", **kw).create()


def embedded(conn, schema):
    return conn.execute(sql.SQL("SELECT count(DISTINCT blog_id) FROM {}").format(
        sql.Identifier(schema, "blog_embedding"))).fetchone()[0]


def test_status_sync_and_export(db, conn, schema, tmp_path):
    v = make(db, schema)
    out = pgvz_cmd("status", v.name, "--dsn", db.dsn)
    assert out.returncode == 0, out.stderr
    assert v.name in out.stdout and str(len(BLOG_POSTS)) in out.stdout
    out = pgvz_cmd("sync", v.name, "--dsn", db.dsn)
    assert out.returncode == 0, out.stderr
    assert f"processed {len(BLOG_POSTS)} rows" in out.stdout and embedded(conn, schema) == len(BLOG_POSTS)
    out = pgvz_cmd("export", v.name, str(tmp_path / "s.py"), "--dsn", db.dsn)
    assert out.returncode == 0 and (tmp_path / "s.py").exists()
    compile((tmp_path / "s.py").read_text(), "s.py", "exec")
    v.close()


def test_worker_wakes_on_notify_not_on_poll(db, conn, schema):
    v = make(db, schema)
    worker = subprocess.Popen([sys.executable, "-m", "pgvz_nb.cli", "worker", v.name, "--poll", "120",
                               "--dsn", db.dsn], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert "pgvz worker started" in worker.stderr.readline()
        deadline = time.time() + 60
        while embedded(conn, schema) < len(BLOG_POSTS) and time.time() < deadline:
            time.sleep(0.2)  # the first round drains the backfill
        assert embedded(conn, schema) == len(BLOG_POSTS)
        # where prepared transactions are allowed the triggers do not notify unless told to
        conn.execute("SET pgvz.notify = on")
        conn.execute(sql.SQL("UPDATE {} SET contents = 'woken by notify' WHERE id = 3").format(
            sql.Identifier(schema, "blog")))
        # with a 120 s poll, only the trigger's NOTIFY can wake the worker this soon
        while time.time() < deadline:
            got = conn.execute(sql.SQL("SELECT contents FROM {} WHERE blog_id = 3").format(
                sql.Identifier(schema, "blog_embedding"))).fetchall()
            if got == [("woken by notify",)]:
                break
            time.sleep(0.2)
        assert got == [("woken by notify",)]
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert "rows processed" in out
    finally:
        if worker.poll() is None:
            worker.kill()
    v.close()


def test_two_workers_drain_one_queue(db, conn, schema):
    v = make(db, schema, batch_size=4)
    conn.execute(sql.SQL(
        "INSERT INTO {} (title, author, contents, category) "
        "SELECT 'bulk ' || i, 'Bot', 'generated text number ' || i, 'Bulk' FROM generate_series(1, 300) i"
    ).format(sql.Identifier(schema, "blog")))
    workers = [spawn_worker(db, v.name) for _ in range(2)]
    deadline = time.time() + 120
    while embedded(conn, schema) < len(BLOG_POSTS) + 300 and time.time() < deadline:
        time.sleep(0.2)
    stop_workers(workers)
    outs = [w.communicate()[0] if w.stdout else "" for w in workers]
    assert all(w.returncode == 0 for w in workers), outs
    assert embedded(conn, schema) == len(BLOG_POSTS) + 300
    assert v.status()["pending"][0] == 0
    v.close()


def test_a_deadlock_puts_the_whole_batch_back_and_blames_no_row(db, conn, schema, caplog):
    """A deadlock with another session aborts a statement of the batch. Caught in the
    batch's savepoint, as a row's error used to be, it kept the claim's row locks (so the
    deadlock came back at every retry, a second each) and charged every row an attempt:
    23 rows "failed" in 45 s. Now the whole claim goes back, which lets the other session
    through, and is claimed again: no attempts, no failures, and not a lost connection."""
    import logging
    import threading

    from pgvz_nb.worker import Worker

    v = make(db, schema, batch_size=100)
    dest, queue = sql.Identifier(schema, "blog_embedding"), sql.Identifier(*v._queue.queue)
    worker = Worker(db, [v.name], poll=0.2)
    caplog.set_level(logging.WARNING, logger="pgvz_nb")
    runner = threading.Thread(target=worker.run)
    try:
        deadlock_with_worker(db, conn, dest, queue, runner)
        deadline = time.time() + 60
        while time.time() < deadline and embedded(conn, schema) < len(BLOG_POSTS):
            time.sleep(0.1)
    finally:
        worker.stop_event.set()
        if runner.is_alive():
            runner.join(timeout=60)
    assert embedded(conn, schema) == len(BLOG_POSTS) and v.status()["pending"][0] == 0
    assert worker.stats.failed == 0 and worker.stats.reconnects == 0 and v.errors().empty
    assert conn.execute("SELECT count(*) FROM pgvz.in_flight WHERE vectorizer = %s",
                        [v._queue.id]).fetchone()[0] == 0  # no trace of a "dead" worker left
    said = [r.getMessage() for r in caplog.records]
    assert any("deadlock detected" in m and "claiming again" in m for m in said), said
    assert not any("connection lost" in m for m in said), said
    v.close()


def deadlock_with_worker(db, conn, dest, queue, runner):
    with db.connect() as other:
        # the other session keeps writers out of the destination (readers may pass), so the
        # worker's batch blocks on its first write while holding its queue rows; then the
        # other session asks for those rows: a cycle, which the worker sees first (its
        # deadlock_timeout, 1 s, runs out before this one's 60 s)
        other.execute("SET deadlock_timeout = '60s'")
        other.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(dest))
        runner.start()
        deadline = time.time() + 60
        while time.time() < deadline and not conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE NOT l.granted AND l.relation = %s::regclass)",
                [dest.as_string(conn)]).fetchone()[0]:
            time.sleep(0.05)
        got = other.execute(sql.SQL("SELECT 1 FROM {} FOR UPDATE").format(queue)).fetchall()
        assert len(got) == len(BLOG_POSTS)  # the worker's claim went back: its rows were free
        other.commit()


def test_one_broken_vectorizer_does_not_stop_the_worker_for_the_others(db, conn, schema, caplog):
    """A worker draining every vectorizer used to die at the first one whose sync failed for
    a reason other than the connection (its source table dropped, say), and under a
    supervisor died again at every restart, starving the rest. Now that vectorizer is
    logged and reopened next round; the others go on. A renamed source is followed."""
    import logging

    from pgvz_nb.worker import Worker

    s = sql.Identifier
    for table in ("alpha", "beta", "gamma"):
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(s(schema, table)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'first')").format(s(schema, table)))
    vs = [pgvz.Vectorizer(db, f"{schema}.{t}", template="{body}", embedder=HashingEmbedder(8)).create()
          for t in ("alpha", "beta", "gamma")]
    worker = Worker(db, [v.name for v in vs], poll=0.1)
    worker.run(once=True)
    assert worker.stats.processed == 3
    conn.execute(sql.SQL("DROP TABLE {}").format(s(schema, "alpha")))  # alpha is broken for good
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO beta_renamed").format(s(schema, "beta")))
    for table in ("beta_renamed", "gamma"):
        conn.execute(sql.SQL("INSERT INTO {} VALUES (2, 'second')").format(s(schema, table)))
    conn.commit()
    caplog.set_level(logging.WARNING, logger="pgvz_nb.worker")
    worker.run(once=True)
    assert worker.stats.processed == 5 and worker.stats.errors == 1
    assert [r.getMessage() for r in caplog.records if vs[0].name in r.getMessage() and "alpha" in r.getMessage()]
    for v, table in ((vs[1], "beta_embedding"), (vs[2], "gamma_embedding")):
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(s(schema, table))).fetchone()[0] == 2
        assert v.status()["pending"][0] == 0 if v is vs[2] else True
    for v in vs:
        v.close()


def test_reconcile_command_queues_what_the_triggers_missed(db, conn, schema):
    v = make(db, schema)
    v.sync(progress=False)
    conn.execute("SET session_replication_role = replica")  # as a subscriber's apply worker writes
    conn.execute(sql.SQL("DELETE FROM {} WHERE id IN (1, 2)").format(sql.Identifier(schema, "blog")))
    conn.execute("RESET session_replication_role")
    conn.commit()
    assert v.status()["pending"][0] == 0
    out = pgvz_cmd("reconcile", v.name, "--dsn", db.dsn)
    assert out.returncode == 0, out.stderr
    assert f"{v.name}: queued 2 keys whose rows are gone, 0 rows never embedded" in out.stdout
    assert sorted(v.queue()["id"]) == [1, 2]
    v.sync(progress=False)
    assert embedded(conn, schema) == len(BLOG_POSTS) - 2
    v.close()
