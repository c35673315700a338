"""Helpers for the randomized tests: a source table, a stream of random changes, worker
processes, and the check that the destination holds exactly what the source implies."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import psycopg
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.embedders import HashingEmbedder
from pgvz_nb.queue import Queue

WORDS = ("cat dog train bread coffee tomato river night postgres vector index queue worker "
         "garden marathon sourdough espresso kitten leash ferry station compost harvest").split()
CATEGORIES = ["Pets", "Food", "Travel", "Databases"]


PARTITIONS = 3


def make_source(db: pgvz.Database, schema: str, rows: int = 50, seed: int = 1, partitioned: bool = False,
                capture: str = "triggers") -> str:
    """docs(id, body, category, visible, views) and a hashing-embedder vectorizer on it
    (``partitioned``: hash-partitioned on id into docs_p0, docs_p1, docs_p2; ``capture``:
    how its changes reach the queue; for "wal" the key is not DEFERRABLE, which would be
    no replica identity)."""
    rng = random.Random(seed)
    t = sql.Identifier(schema, "docs")
    with db.connect() as conn:
        conn.execute(sql.SQL(
            "CREATE TABLE {} (id int PRIMARY KEY{}, body text, category text, "
            "visible bool NOT NULL DEFAULT true, views int NOT NULL DEFAULT 0){}").format(
                t, sql.SQL(" DEFERRABLE" if capture == "triggers" else ""),
                sql.SQL(" PARTITION BY HASH (id)" if partitioned else "")))
        for i in range(PARTITIONS if partitioned else 0):
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES WITH (MODULUS {}, REMAINDER {})").format(
                sql.Identifier(schema, f"docs_p{i}"), t, sql.Literal(PARTITIONS), sql.Literal(i)))
        conn.execute(sql.SQL("INSERT INTO {} (id, body, category, visible) VALUES (%s, %s, %s, %s)").format(t),
                     (0, "seed row", "Pets", True))
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("INSERT INTO {} (id, body, category, visible) VALUES (%s, %s, %s, %s)").format(t),
                            [(i, text(rng), rng.choice(CATEGORIES), rng.random() < 0.8) for i in range(1, rows + 1)])
    v = pgvz.Vectorizer(db, f"{schema}.docs", template="{category}: {chunk}", chunk_column="body",
                        chunk_size=120, chunk_overlap=20, metadata=["category"], where="visible",
                        embedder=HashingEmbedder(32), name=f"{schema}.docs", batch_size=16,
                        retry_backoff=0.2, capture=capture).create()
    v.close()
    return v.name


def text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))


class Changes:
    """A seeded stream of changes: inserts, updates of embedded and of unrelated columns,
    deletes, primary-key changes, rows entering and leaving the filter, TRUNCATE, and
    transactions that roll back."""

    def __init__(self, db: pgvz.Database, schema: str, seed: int, first_id: int = 10_000,
                 partitioned: bool = False):
        self.rng = random.Random(seed)
        self.conn = db.connect(autocommit=True)
        self.parent = sql.Identifier(schema, "docs")
        # with partitions, half the updates, deletes and truncates are aimed at one of them
        self.partitions = [sql.Identifier(schema, f"docs_p{i}") for i in range(PARTITIONS if partitioned else 0)]
        self.aimed = 0  # changes aimed at a partition
        self.next_id = first_id
        self.counts: dict[str, int] = {}

    def _ids(self, n: int) -> list[int]:
        return [r[0] for r in self.conn.execute(
            sql.SQL("SELECT id FROM {} ORDER BY random() LIMIT %s").format(self.parent), [n])]

    def step(self) -> None:
        rng = self.rng
        kind = rng.choices(
            ["insert", "body", "category", "unrelated", "visible", "delete", "pk", "bulk", "truncate", "rollback"],
            weights=[20, 20, 10, 20, 8, 8, 5, 3, 0.3, 3])[0]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        c, t = self.conn, self.parent
        if self.partitions and kind in ("body", "category", "unrelated", "delete", "truncate") and rng.random() < 0.5:
            t = rng.choice(self.partitions)  # rows in other partitions are left alone
            self.aimed += 1
        if kind == "insert":
            rows = []
            for _ in range(rng.randint(1, 5)):
                self.next_id += 1
                rows.append((self.next_id, text(rng), rng.choice(CATEGORIES), rng.random() < 0.8))
            with c.cursor() as cur:
                cur.executemany(sql.SQL("INSERT INTO {} (id, body, category, visible) VALUES (%s, %s, %s, %s)").format(t), rows)
        elif kind == "body":
            for i in self._ids(rng.randint(1, 3)):
                c.execute(sql.SQL("UPDATE {} SET body = %s WHERE id = %s").format(t), [text(rng), i])
        elif kind == "category":
            c.execute(sql.SQL("UPDATE {} SET category = %s WHERE id = ANY(%s)").format(t),
                      [rng.choice(CATEGORIES), self._ids(rng.randint(1, 3))])
        elif kind == "unrelated":
            c.execute(sql.SQL("UPDATE {} SET views = views + 1 WHERE id = ANY(%s)").format(t),
                      [self._ids(rng.randint(1, 10))])
        elif kind == "visible":
            c.execute(sql.SQL("UPDATE {} SET visible = NOT visible WHERE id = ANY(%s)").format(t),
                      [self._ids(rng.randint(1, 2))])
        elif kind == "delete":
            c.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(t), [self._ids(rng.randint(1, 2))])
        elif kind == "pk":
            for i in self._ids(1):
                self.next_id += 1
                c.execute(sql.SQL("UPDATE {} SET id = %s WHERE id = %s").format(t), [self.next_id, i])
        elif kind == "bulk":
            c.execute(sql.SQL("UPDATE {} SET category = %s WHERE id %% 3 = %s").format(t),
                      [rng.choice(CATEGORIES), rng.randint(0, 2)])
        elif kind == "truncate":
            c.execute(sql.SQL("TRUNCATE {}").format(t))
        elif kind == "rollback":
            with c.transaction(force_rollback=True):
                c.execute(sql.SQL("UPDATE {} SET body = 'rolled back' WHERE id = ANY(%s)").format(t),
                          [self._ids(3)])
                c.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(t), [self._ids(2)])

    def close(self) -> None:
        self.conn.close()


def spawn_worker(db: pgvz.Database, name: str, wait: bool = True) -> subprocess.Popen:
    """A `pgvz worker` process; with ``wait``, returns once it has said it started (its
    SIGTERM handler is in place from then on)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgvz_nb.cli", "worker", name, "--poll", "0.05", "--dsn", db.dsn],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if wait:
        first = proc.stderr.readline()
        assert "pgvz worker started" in first, first + proc.stderr.read()
    return proc


def kill_and_respawn(procs: list[subprocess.Popen], rng: random.Random, db: pgvz.Database, name: str) -> None:
    """SIGKILL a random worker (no chance to clean up) and start a new one in its place."""
    victim = rng.randrange(len(procs))
    os.kill(procs[victim].pid, signal.SIGKILL)
    procs[victim].wait()
    procs[victim] = spawn_worker(db, name)


def stop_workers(workers: list[subprocess.Popen]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(timeout=60)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def check_converged(db: pgvz.Database, name: str) -> dict[str, int]:
    """Drain what is left, then compare the destination with what the source implies.

    Returns counts; raises AssertionError with the first differences otherwise."""
    v = pgvz.Vectorizer.open(db, name)
    for _ in range(3):
        report = v.sync(progress=False)
        if report.answer == "empty":
            break
        time.sleep(0.5)  # a key still in backoff
    queue, pipe, conn = v._ready()
    with conn.transaction():
        rows = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(*queue.source))).fetchall()
        cols = [d.name for d in conn.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(
            sql.Identifier(*queue.source))).description]
        expected = set()
        for rec in rows:
            values = dict(zip(cols, rec))
            if not values["visible"]:
                continue
            for ch in pipe.chunks((values["id"],), values):
                expected.add((values["id"], ch.seq, ch.hash, ch.text))
        dest = conn.execute(sql.SQL("SELECT docs_id, chunk_seq, chunk_hash, contents FROM {}").format(
            sql.Identifier(*v.destination))).fetchall()
        state = queue.state(conn)
        models = {r[0] for r in conn.execute(sql.SQL("SELECT DISTINCT model FROM {}").format(
            sql.Identifier(*v.destination)))}
    actual = set(dest)
    assert models <= {pipe.model_id}, f"{v.destination} holds vectors of {models}, not only {pipe.model_id}"
    assert len(actual) == len(dest), "duplicate chunks in the destination"
    missing, extra = expected - actual, actual - expected
    assert not missing and not extra, (
        f"{len(missing)} chunks missing, {len(extra)} unexpected; e.g. missing {sorted(missing)[:3]}, "
        f"extra {sorted(extra)[:3]}")
    assert state.rows == 0 and state.failed == 0, state
    v.close()
    return {"source_rows": len(rows), "chunks": len(actual)}


def advisory_locks(db: pgvz.Database) -> int:
    with psycopg.connect(db.dsn) as c:
        return c.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0]


def drop_vectorizer(db: pgvz.Database, name: str) -> None:
    with db.connect() as conn:
        found = Queue.find(conn, name)
        conn.rollback()
        if found is not None:
            found.drop(conn)


__all__ = ["make_source", "Changes", "spawn_worker", "kill_and_respawn", "stop_workers", "check_converged", "advisory_locks",
           "drop_vectorizer"]
