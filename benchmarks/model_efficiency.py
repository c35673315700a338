"""The default model in the pipeline: cold start, end-to-end sync rate against the model's
raw encode rate on the same texts, and embedding calls caused by unrelated updates.

    .venv/bin/python benchmarks/model_efficiency.py [--topics 20] [--updates 1000] [--out DIR]

Two corpora: long texts, CPython's language reference (pgvz_nb.sample.load_python_docs)
in chunks of 1000/200 characters; short texts, one sentence per row. For each, the sync
and the raw encode run in the same process on the same texts with the same embedder,
after a warm-up (the first ONNX runs of a process are ~15% slower); rounds alternate a
fresh sync and a raw encode, and the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from psycopg import sql

import pgvz_nb as pgvz
from report import add_out_argument, bars, drop_bench_schema, save
from pgvz_nb.embedders import MiniLMEmbedder, default_embedder
from pgvz_nb.sample import load_python_docs

SCHEMA = "pgvz_bench_model"


class Counting(MiniLMEmbedder):
    """The default model, counting calls."""

    def __init__(self):
        self.__dict__.update(default_embedder().__dict__)
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return super().encode(texts)


def cold_start(runs: int = 3) -> float:
    code = ("import time; t = time.perf_counter(); import pgvz_nb as p; "
            "p.default_embedder().embed_query('cold start'); print(time.perf_counter() - t)")
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip()))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topics", type=int, default=20)
    ap.add_argument("--updates", type=int, default=1000)
    ap.add_argument("--short", type=int, default=2000, help="rows of the short-text table")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lanes", type=int, default=2, help="Vectorizer.sync(lanes=...): 2 is the default")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per claim (default: the vectorizer's)")
    add_out_argument(ap)
    args = ap.parse_args()

    report: dict = {"cold_start_s": cold_start(), "lanes": args.lanes, "batch_size": args.batch_size}
    db = pgvz.connect()
    drop_bench_schema(db, SCHEMA)
    emb = Counting()
    for words in (8, 60, 250):  # warm the ONNX session up at short and long sequence lengths
        emb.encode([" ".join(["warm-up"] * words)] * 32)
    load_python_docs(db, schema=SCHEMA, limit=args.topics)
    with db.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, line text)").format(
            sql.Identifier(SCHEMA, "lines")))
        conn.execute(sql.SQL(
            "INSERT INTO {} SELECT i, 'Short line ' || i || ' about ' || (ARRAY['cats', 'trains', "
            "'bread', 'databases', 'running'])[1 + i %% 5] FROM generate_series(1, %s) i").format(
            sql.Identifier(SCHEMA, "lines")), [args.short])
    for label, table, opts in (
        ("long", "python_docs", dict(template="{title}\n{chunk}", chunk_column="body", metadata=["topic"])),
        ("short", "lines", dict(template="{line}")),
    ):
        ratios, syncs, raws = [], [], []
        for _ in range(args.rounds):  # raw and sync alternate; each round compares its own pair
            if args.batch_size:
                opts["batch_size"] = args.batch_size
            v = pgvz.Vectorizer(db, f"{SCHEMA}.{table}", embedder=emb, **opts).create(replace=True)
            sync = v.sync(progress=False, lanes=args.lanes)
            with db.connect() as conn:
                texts = [r[0] for r in conn.execute(sql.SQL("SELECT contents FROM {} ORDER BY {}, chunk_seq").format(
                    sql.Identifier(SCHEMA, f"{table}_embedding"), sql.Identifier(v.config.dest_keys[0])))]
            t0 = time.perf_counter()
            for i in range(0, len(texts), v.config.batch_size):  # the pipeline's batch size
                emb.encode(texts[i : i + v.config.batch_size])
            raw_s = time.perf_counter() - t0
            ratios.append(raw_s / sync.seconds)
            syncs.append(sync.seconds)
            raws.append(raw_s)
            if label == "short":
                v.close()
        report[label] = dict(chunks=len(texts), sync_s=syncs, raw_encode_s=raws,
                             sync_per_s=len(texts) / statistics.median(syncs),
                             raw_per_s=len(texts) / statistics.median(raws),
                             efficiency=statistics.median(ratios))
        if label == "long":
            docs = v
    v = docs

    calls = emb.calls
    with db.connect() as conn:
        for i in range(args.updates):
            conn.execute(sql.SQL("UPDATE {} SET updated_at = now() WHERE id = %s").format(
                sql.Identifier(SCHEMA, "python_docs")), [i % args.topics + 1])
    after = v.sync(progress=False)
    report.update(unrelated_updates=args.updates, embed_calls_after_updates=emb.calls - calls,
                  rows_reprocessed_after_updates=after.processed)
    v.close()
    drop_bench_schema(db, SCHEMA)

    print(f"default model: {default_embedder().model_id} (onnx int8)")
    print(f"{'cold start (import + load + first query)':<44}{report['cold_start_s']:>8.2f} s")
    print(f"{'corpus':<10}{'texts':>8}{'raw encode/s':>14}{'sync/s':>10}{'sync / raw':>12}")
    for label in ("long", "short"):
        r = report[label]
        print(f"{label:<10}{r['chunks']:>8}{r['raw_per_s']:>14.1f}{r['sync_per_s']:>10.1f}{r['efficiency']:>12.2f}")
    print(f"embedding calls for {args.updates} unrelated updates: {report['embed_calls_after_updates']}")

    def plot(ax):
        bars(ax, [f"{label} texts ({report[label]['chunks']})" for label in ("long", "short")],
             [report[label]["efficiency"] for label in ("long", "short")],
             title="Default model: end-to-end sync rate / raw encode rate", xlabel="ratio", goal=0.9)

    save(args.out, "model_efficiency", report, db, plot)


if __name__ == "__main__":
    main()
