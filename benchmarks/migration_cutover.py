"""A migration's cutover (issue 18): how long readers of the destination are held, on 100k rows.

A source of ``--rows`` short texts, a vectorizer with one hashing model (64 dimensions),
synced; ``migrate()`` to another (32 dimensions, another template), synced. Then
``--rounds`` switches, alternately ``cutover()`` and ``rollback()``, each with reader
threads querying the destination by name the whole time (a primary-key lookup, as an
application reading its embeddings would; each on its own connection, autocommit).

Reported per switch: ``lock_ms``, the time the switch held ACCESS EXCLUSIVE on the two
tables (from its LOCK TABLE to its commit, measured by the switch itself), and the readers'
slowest query while it ran, beside the readers' p99 and slowest query in a quiet stretch of
the same length before it (the ratio of the two is the switch's cost to a reader, in one
run). Medians over the rounds.

    .venv/bin/python benchmarks/migration_cutover.py [--rows 100000] [--rounds 6] [--readers 2] [--out DIR]
"""

# ruff: noqa: T201 - a benchmark prints what it measured

from __future__ import annotations

import argparse
import statistics
import threading
import time

from psycopg import sql
from report import add_out_argument, bars, drop_bench_schema, save

import pgvz_nb as pgvz
from pgvz_nb.embedders import HashingEmbedder

SCHEMA = "bench_migration"


class Readers:
    """Threads reading the destination by name in a loop; latencies kept with their start times."""

    def __init__(self, db: pgvz.Database, n: int, rows: int):
        self.db, self.rows = db, rows
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (start, seconds)
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(n)]

    def run(self, i: int) -> None:
        stmt = sql.SQL("SELECT contents FROM {} WHERE docs_id = %s").format(sql.Identifier(SCHEMA, "docs_embedding"))
        with self.db.connect(autocommit=True) as conn:
            k = i
            while not self.stop.is_set():
                k = (k * 7919 + 1) % self.rows + 1
                t0 = time.perf_counter()
                try:
                    conn.execute(stmt, [k]).fetchall()
                except Exception as exc:  # noqa: BLE001 - reported: a reader must never fail
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                dt = time.perf_counter() - t0
                with self.lock:
                    self.samples.append((t0, dt))

    def window(self, start: float, end: float) -> list[float]:
        with self.lock:
            return [dt for t0, dt in self.samples if start <= t0 <= end or start <= t0 + dt <= end]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--readers", type=int, default=2)
    add_out_argument(ap)
    args = ap.parse_args()

    db = pgvz.connect()
    drop_bench_schema(db, SCHEMA, embedder=HashingEmbedder(64))
    with db.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, title text, body text)").format(
            sql.Identifier(SCHEMA, "docs")))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'post ' || g, 'a short text about item ' || g "
                             "|| ' and its neighbours ' || (g %% 97) FROM generate_series(1, %s) g").format(
            sql.Identifier(SCHEMA, "docs")), [args.rows])
    v = pgvz.Vectorizer(db, f"{SCHEMA}.docs", template="{title}: {body}", embedder=HashingEmbedder(64))
    v.create()
    v.create_index()
    t0 = time.perf_counter()
    v.sync(progress=False)
    first_sync = time.perf_counter() - t0
    m = v.migrate(embedder=HashingEmbedder(32), template="{body}")
    t0 = time.perf_counter()
    m.sync(progress=False)
    shadow_sync = time.perf_counter() - t0
    print(f"{args.rows:,} rows: first sync {first_sync:.1f} s, shadow built in {shadow_sync:.1f} s "
          "(HNSW index on both)")

    readers = Readers(db, args.readers, args.rows)
    for t in readers.threads:
        t.start()
    time.sleep(1.0)
    rounds = []
    for i in range(args.rounds):
        quiet_start = time.perf_counter()
        time.sleep(0.5)
        start = time.perf_counter()
        (m.cutover if i % 2 == 0 else m.rollback)()
        end = time.perf_counter()
        time.sleep(0.2)  # a reader that waited finishes after the commit
        during = readers.window(start, end)
        quiet = sorted(readers.window(quiet_start, quiet_start + (end - start) + 0.2))
        rounds.append({
            "switch": "cutover" if i % 2 == 0 else "rollback", "lock_ms": m.lock_ms,
            "call_ms": (end - start) * 1000,
            "reader_max_ms_during": max(during) * 1000 if during else 0.0,
            "reader_p99_ms_quiet": quiet[int(0.99 * (len(quiet) - 1))] * 1000 if quiet else 0.0,
            "reader_max_ms_quiet": quiet[-1] * 1000 if quiet else 0.0,
            "reader_queries_during": len(during)})
        r = rounds[-1]
        print(f"{r['switch']:>8}: lock held {r['lock_ms']:.1f} ms (call {r['call_ms']:.0f} ms); readers' "
              f"slowest query {r['reader_max_ms_during']:.1f} ms during it, {r['reader_max_ms_quiet']:.1f} ms "
              f"(p99 {r['reader_p99_ms_quiet']:.2f} ms) in as long a quiet stretch before")
    readers.stop.set()
    for t in readers.threads:
        t.join()
    median = {k: statistics.median(r[k] for r in rounds)
              for k in ("lock_ms", "call_ms", "reader_max_ms_during", "reader_max_ms_quiet")}
    ratio = median["reader_max_ms_during"] / median["reader_max_ms_quiet"] if median["reader_max_ms_quiet"] else None
    print(f"median of {len(rounds)} switches: lock {median['lock_ms']:.1f} ms; readers' slowest query "
          f"{median['reader_max_ms_during']:.1f} ms during a switch vs {median['reader_max_ms_quiet']:.1f} ms "
          f"quiet ({ratio:.1f}x); reader errors: {len(readers.errors)}")
    if readers.errors:
        print("  e.g.", readers.errors[0])
    m.finish()
    report = {"rows": args.rows, "rounds": rounds, "median": median, "reader_ratio": ratio,
              "reader_errors": len(readers.errors), "first_sync_s": first_sync, "shadow_sync_s": shadow_sync}
    save(args.out, "migration_cutover", report, db=db, plot=lambda ax: bars(
        ax, ["lock held (median)", "readers' slowest, switching", "readers' slowest, quiet"],
        [median["lock_ms"], median["reader_max_ms_during"], median["reader_max_ms_quiet"]],
        title=f"cutover / rollback on {args.rows:,} rows", xlabel="ms", fmt="{:.1f}"))
    drop_bench_schema(db, SCHEMA, embedder=HashingEmbedder(32))


if __name__ == "__main__":
    main()
