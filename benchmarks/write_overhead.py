"""Write overhead of change tracking: COPY 200k blog rows, and 5,000 single-row INSERTs in
one transaction, into a table with no vectorizer, with pgvz_nb attached, and with the
original timescale_vector PgVectorizer attached (row-level trigger), side by side.

A fourth variant, ``empty_stmt_trigger``, has a statement-level AFTER INSERT trigger
with a transition table and an empty body: the cost of the capture alone, the floor
for any design built on transition tables.

The transition table lives in a tuplestore bounded by ``work_mem``; beyond it, it spills to
a temp file. The embedded server runs with work_mem 128MB (pgvz_nb.db.EMBEDDED_SETTINGS),
enough for the 200k rows; ``pgvz_nb_work_mem_4MB`` runs the pgvz_nb COPY in a session at
PostgreSQL's default 4MB, as on an untuned external server.

Rounds interleave the variants and the medians are compared, as ratios of rows/s to
the no-trigger table in the same run (this machine is shared and noisy). Beside wall
time, the server backend's own CPU time (from /proc, when the server is local) is
compared too: it does not count time spent waiting for other processes. The backend's
minor page faults are counted as well: the transition table is a copy of every new row in
fresh memory, and each first touch of a page is a fault (~3 us each on this VM, measured
by touching 72 MB from C: 58 ms).

    .venv/bin/python benchmarks/write_overhead.py [--rows 200000] [--rounds 7] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import time
from datetime import datetime, timedelta, timezone

from psycopg import sql

import pgvz_nb as pgvz
from report import add_out_argument, save
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
    if variant.startswith("pgvz_nb"):
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
    if variant.startswith("pgvz_nb"):
        pgvz.Vectorize(db, table, schema_name=SCHEMA).unregister()
    with db.connect() as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA, table)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
            sql.Identifier(SCHEMA, f"{table}_embedding_work_queue")))
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
            sql.Identifier(SCHEMA, f"{table}_wq_for_embedding")))


def backend_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, minor page faults) of a local server process so far; NaN if remote.
    CPU from /proc/PID/schedstat (nanoseconds), else user + system clock ticks (10 ms)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), float("nan")
    try:
        cpu = int(open(f"/proc/{pid}/schedstat").read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, float(fields[7])


def time_copy(db: pgvz.Database, table: str, data: bytes, work_mem: str | None = None) -> tuple[float, float, float]:
    """(wall seconds, backend CPU seconds, backend minor page faults) of one COPY including
    its commit."""
    copy_sql = sql.SQL(
        "COPY {} (title, author, contents, category, published_time) FROM STDIN"
    ).format(sql.Identifier(SCHEMA, table))
    with db.connect() as conn:
        if work_mem:
            conn.execute(sql.SQL("SET work_mem = {}").format(sql.Literal(work_mem)))
            conn.commit()
        pid = conn.info.backend_pid
        (c0, f0), t0 = backend_usage(pid), time.perf_counter()
        with conn.cursor().copy(copy_sql) as copy:
            for i in range(0, len(data), 1 << 20):
                copy.write(data[i : i + (1 << 20)])
        conn.commit()
        wall = time.perf_counter() - t0
        c1, f1 = backend_usage(pid)
        return wall, c1 - c0, f1 - f0


def time_single_inserts(db: pgvz.Database, table: str, n: int, autocommit: bool = False) -> tuple[float, float]:
    """(wall seconds, backend CPU seconds) of n single-row INSERTs, in one transaction or
    each committing on its own (autocommit: a WAL flush per row)."""
    insert = sql.SQL(
        "INSERT INTO {} (title, author, contents, category, published_time) "
        "VALUES (%s, %s, %s, %s, now())"
    ).format(sql.Identifier(SCHEMA, table))
    post = BLOG_POSTS[1]
    with db.connect(autocommit=autocommit) as conn:
        pid = conn.info.backend_pid
        (c0, _), t0 = backend_usage(pid), time.perf_counter()
        for i in range(n):
            conn.execute(insert, (f"t{i}", post[1], post[4], post[2]))
        conn.commit()
        wall = time.perf_counter() - t0
        return wall, backend_usage(pid)[0] - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--inserts", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--copy-only", action="store_true",
                    help="only the COPY: shorter rounds, so the variants of a round run closer in time")
    add_out_argument(ap)
    args = ap.parse_args()

    db = pgvz.connect()
    variants = ["none", "empty_stmt_trigger", "pgvz_nb", "pgvz_nb_work_mem_4MB"]
    variants += ["timescale_vector"] if original else []
    with db.connect() as conn:
        work_mem = conn.execute("SHOW work_mem").fetchone()[0]
    data = make_copy_data(args.rows)
    kinds = ("copy",) if args.copy_only else ("copy", "insert", "autocommit")
    samples: dict[str, dict[str, list[tuple[float, ...]]]] = {k: {v: [] for v in variants} for k in kinds}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            table = f"bench_write_{v}"
            for kind in kinds:
                if kind != "copy" and v.endswith("4MB"):
                    continue  # work_mem only matters to a statement writing many rows
                setup(db, table, v)
                if kind == "copy":
                    t = time_copy(db, table, data, "4MB" if v.endswith("4MB") else None)
                else:
                    t = time_single_inserts(db, table, args.inserts, autocommit=kind == "autocommit")
                samples[kind][v].append(t)
                teardown(db, table, v)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    def rate(kind: str, v: str, n: int) -> float:
        return n / statistics.median(s[0] for s in samples[kind][v])

    def ratio(kind: str, v: str, i: int) -> float:
        """Median over rounds of (no-trigger time / variant time) within the same round:
        pairs measured minutes apart would carry the machine's drift into the ratio."""
        pairs = [b[i] / x[i] for b, x in zip(samples[kind]["none"], samples[kind][v]) if x[i] > 0]
        return statistics.median(pairs) if pairs else float("nan")

    report: dict = {"rows": args.rows, "inserts": args.inserts, "rounds": args.rounds,
                    "server_work_mem": work_mem, "variants": {}}
    print(f"\nCOPY of {args.rows:,} rows; {args.inserts:,} single-row INSERTs in one transaction, and "
          f"autocommitted; {args.rounds} rounds; rates are medians, ratios the median of per-round "
          f"ratios to 'none'; 'cpu' compares the server backend's CPU time; server work_mem {work_mem}")
    print(f"{'variant':<22}{'COPY rows/s':>12}{'wall':>7}{'cpu':>7}{'faults':>8}"
          f"{'INSERT/s 1 tx':>15}{'wall':>7}{'cpu':>7}{'autocommit/s':>14}{'wall':>7}")
    for v in variants:
        row: dict = {}
        for kind, n in (("copy", args.rows), ("insert", args.inserts), ("autocommit", args.inserts)):
            if samples.get(kind, {}).get(v):
                row[f"{kind}_wall_s"] = [s[0] for s in samples[kind][v]]
                row[f"{kind}_cpu_s"] = [s[1] for s in samples[kind][v]]
                row[f"{kind}_rows_per_s"] = rate(kind, v, n)
                row[f"{kind}_ratio"] = ratio(kind, v, 0)
                row[f"{kind}_cpu_ratio"] = ratio(kind, v, 1)
                if kind == "copy":
                    row["copy_page_faults"] = statistics.median(s[2] for s in samples[kind][v])
        report["variants"][v] = row
        line = (f"{v:<22}{row['copy_rows_per_s']:>12,.0f}{row['copy_ratio']:>6.2f}x"
                f"{row['copy_cpu_ratio']:>6.2f}x{row['copy_page_faults']:>8,.0f}")
        if "insert_ratio" in row:
            line += (f"{row['insert_rows_per_s']:>15,.0f}{row['insert_ratio']:>6.2f}x{row['insert_cpu_ratio']:>6.2f}x"
                     f"{row['autocommit_rows_per_s']:>14,.0f}{row['autocommit_ratio']:>6.2f}x")
        print(line)
    if not original:
        print("(timescale_vector not installed: `make bench` installs it beside psycopg2-binary)")

    def plot(ax):
        import numpy as np

        names = [v for v in variants if v != "none"]
        y = np.arange(len(names))[::-1]
        for off, kind, label in ((0.27, "copy", "COPY"), (0, "insert", "INSERTs, 1 tx"),
                                 (-0.27, "autocommit", "INSERTs, autocommit")):
            vals = [report["variants"][v].get(f"{kind}_ratio", 0) for v in names]
            ax.barh(y + off, vals, height=0.26, label=label)
        ax.set_yticks(y, names)
        ax.axvline(0.9, color="#c44e52", linestyle="--", linewidth=1)
        ax.text(0.9, len(names) - 0.5, " goal (COPY) 0.9", color="#c44e52", fontsize=8)
        ax.set_xlim(0, 1.25)
        ax.set_xlabel("rows/s relative to no trigger (median of per-round ratios)")
        ax.set_title(f"Write overhead, work_mem {work_mem}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    save(args.out, "write_overhead", report, db, plot)


if __name__ == "__main__":
    main()
