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
