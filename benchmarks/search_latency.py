"""Search at size: N x 384 vectors with an HNSW index; p50 / p95 latency at k=10 and
recall@10 against exact search, with and without a metadata filter, and the DataFrame
overhead of pgvz_nb's search over the raw query.

    .venv/bin/python benchmarks/search_latency.py [--rows 100000] [--queries 200] [--json out.json]

Vectors: 64 Gaussian clusters in 384-d, normalised (random uniform vectors would make every
neighbour equally far; real embeddings cluster). Metadata: a "category" of 10 values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

import pgvz_nb as pgvz
from pgvz_nb.search import search_frame, search_rows

SCHEMA, TABLE = "pgvz_bench_search", "vectors"
DIMS = 384


def data(rows: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, DIMS)).astype(np.float32)
    labels = rng.integers(0, 64, size=rows)
    vecs = centers[labels] + 0.35 * rng.normal(size=(rows, DIMS)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs, rng.integers(0, 10, size=rows)


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--json", default=None)
    ap.add_argument("--explain", action="store_true", help="print the plan of one query")
    args = ap.parse_args()
    db = pgvz.connect()
    rel = (SCHEMA, TABLE)
    vecs, cats = data(args.rows)
    with db.connect(vector=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        col = pgvz.search.Collection(TABLE, SCHEMA, DIMS)
        col.create(conn)
        t0 = time.perf_counter()
        col.add(conn, [f"doc {i}" for i in range(args.rows)], [{"category": f"c{c}"} for c in cats], vecs,
                [uuid.uuid4() for _ in range(args.rows)])
        conn.commit()
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute(sql.SQL("CREATE INDEX ON {} USING hnsw (embedding vector_cosine_ops)").format(
            sql.Identifier(*rel)))
        conn.commit()
        index_s = time.perf_counter() - t0

    rng = np.random.default_rng(7)
    queries = vecs[rng.integers(0, args.rows, size=args.queries)] + 0.05 * rng.normal(size=(args.queries, DIMS))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    report: dict = {"rows": args.rows, "queries": args.queries, "load_s": load_s, "index_s": index_s}
    # autocommit: each exact search gets a transaction of its own, so its SET LOCAL ends with it
    with db.connect(vector=True, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(*rel)))
        if args.explain:
            from pgvz_nb import sql as q
            plan = conn.execute(sql.SQL("EXPLAIN ANALYZE ") + q.search(rel, hybrid=False, time_range=False),
                                {"q": queries[0], "k": 10, "filter": None, "start": None, "end": None,
                                 "text": None, "pool": 40}).fetchall()
            print("\n".join(r[0][:160] for r in plan))
        cases = [(f"ef_search={ef}, {name}", ef, filt) for ef in (40, 200)
                 for name, filt in (("no filter", None), ("filter 1/10", {"category": "c3"}))]
        for label, ef, filt in cases:
            conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))
            # a filtered search keeps walking the graph until it has k rows
            conn.execute("SET hnsw.iterative_scan = " + ("relaxed_order" if filt else "off"))
            raw, frame, recalls = [], [], []
            for qv in queries:
                t0 = time.perf_counter()
                got = search_rows(conn, rel, qv, None, 10, filter=filt)
                raw.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                search_frame(conn, rel, qv, None, 10, filter=filt)
                frame.append(time.perf_counter() - t0)
                with conn.transaction():
                    conn.execute("SET LOCAL enable_indexscan = off")  # exact: a sequential scan
                    exact = search_rows(conn, rel, qv, None, 10, filter=filt)
                truth = {r[3] for r in exact}
                recalls.append(len(truth & {r[3] for r in got}) / max(len(truth), 1))
            report[label] = {
                "p50_ms": 1000 * statistics.median(raw), "p95_ms": 1000 * percentile(raw, 95),
                "dataframe_p50_ms": 1000 * statistics.median(frame), "recall_at_10": statistics.mean(recalls),
            }
    with db.connect() as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    print(f"{args.rows:,} x {DIMS} vectors: binary COPY {load_s:.1f} s, HNSW build {index_s:.1f} s; "
          f"{args.queries} queries at k=10")
    print(f"{'':<30}{'p50 ms':>8}{'p95 ms':>8}{'DataFrame p50':>15}{'recall@10':>11}")
    for label, _, _ in cases:
        s = report[label]
        print(f"{label:<30}{s['p50_ms']:>8.2f}{s['p95_ms']:>8.2f}{s['dataframe_p50_ms']:>15.2f}{s['recall_at_10']:>11.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
