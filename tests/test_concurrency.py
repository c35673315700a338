"""Several worker processes on one queue: never the same key at once, nothing lost."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from psycopg import sql

import pgvz_nb as pgvz

from .conftest import queued

WORKER = Path(__file__).with_name("worker_proc.py")


def test_four_workers_never_hold_one_key_and_see_every_last_version(db, conn, schema):
    s = lambda name: sql.Identifier(schema, name)  # noqa: E731
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, version int NOT NULL)").format(s("docs")))
    conn.execute(sql.SQL("CREATE TABLE {} (key int PRIMARY KEY, worker int)").format(s("inflight")))
    conn.execute(sql.SQL("CREATE TABLE {} (key int, worker int)").format(s("violations")))
    conn.execute(sql.SQL("CREATE TABLE {} (key int, worker int, version int, at timestamptz)").format(s("ledger")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT i, 0 FROM generate_series(1, 300) i").format(s("docs")))
    pgvz.Vectorize(db.dsn, "docs", schema_name=schema).register()

    workers = [
        subprocess.Popen([sys.executable, str(WORKER), db.dsn, schema, "docs", str(n), "7"])
        for n in range(4)
    ]
    # keep changing rows while the workers drain: duplicates and in-flight edits
    rng = random.Random(7)
    for _ in range(150):
        keys = rng.sample(range(1, 301), 5)
        conn.execute(sql.SQL("UPDATE {} SET version = version + 1 WHERE id = ANY(%s)").format(s("docs")), [keys])
        time.sleep(0.005)
    for w in workers:
        assert w.wait(timeout=120) == 0

    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(s("violations"))).fetchone()[0] == 0
    assert queued(conn, schema, "docs_embedding_work_queue") == []
    # the last time each key was processed, the worker saw its final version
    stale = conn.execute(
        sql.SQL(
            "SELECT d.id, d.version, l.version FROM {} d LEFT JOIN LATERAL "
            "(SELECT version FROM {} WHERE key = d.id ORDER BY at DESC LIMIT 1) l ON true "
            "WHERE l.version IS DISTINCT FROM d.version"
        ).format(s("docs"), s("ledger"))
    ).fetchall()
    assert stale == []
    per_worker = conn.execute(
        sql.SQL("SELECT count(DISTINCT worker) FROM {}").format(s("ledger"))
    ).fetchone()[0]
    assert per_worker >= 2, "the work should actually be shared"
