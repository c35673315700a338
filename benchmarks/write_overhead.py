"""Write overhead of change tracking: COPY 200k blog rows, and 5,000 single-row INSERTs in
one transaction, into a table with no vectorizer, with pgvz_nb attached, and with the
original timescale_vector PgVectorizer attached (row-level trigger), side by side.

A fourth variant, ``empty_stmt_trigger``, has a statement-level AFTER INSERT trigger
with a transition table and an empty body: the cost of the capture alone, the floor
for any design built on transition tables.

Rounds interleave the variants and the medians are compared, as ratios of rows/s to
the no-trigger table in the same run (this machine is shared and noisy). Beside wall
time, the server backend's own CPU time (from /proc, when the server is local) is
compared too: it does not count time spent waiting for other processes.

    .venv/bin/python benchmarks/write_overhead.py [--rows 200000] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import time
from datetime import datetime, timedelta, timezone

from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.sample import BLOG_DDL_COLUMNS, BLOG_POSTS

try:
    from timescale_vector import pgvectorizer as original
except ImportError:  # `make bench` installs it; without it that column is skipped
    original = None

SCHEMA = "public"  # the original's trigger names its queue unqualified: it only works in public


def make_copy_data(n: int, seed: int = 1) -> bytes:
    """n rows of COPY text for (title, author, contents, category, published_time)."""
    rng = random.Random(seed)
    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    buf = io.StringIO()
    for i in range(n):
        title, author, category, _, contents = BLOG_POSTS[rng.randrange(len(BLOG_POSTS))]
        published = start + timedelta(minutes=i)
        buf.write(f"{title} #{i}\t{author}\t{contents}\t{category}\t{published.isoformat()}\n")
    return buf.getvalue().encode()


def setup(db: pgvz.Database, table: str, variant: str) -> None:
    ident = sql.Identifier(SCHEMA, table)
    with db.connect() as conn:
        for stale in pgvz.queue.Queue.list_all(conn):
            if stale.source == (SCHEMA, table):
                conn.rollback()
                stale.drop(conn)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(ident))
        for suffix in ("embedding_work_queue", "embedding_failed"):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, f"{table}_{suffix}")))
        conn.execute(sql.SQL("CREATE TABLE {} (" + BLOG_DDL_COLUMNS + ")").format(ident))
    if variant == "pgvz_nb":
        pgvz.Vectorize(db, table, schema_name=SCHEMA).register()
    elif variant == "timescale_vector":
        original.Vectorize(db.dsn, table).register()
    elif variant == "empty_stmt_trigger":
        with db.connect() as conn:
            conn.execute(sql.SQL(
                "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
                "'BEGIN RETURN NULL; END'").format(sql.Identifier(SCHEMA, f"{table}_wq_for_embedding")))
            conn.execute(sql.SQL(
                "CREATE TRIGGER floor AFTER INSERT ON {} REFERENCING NEW TABLE AS n "
                "FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
                    ident, sql.Identifier(SCHEMA, f"{table}_wq_for_embedding")))
    with db.connect(autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # earlier runs' dirty pages must not be flushed during this one


def teardown(db: pgvz.Database, table: str, variant: str) -> None:
    if variant == "pgvz_nb":
        pgvz.Vectorize(db, table, schema_name=SCHEMA).unregister()
    with db.connect() as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA, table)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
            sql.Identifier(SCHEMA, f"{table}_embedding_work_queue")))
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
            sql.Identifier(SCHEMA, f"{table}_wq_for_embedding")))


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a local server process; NaN if remote."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_copy(db: pgvz.Database, table: str, data: bytes) -> tuple[float, float]:
    """(wall seconds, backend CPU seconds) of one COPY including its commit."""
    copy_sql = sql.SQL(
        "COPY {} (title, author, contents, category, published_time) FROM STDIN"
    ).format(sql.Identifier(SCHEMA, table))
    with db.connect() as conn:
        pid = conn.info.backend_pid
        c0, t0 = backend_cpu(pid), time.perf_counter()
        with conn.cursor().copy(copy_sql) as copy:
            for i in range(0, len(data), 1 << 20):
                copy.write(data[i : i + (1 << 20)])
        conn.commit()
        return time.perf_counter() - t0, backend_cpu(pid) - c0


def time_single_inserts(db: pgvz.Database, table: str, n: int) -> tuple[float, float]:
    """(wall seconds, backend CPU seconds) of n single-row INSERTs in one transaction."""
    insert = sql.SQL(
        "INSERT INTO {} (title, author, contents, category, published_time) "
        "VALUES (%s, %s, %s, %s, now())"
    ).format(sql.Identifier(SCHEMA, table))
    post = BLOG_POSTS[1]
    with db.connect() as conn:
        pid = conn.info.backend_pid
        c0, t0 = backend_cpu(pid), time.perf_counter()
        for i in range(n):
            conn.execute(insert, (f"t{i}", post[1], post[4], post[2]))
        conn.commit()
        return time.perf_counter() - t0, backend_cpu(pid) - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--inserts", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    db = pgvz.connect()
    variants = ["none", "empty_stmt_trigger", "pgvz_nb"] + (["timescale_vector"] if original else [])
    data = make_copy_data(args.rows)
    copy_s: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    ins_s: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            table = f"bench_write_{v}"
            setup(db, table, v)
            copy_s[v].append(time_copy(db, table, data))
            teardown(db, table, v)
            setup(db, table, v)
            ins_s[v].append(time_single_inserts(db, table, args.inserts))
            teardown(db, table, v)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    def med(samples: list[tuple[float, float]], i: int) -> float:
        return statistics.median(s[i] for s in samples)

    def ratio(samples: dict, v: str, i: int) -> float:
        """Median over rounds of (no-trigger time / variant time) within the same round:
        pairs measured minutes apart would carry the machine's drift into the ratio."""
        return statistics.median(b[i] / x[i] for b, x in zip(samples["none"], samples[v]))

    report: dict = {"rows": args.rows, "inserts": args.inserts, "rounds": args.rounds, "variants": {}}
    print(f"\nCOPY of {args.rows:,} rows and {args.inserts:,} single-row INSERTs (one transaction); "
          f"{args.rounds} rounds; rates are medians, ratios the median of per-round ratios "
          "to 'none'; 'cpu' compares the server backend's CPU time")
    print(f"{'variant':<20}{'COPY rows/s':>12}{'wall':>7}{'cpu':>7}"
          f"{'INSERT rows/s':>15}{'wall':>7}{'cpu':>7}")
    for v in variants:
        row = {
            "copy_wall_s": [s[0] for s in copy_s[v]], "copy_cpu_s": [s[1] for s in copy_s[v]],
            "insert_wall_s": [s[0] for s in ins_s[v]], "insert_cpu_s": [s[1] for s in ins_s[v]],
            "copy_ratio": ratio(copy_s, v, 0),
            "copy_cpu_ratio": ratio(copy_s, v, 1),
            "insert_ratio": ratio(ins_s, v, 0),
            "insert_cpu_ratio": ratio(ins_s, v, 1),
        }
        report["variants"][v] = row
        print(f"{v:<20}{args.rows / med(copy_s[v], 0):>12,.0f}{row['copy_ratio']:>6.2f}x"
              f"{row['copy_cpu_ratio']:>6.2f}x{args.inserts / med(ins_s[v], 0):>15,.0f}"
              f"{row['insert_ratio']:>6.2f}x{row['insert_cpu_ratio']:>6.2f}x")
    if not original:
        print("(timescale_vector not installed: `make bench` installs it beside psycopg2-binary)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
