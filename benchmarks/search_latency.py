"""Search at size: N x 384 vectors with an HNSW index; p50 / p95 latency at k=10 and
recall@10 against exact search, with and without a metadata filter, and the DataFrame
overhead of pgvz_nb's search over the raw query.

    .venv/bin/python benchmarks/search_latency.py [--vectors real|synthetic] [--rows 100000] [--out DIR]

``real`` (the default): the default model's embeddings of N distinct sentences from
docstrings, the standard library's first, then the installed packages' in file order;
the queries are held-out sentences of the same corpus. The texts and vectors are cached in
benchmarks/results/ (embedding 100k sentences takes minutes). ``synthetic``: 64 Gaussian
clusters in 384-d, normalised; harder for HNSW than real embeddings (higher intrinsic
dimension), kept as a worst case. Metadata: a "category" of 10 values, uniformly spread.
"""

from __future__ import annotations

import argparse
import ast
import re
import statistics
import sysconfig
import time
import uuid
from pathlib import Path

import numpy as np
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.search import search_frame, search_rows
from report import add_out_argument, save

SCHEMA, TABLE = "pgvz_bench_search", "vectors"
DIMS = 384


def synthetic(rows: int, queries: int, seed: int = 3) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, DIMS)).astype(np.float32)
    labels = rng.integers(0, 64, size=rows)
    vecs = centers[labels] + 0.35 * rng.normal(size=(rows, DIMS)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rng = np.random.default_rng(7)
    q = vecs[rng.integers(0, rows, size=queries)] + 0.05 * rng.normal(size=(queries, DIMS))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    return [f"doc {i}" for i in range(rows)], vecs, q


def docstring_sentences(n: int) -> list[str]:
    """n distinct sentences (30-400 characters) from docstrings: stdlib first, then site-packages."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    seen: set[str] = set()
    out: list[str] = []
    for root in (stdlib, site):
        for path in sorted(root.rglob("*.py")):
            if root == stdlib and ("site-packages" in path.parts or "test" in path.parts):
                continue
            try:
                if path.stat().st_size > 400_000:
                    continue
                tree = ast.parse(path.read_text(errors="replace"))
            except (SyntaxError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for para in (ast.get_docstring(node) or "").split("\n\n"):
                    for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(para.split())):
                        if 30 <= len(sent) <= 400 and "\x00" not in sent and sent not in seen and not sent.startswith((">>>", "..", "-", "=")):
                            seen.add(sent)
                            out.append(sent)
                            if len(out) == n:
                                return out
    raise SystemExit(f"only {len(out)} docstring sentences found; need {n} (lower --rows)")


def real(rows: int, queries: int, cache_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Embeddings of docstring sentences by the default model; cached by corpus size."""
    from pgvz_nb.embedders import default_embedder

    emb = default_embedder()
    cache = cache_dir / f"corpus_{rows + queries}_{emb.model_id.replace('/', '_')}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        texts, vecs = list(data["texts"]), data["vecs"]
    else:
        t0 = time.perf_counter()
        texts = docstring_sentences(rows + queries)
        print(f"{len(texts):,} sentences collected in {time.perf_counter() - t0:.0f} s; embedding...", flush=True)
        t0 = time.perf_counter()
        vecs = np.vstack([emb.encode(texts[i : i + 2048]) for i in range(0, len(texts), 2048)]).astype(np.float32)
        print(f"embedded in {time.perf_counter() - t0:.0f} s ({len(texts) / (time.perf_counter() - t0):.0f}/s)")
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(cache, texts=np.array(texts), vecs=vecs)
    texts = [t.replace("\x00", " ") for t in texts]  # PostgreSQL text cannot hold NUL
    # held-out queries: every (rows + queries) / queries-th sentence, so they spread over the corpus
    step = (rows + queries) // queries
    qidx = np.arange(queries) * step
    mask = np.ones(len(texts), dtype=bool)
    mask[qidx] = False
    return [t for t, m in zip(texts, mask) if m], vecs[mask], vecs[qidx]


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", choices=("real", "synthetic"), default="real")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--m", type=int, default=16, help="HNSW m (pgvector's default 16)")
    ap.add_argument("--ef-construction", type=int, default=64, help="HNSW ef_construction (default 64)")
    ap.add_argument("--explain", action="store_true", help="print the plan of one query")
    add_out_argument(ap)
    args = ap.parse_args()
    if args.vectors == "real":
        texts, vecs, queries = real(args.rows, args.queries, Path(args.out))
    else:
        texts, vecs, queries = synthetic(args.rows, args.queries)
    rows = len(texts)
    db = pgvz.connect()
    rel = (SCHEMA, TABLE)
    cats = np.random.default_rng(5).integers(0, 10, size=rows)
    with db.connect(vector=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        col = pgvz.search.Collection(TABLE, SCHEMA, DIMS)
        col.create(conn)
        load_s, _ = timed(lambda: col.add(conn, texts, [{"category": f"c{c}"} for c in cats], vecs,
                                          [uuid.uuid4() for _ in range(rows)]))
        conn.commit()
        conn.execute("SET maintenance_work_mem = '512MB'")
        index_s, _ = timed(lambda: conn.execute(sql.SQL(
            "CREATE INDEX ON {} USING hnsw (embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})"
        ).format(sql.Identifier(*rel), sql.Literal(args.m), sql.Literal(args.ef_construction))))
        conn.commit()

    report: dict = {"vectors": args.vectors, "rows": rows, "queries": len(queries), "m": args.m,
                    "ef_construction": args.ef_construction, "load_s": load_s, "index_s": index_s, "cases": {}}
    overheads: list[float] = []
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
            # a filtered search keeps walking the graph until it has k rows: search_rows turns
            # on pgvector's iterative scan (relaxed_order) itself, as every pgvz_nb search does
            raw, frame, recalls = [], [], []
            for i, qv in enumerate(queries):
                search_rows(conn, rel, qv, None, 10, filter=filt)  # warm: both timings below hit the same pages
                # alternate which goes first, so neither gains from the other's cache
                a = ("raw", "frame") if i % 2 == 0 else ("frame", "raw")
                t = {}
                for which in a:
                    if which == "raw":
                        t["raw"], got = timed(lambda: search_rows(conn, rel, qv, None, 10, filter=filt))
                    else:
                        t["frame"], _ = timed(lambda: search_frame(conn, rel, qv, None, 10, filter=filt))
                raw.append(t["raw"])
                frame.append(t["frame"])
                overheads.append(t["frame"] - t["raw"])
                with conn.transaction():
                    conn.execute("SET LOCAL enable_indexscan = off")  # exact: a sequential scan
                    exact = search_rows(conn, rel, qv, None, 10, filter=filt)
                truth = {r[3] for r in exact}
                recalls.append(len(truth & {r[3] for r in got}) / max(len(truth), 1))
            report["cases"][label] = {
                "p50_ms": 1000 * statistics.median(raw), "p95_ms": 1000 * percentile(raw, 95),
                "dataframe_p50_ms": 1000 * statistics.median(frame), "recall_at_10": statistics.mean(recalls),
            }
    report["dataframe_overhead_ms"] = 1000 * statistics.median(overheads)
    with db.connect() as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    print(f"{rows:,} x {DIMS} {args.vectors} vectors: binary COPY {load_s:.1f} s, HNSW (m={args.m}, "
          f"ef_construction={args.ef_construction}) build {index_s:.1f} s; {len(queries)} queries at k=10")
    print(f"{'':<30}{'p50 ms':>8}{'p95 ms':>8}{'DataFrame p50':>15}{'recall@10':>11}")
    for label, _, _ in cases:
        c = report["cases"][label]
        print(f"{label:<30}{c['p50_ms']:>8.2f}{c['p95_ms']:>8.2f}{c['dataframe_p50_ms']:>15.2f}{c['recall_at_10']:>11.3f}")
    print(f"DataFrame over raw rows, same query, warm, alternating order: {report['dataframe_overhead_ms']:+.2f} ms (median)")

    def plot(ax):
        labels = list(report["cases"])
        y = np.arange(len(labels))[::-1]
        ax.barh(y + 0.2, [report["cases"][k]["p50_ms"] for k in labels], height=0.38, label="p50 ms")
        ax.barh(y - 0.2, [report["cases"][k]["p95_ms"] for k in labels], height=0.38, label="p95 ms")
        for yi, k in zip(y, labels):
            ax.text(report["cases"][k]["p95_ms"], yi - 0.2, f" recall {report['cases'][k]['recall_at_10']:.3f}",
                    va="center", fontsize=8)
        ax.axvline(10, color="#c44e52", linestyle="--", linewidth=1)
        ax.set_yticks(y, labels)
        ax.set_xlabel("ms at k=10 (goal: p50 <= 10 ms, recall >= 0.95)")
        ax.set_xlim(0, max(report["cases"][k]["p95_ms"] for k in labels) * 1.5)
        ax.set_title(f"Search, {rows:,} x {DIMS} {args.vectors} vectors, HNSW m={args.m}", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")

    name = "search_latency" if args.vectors == "real" else "search_latency_synthetic"
    save(args.out, name, report, db, plot)


if __name__ == "__main__":
    main()
