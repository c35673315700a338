"""Scale: backfill a 10k-row and a 1M-row table with the zero-cost embedder (a constant
vector), each drained by a worker process of its own; rows/s at 10k vs 1M, and the
worker's peak resident memory.

    .venv/bin/python benchmarks/scale.py [--small 10000] [--large 1000000] [--out DIR]

The worker is a fresh Python process running ``Vectorizer.sync(lanes=1)`` (what
``pgvz sync`` runs, minus the model); its peak RSS is the kernel's high-water mark
(ru_maxrss), its baseline the RSS after imports and connecting, before the first batch.
Registering the vectorizer on a filled table queues every row (the backfill), timed apart.
The small backfill lasts about a second, so it runs --small-runs times (median).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from psycopg import sql

import pgvz_nb as pgvz
from report import add_out_argument, bars, drop_bench_schema, save
from sync_throughput import Constant

SCHEMA = "pgvz_bench_scale"

WORKER = """
import json, resource, sys, time
sys.path.insert(0, 'benchmarks')
import pgvz_nb as p
from sync_throughput import Constant
v = p.Vectorizer.open(p.Database(sys.argv[1]), sys.argv[2], embedder=Constant())
v.status()  # connected, catalog read
base = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize() / 2**20
r = v.sync(progress=False, lanes=1)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"processed": r.processed, "seconds": r.seconds, "baseline_rss_mb": base, "peak_rss_mb": peak}))
"""


def reset(db: pgvz.Database) -> None:
    drop_bench_schema(db, SCHEMA, Constant())


def backfill(db: pgvz.Database, rows: int) -> dict:
    table = f"docs_{rows}"
    ident = sql.Identifier(SCHEMA, table)
    with db.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, title text, contents text)").format(ident))
        conn.execute(sql.SQL(
            "INSERT INTO {} SELECT i, 'post ' || i, 'the contents of post number ' || i || ' of many' "
            "FROM generate_series(1, %s) i").format(ident), [rows])
    with db.connect(autocommit=True) as conn:  # hint bits and statistics set, as on a table in use
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(ident))
    t0 = time.perf_counter()
    v = pgvz.Vectorizer(db, f"{SCHEMA}.{table}", template="{title}: {contents}", embedder=Constant(),
                        batch_size=500).create()
    register_s = time.perf_counter() - t0
    out = subprocess.run([sys.executable, "-c", WORKER, db.dsn, v.name], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"worker failed:\n{out.stderr[-2000:]}")
    w = json.loads(out.stdout.strip().splitlines()[-1])
    status = v.status()
    embedded = int(status["embedded_rows"][0])
    v.close()
    assert w["processed"] == rows and status["pending"][0] == 0 and embedded == rows, (w, status.to_dict())
    return {"rows": rows, "register_s": register_s, "sync_s": w["seconds"], "rows_per_s": rows / w["seconds"],
            "baseline_rss_mb": w["baseline_rss_mb"], "peak_rss_mb": w["peak_rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=1_000_000)
    ap.add_argument("--small-runs", type=int, default=5,
                    help="the small backfill lasts about a second: repeat it and take the median")
    add_out_argument(ap)
    args = ap.parse_args()
    db = pgvz.connect()
    reset(db)
    runs = []
    for _ in range(args.small_runs):
        runs.append(backfill(db, args.small))
        reset(db)
    report = {"small": sorted(runs, key=lambda r: r["rows_per_s"])[len(runs) // 2]}
    report["small"]["rows_per_s_runs"] = [r["rows_per_s"] for r in runs]
    print(f"{args.small:,} rows done {len(runs)} times: "
          + ", ".join(f"{r['rows_per_s']:,.0f}" for r in runs) + " rows/s", flush=True)
    report["large"] = backfill(db, args.large)
    reset(db)
    print("zero-cost embedder; one worker process, 1 lane, batch 500")
    print(f"{'rows':>10}{'register s':>12}{'sync s':>9}{'rows/s':>10}{'RSS base MB':>13}{'peak MB':>9}")
    for key in ("small", "large"):
        r = report[key]
        print(f"{r['rows']:>10,}{r['register_s']:>12.1f}{r['sync_s']:>9.1f}{r['rows_per_s']:>10,.0f}"
              f"{r['baseline_rss_mb']:>13.0f}{r['peak_rss_mb']:>9.0f}")
    ratio = report["large"]["rows_per_s"] / report["small"]["rows_per_s"]
    print(f"rows/s at {args.large:,} / at {args.small:,}: {ratio:.2f} (goal >= 0.8); "
          f"peak RSS {report['large']['peak_rss_mb']:.0f} MB (goal < 500 MB)")

    def plot(ax):
        labels = [f"{report[k]['rows']:,} rows" for k in ("small", "large")]
        bars(ax, labels, [report[k]["rows_per_s"] for k in ("small", "large")],
             title=f"Backfill, zero-cost embedder: rows/s (peak worker RSS "
                   f"{report['small']['peak_rss_mb']:.0f} / {report['large']['peak_rss_mb']:.0f} MB)",
             xlabel="rows/s", fmt="{:,.0f}")

    save(args.out, "scale", report, db, plot)


if __name__ == "__main__":
    main()
