"""Sync throughput with a zero-cost embedder (a constant vector), side by side:

- pgvz_nb's Vectorizer.sync() on N rows (1 lane, then 2 lanes; 1 worker process, then 2);
- the original timescale_vector loop (Vectorize.process, batch 10, a callback that deletes
  and inserts the rows with psycopg2) on a subset of the same rows;
- a raw binary COPY of the same destination rows, encoded row by row by psycopg (what a
  Python client can do) and as bytes prepared beforehand (the server's write limit);
- embedding calls for unchanged updates: 10k updates of an unrelated column and 10k
  rewrites of identical text, pgvz_nb against the original.

    .venv/bin/python benchmarks/sync_throughput.py [--rows 100000] [--original-rows 5000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid

import numpy as np
from langchain_core.embeddings import Embeddings
from psycopg import sql
from psycopg.types.json import Jsonb

import pgvz_nb as pgvz
from report import add_out_argument, bars, drop_bench_schema, save

try:
    import psycopg2
    from pgvector.psycopg2 import register_vector as register_vector2
    from timescale_vector import pgvectorizer as original
except ImportError:  # `make bench` installs them
    original = None

SCHEMA = "pgvz_bench_sync"
DIMS = 384


class Constant(Embeddings):
    """A zero-cost embedder: the same unit vector for every text; counts its calls."""

    model_id = "constant-384"
    dimensions = DIMS

    def __init__(self):
        self.vec = np.full(DIMS, 1 / np.sqrt(DIMS), dtype=np.float32)
        self.calls = 0
        self.texts = 0

    def encode(self, texts):
        self.calls += 1
        self.texts += len(texts)
        return np.tile(self.vec, (len(texts), 1))

    def embed_documents(self, texts):
        return self.encode(texts).tolist()

    def embed_query(self, text):
        return self.vec.tolist()


def reset(db: pgvz.Database) -> None:
    drop_bench_schema(db, SCHEMA, Constant())
    with db.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))


def make_table(db: pgvz.Database, table: str, rows: int) -> None:
    with db.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, title text, contents text, "
                             "views int NOT NULL DEFAULT 0)").format(sql.Identifier(SCHEMA, table)))
        conn.execute(sql.SQL("INSERT INTO {} (title, contents) SELECT 'post ' || i, "
                             "'the contents of post number ' || i FROM generate_series(1, %s) i").format(
            sql.Identifier(SCHEMA, table)), [rows])


def pgvz_sync(db, rows: int, lanes: int) -> float:
    table = f"docs_l{lanes}"
    make_table(db, table, rows)
    v = pgvz.Vectorizer(db, f"{SCHEMA}.{table}", template="{title}: {contents}", embedder=Constant(),
                        batch_size=500).create()
    report = v.sync(progress=False, lanes=lanes)
    v.close()
    assert report.processed == rows, report
    return rows / report.seconds


def pgvz_workers(db, rows: int, workers: int) -> float:
    table = f"docs_w{workers}"
    make_table(db, table, rows)
    v = pgvz.Vectorizer(db, f"{SCHEMA}.{table}", template="{title}: {contents}", embedder=Constant(),
                        batch_size=500).create()
    code = ("import sys, pgvz_nb as p\nsys.path.insert(0, 'benchmarks')\nfrom sync_throughput import Constant\n"
            "v = p.Vectorizer.open(p.Database(sys.argv[1]), sys.argv[2], embedder=Constant())\n"
            "r = v.sync(progress=False, lanes=1)\nprint(r.processed)\n")
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code, db.dsn, v.name], stdout=subprocess.PIPE, text=True)
             for _ in range(workers)]
    done = sum(int(p.communicate()[0]) for p in procs)
    seconds = time.perf_counter() - t0
    assert v.status()["pending"][0] == 0 and done >= rows, done
    v.close()
    return rows / seconds


def raw_copy(db, rows: int) -> tuple[float, float]:
    """rows/s of a binary COPY of the destination rows: encoded by psycopg row by row (what
    a Python client can do), and as bytes prepared beforehand (the server's write limit)."""
    dest, again = sql.Identifier(SCHEMA, "raw_copy"), sql.Identifier(SCHEMA, "raw_copy_prebuilt")
    ddl = sql.SQL("CREATE TABLE {} (id uuid PRIMARY KEY, metadata jsonb, contents text, "
                  "embedding vector(384), docs_id int, chunk_seq int, chunk_hash text)")
    vec = Constant().vec
    with db.connect(vector=True) as conn:
        conn.execute(ddl.format(dest))
        conn.execute(ddl.format(again))
        conn.commit()
        t0 = time.perf_counter()
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN WITH (FORMAT BINARY)").format(dest)) as copy:
            copy.set_types(["uuid", "jsonb", "text", "vector", "int4", "int4", "text"])
            for i in range(rows):
                copy.write_row((uuid.uuid4(), Jsonb({"docs_id": i}), f"post {i}: the contents of post number {i}",
                                vec, i, 0, "0" * 64))
        conn.commit()
        client = rows / (time.perf_counter() - t0)
        payload = bytearray()
        with conn.cursor().copy(sql.SQL("COPY {} TO STDOUT WITH (FORMAT BINARY)").format(dest)) as copy:
            for block in copy:
                payload += block
        conn.commit()
        t0 = time.perf_counter()
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN WITH (FORMAT BINARY)").format(again)) as copy:
            for i in range(0, len(payload), 1 << 20):
                copy.write(payload[i : i + (1 << 20)])
        conn.commit()
        return client, rows / (time.perf_counter() - t0)


# the original's callback runs on psycopg2: psycopg 3 composes the statements as strings
ORIG_DEST = sql.Identifier(SCHEMA, "orig_embedding")
DELETE_ORIG = sql.SQL("DELETE FROM {} WHERE (metadata->>'docs_id')::int = ANY(%s)").format(ORIG_DEST).as_string(None)
INSERT_ORIG = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s)").format(ORIG_DEST).as_string(None)


def original_loop(db, rows: int) -> tuple[float, Constant]:
    table = "orig"
    make_table(db, table, rows)
    emb = Constant()
    with psycopg2.connect(db.dsn) as c2, c2.cursor() as cur:
        cur.execute(sql.SQL("SET search_path = {}, public").format(sql.Identifier(SCHEMA)).as_string(None))
        cur.execute(sql.SQL("CREATE TABLE {} (id uuid PRIMARY KEY, metadata jsonb, contents text, "
                            "embedding vector(384))").format(sql.Identifier(SCHEMA, "orig_embedding")).as_string(None))

    def embed_and_write(batch, vectorizer):
        with psycopg2.connect(db.dsn) as c, c.cursor() as cur:
            register_vector2(c)
            ids = [r["locked_id"] for r in batch]
            cur.execute(DELETE_ORIG, (ids,))
            live = [r for r in batch if r["id"] is not None]
            vecs = emb.encode([f"{r['title']}: {r['contents']}" for r in live])
            cur.executemany(INSERT_ORIG,
                            [(str(uuid.uuid4()), json.dumps({"docs_id": r["id"]}), r["title"], v)
                             for r, v in zip(live, vecs)])

    # the original only works in public: the table is reached through the search_path of
    # the DSN's options
    from psycopg.conninfo import make_conninfo
    dsn = make_conninfo(db.dsn, options=f"-c search_path={SCHEMA},public")
    vec = original.Vectorize(dsn, table, schema_name=SCHEMA)
    vec.register()
    t0 = time.perf_counter()
    done = 0
    while (n := vec.process(embed_and_write, batch_size=10)) > 0:
        done += n
    return done / (time.perf_counter() - t0), emb


def unchanged_updates(db, n: int) -> dict[str, int]:
    """n updates of an unrelated column and n identical rewrites: embedding calls."""
    out = {}
    make_table(db, "unchanged", 1000)
    emb = Constant()
    v = pgvz.Vectorizer(db, f"{SCHEMA}.unchanged", template="{title}: {contents}", embedder=emb).create()
    v.sync(progress=False)
    before = emb.texts
    with db.connect() as conn:
        for i in range(n):
            conn.execute(sql.SQL("UPDATE {} SET views = views + 1 WHERE id = %s").format(
                sql.Identifier(SCHEMA, "unchanged")), [i % 1000 + 1])
        for i in range(n):
            conn.execute(sql.SQL("UPDATE {} SET contents = contents WHERE id = %s").format(
                sql.Identifier(SCHEMA, "unchanged")), [i % 1000 + 1])
    v.sync(progress=False)
    out["pgvz_nb"] = emb.texts - before
    v.close()
    if original is not None:
        # the original queues every updated row; its callback embeds every queued row
        with db.connect() as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, title text, views int DEFAULT 0)").format(
                sql.Identifier("public", "pgvz_bench_unchanged")))
            conn.execute("INSERT INTO public.pgvz_bench_unchanged SELECT i, 'post ' || i FROM generate_series(1, 1000) i")
        ov = original.Vectorize(db.dsn, "pgvz_bench_unchanged")
        ov.register()
        counter = Constant()
        while ov.process(lambda rows, _: counter.encode([r["title"] for r in rows if r["id"] is not None]),
                         batch_size=1000) > 0:
            pass
        base = counter.texts  # from here on, the original's own loop: batch_size=10
        with db.connect() as conn:
            for i in range(n):
                conn.execute("UPDATE public.pgvz_bench_unchanged SET views = views + 1 WHERE id = %s", [i % 1000 + 1])
            for i in range(n):
                conn.execute("UPDATE public.pgvz_bench_unchanged SET title = title WHERE id = %s", [i % 1000 + 1])
        while ov.process(lambda rows, _: counter.encode([r["title"] for r in rows if r["id"] is not None]),
                         batch_size=10) > 0:
            pass
        # the original de-duplicates keys only within a claimed batch of 10
        out["timescale_vector"] = counter.texts - base
        with db.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS public.pgvz_bench_unchanged, "
                         "public.pgvz_bench_unchanged_embedding_work_queue CASCADE")
            conn.execute("DROP FUNCTION IF EXISTS public.pgvz_bench_unchanged_wq_for_embedding()")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--original-rows", type=int, default=5_000)
    ap.add_argument("--updates", type=int, default=10_000)
    add_out_argument(ap)
    args = ap.parse_args()
    db = pgvz.connect()
    reset(db)
    r: dict = {"rows": args.rows}
    r["pgvz_1_lane"] = pgvz_sync(db, args.rows, 1)
    r["pgvz_2_lanes"] = pgvz_sync(db, args.rows, 2)
    r["pgvz_1_worker"] = pgvz_workers(db, args.rows, 1)
    r["pgvz_2_workers"] = pgvz_workers(db, args.rows, 2)
    r["raw_copy"], r["raw_copy_prebuilt"] = raw_copy(db, args.rows)
    if original is not None:
        r["original"], _ = original_loop(db, args.original_rows)
    r["unchanged_updates"] = unchanged_updates(db, args.updates)
    reset(db)
    print(f"zero-cost embedder, {args.rows:,} rows (the original on {args.original_rows:,})")
    print(f"{'':<34}{'rows/s':>10}{'vs raw COPY':>13}{'vs prebuilt':>13}")
    for key in ("pgvz_1_lane", "pgvz_2_lanes", "pgvz_1_worker", "pgvz_2_workers", "original", "raw_copy",
                "raw_copy_prebuilt"):
        if key in r:
            print(f"{key:<34}{r[key]:>10,.0f}{r[key] / r['raw_copy']:>12.2f}x{r[key] / r['raw_copy_prebuilt']:>12.2f}x")
    if "original" in r:
        print(f"pgvz_nb (1 lane) / original: {r['pgvz_1_lane'] / r['original']:.1f}x")
    print(f"2 workers / 1 worker: {r['pgvz_2_workers'] / r['pgvz_1_worker']:.2f}x")
    print(f"embedding calls (texts) for {args.updates:,} unrelated updates + {args.updates:,} identical "
          f"rewrites: {r['unchanged_updates']}")

    def plot(ax):
        keys = [k for k in ("raw_copy_prebuilt", "raw_copy", "pgvz_1_lane", "pgvz_2_lanes", "pgvz_1_worker", "pgvz_2_workers", "original")
                if k in r]
        bars(ax, keys, [r[k] for k in keys], title=f"Sync throughput, zero-cost embedder, {args.rows:,} rows",
             xlabel="rows/s", fmt="{:,.0f}")

    save(args.out, "sync_throughput", r, db, plot)


if __name__ == "__main__":
    main()
