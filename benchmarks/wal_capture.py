"""capture="wal" against triggers (issue 17), measured side by side in one run.

1. Write overhead. COPY of 200k blog rows, 5,000 single-row INSERTs in one transaction and
   5,000 autocommitted, into a table with no vectorizer (``none``), an empty statement-level
   transition-table trigger (``empty_stmt_trigger``, the floor of any trigger design), a
   ``capture="triggers"`` vectorizer and a ``capture="wal"`` one (slot and publication, nobody
   consuming during the writes). Rounds rotate the order of the variants, as
   write_overhead.py does; ratios are medians of per-round ratios of time to ``none``.
2. Capture throughput. Keys queued per second by ``capture.capture(db, conn)`` from the WAL
   of one 200k-row bulk INSERT (blog rows, and narrow rows: pgoutput sends whole rows, so the
   width matters). Only the capture call is timed, on a connection that already captured once.
3. Commit-to-queued latency of single-row autocommitted writes, with a thread calling
   ``capture.capture`` in a loop on its own connection: from the writer's commit returning to
   the return of the capture call that queued the key. An upper bound: after the inbox
   commit the call advances the slot and runs one more round that finds nothing (~10 ms
   here) before it returns. One writer, so keys arrive in commit order and the k-th key
   queued is the k-th written. Beside it, end to end
   with a ``Worker`` running (commit to the row in the destination, seen by polling it every
   2 ms), in each capture mode: triggers wake the worker by NOTIFY, WAL capture by a look at
   the slot every 0.1 s (worker.WAL_CHECK_EVERY), either way within the poll.
4. CPU per written row. The writer backend's CPU (/proc/PID/schedstat) in each mode; for WAL
   mode also the capture call's backend (it decodes the WAL: the peek runs there) and its
   Python thread (time.thread_time). Moving keys from the inbox to the queue and embedding
   are the same in both modes and not counted.

A capture call that queues fewer keys than were written is reported as STALLED, and the
call is repeated with the session's ``logical_decoding_work_mem`` raised so that the
transaction is not streamed; figures measured that way are marked.

``--baseline REV`` also times, in part 2, pgvz_nb/capture.py as it was at git revision REV,
its call and the current one's alternating round by round on the same server. They share
the slot: a baseline without the restart-point fix (d7e5689) leaves the current call to
decode the baseline's WAL again, so the ratio is then a lower bound. ``--only-throughput``
runs part 2 alone.

    .venv/bin/python benchmarks/wal_capture.py [--rows 200000] [--inserts 5000] [--rounds 7]
        [--bulk-rows 200000] [--bulk-rounds 3] [--latency-writes 500] [--quick] [--out DIR]
        [--only-throughput] [--baseline REV]
"""

# ruff: noqa: T201 - a benchmark prints what it measured

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from report import add_out_argument, drop_bench_schema, save
from write_overhead import backend_usage, make_copy_data

import pgvz_nb as pgvz
from pgvz_nb import capture
from pgvz_nb.embedders import HashingEmbedder
from pgvz_nb.sample import BLOG_DDL_COLUMNS, BLOG_POSTS
from pgvz_nb.worker import Worker

SCHEMA = "bench_wal"
VARIANTS = ["none", "empty_stmt_trigger", "triggers", "wal"]
KINDS = ("copy", "insert", "autocommit")
GOAL_RATIO = 0.97
GOAL_KEYS_PER_S = 150_000
#: the session setting of a capture retried after a stall: no transaction is streamed
NO_STREAMING = "2GB"
#: (label, capture mode, writer sets pgvz.notify = on) of the end-to-end latency runs
WORKER_CASES = [("worker_triggers", "triggers", False), ("worker_triggers_notify", "triggers", True),
                ("worker_wal", "wal", False)]
EMBEDDER = HashingEmbedder(32)  # nothing is embedded in what is timed: the cheapest model
COLUMNS = sql.SQL("title, author, contents, category, published_time")


def rel(table: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, table)


def make_table(conn: psycopg.Connection, table: str) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(rel(table)))
    conn.execute(sql.SQL("CREATE TABLE {} (" + BLOG_DDL_COLUMNS + ")").format(rel(table)))


def vectorizer(db: pgvz.Database, table: str, mode: str, column: str = "contents") -> pgvz.Vectorizer:
    return pgvz.Vectorizer(db, f"{SCHEMA}.{table}", chunk_column=column, embedder=EMBEDDER,
                           capture=mode).create()


def setup(db: pgvz.Database, table: str, variant: str) -> pgvz.Vectorizer | None:
    with db.connect() as conn:
        make_table(conn, table)
        if variant == "empty_stmt_trigger":
            fn = sql.Identifier(SCHEMA, f"{table}_floor")
            conn.execute(sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
                                 "'BEGIN RETURN NULL; END'").format(fn))
            conn.execute(sql.SQL("CREATE TRIGGER floor AFTER INSERT ON {} REFERENCING NEW TABLE AS n "
                                 "FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(rel(table), fn))
    v = vectorizer(db, table, variant) if variant in ("triggers", "wal") else None
    with db.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("CHECKPOINT"))  # earlier rounds' dirty pages are not flushed during this one
    return v


def teardown(db: pgvz.Database, table: str, v: pgvz.Vectorizer | None) -> None:
    if v is not None:
        v.drop()  # the last WAL vectorizer's drop drops the slot
    with db.connect() as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(rel(table)))
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(SCHEMA, f"{table}_floor")))


def wal_lsn(conn: psycopg.Connection) -> str:
    return conn.execute(sql.SQL("SELECT pg_current_wal_insert_lsn()::text")).fetchone()[0]


def wal_since(conn: psycopg.Connection, lsn: str) -> int:
    return conn.execute(sql.SQL("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)::bigint"),
                        [lsn]).fetchone()[0]


def write(db: pgvz.Database, table: str, kind: str, data: bytes, n: int) -> dict[str, float]:
    """One workload, commits included: wall seconds, the writer backend's CPU seconds, WAL bytes."""
    _, author, category, _, contents = BLOG_POSTS[1]
    insert = sql.SQL("INSERT INTO {} ({}) VALUES (%s, %s, %s, %s, now())").format(rel(table), COLUMNS)
    with db.connect(autocommit=kind == "autocommit") as conn:
        pid = conn.info.backend_pid
        lsn = wal_lsn(conn)
        conn.commit()
        c0, t0 = backend_usage(pid)[0], time.perf_counter()
        if kind == "copy":
            with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(rel(table), COLUMNS)) as copy:
                for i in range(0, len(data), 1 << 20):
                    copy.write(data[i : i + (1 << 20)])
        else:
            for i in range(n):
                conn.execute(insert, (f"t{i}", author, contents, category))
        conn.commit()
        wall = time.perf_counter() - t0
        cpu = backend_usage(pid)[0] - c0
        return {"wall_s": wall, "cpu_s": cpu, "wal_bytes": wal_since(conn, lsn)}


def timed_capture(db: pgvz.Database, conn: psycopg.Connection, cap: Any = capture) -> dict[str, float]:
    """One capture call (of module ``cap``): its wall time, its backend's CPU and its Python
    thread's CPU."""
    pid = conn.info.backend_pid
    b0, p0, t0 = backend_usage(pid)[0], time.thread_time(), time.perf_counter()
    done = cap.capture(db, conn)
    wall, py = time.perf_counter() - t0, time.thread_time() - p0
    return {"keys": done.keys, "transactions": done.transactions, "wall_s": wall,
            "backend_cpu_s": backend_usage(pid)[0] - b0, "python_cpu_s": py}


def capture_written(db: pgvz.Database, conn: psycopg.Connection, written: int, cap: Any = capture) -> dict[str, Any]:
    """Capture what was written; a call that queues less is a stall, and is retried with
    the transaction not streamed so that the figures exist at all."""
    out: dict[str, Any] = {"default": timed_capture(db, conn, cap)}
    out["stalled"] = out["default"]["keys"] < written
    if out["stalled"]:
        conn.execute(sql.SQL("SELECT set_config('logical_decoding_work_mem', %s, false)"), [NO_STREAMING])
        try:
            out["no_streaming"] = timed_capture(db, conn, cap)
        finally:
            conn.execute(sql.SQL("RESET logical_decoding_work_mem"))
    out["used"] = out.get("no_streaming", out["default"])
    return out


def warm_capture(db: pgvz.Database) -> psycopg.Connection:
    """A capture connection that has captured once, as a running worker's has."""
    conn = db.connect(autocommit=True)
    capture.capture(db, conn)
    return conn


# --- 1 and 4: write overhead, CPU per row -------------------------------------------------


def overhead(db: pgvz.Database, args: argparse.Namespace) -> tuple[dict, dict]:
    data = make_copy_data(args.rows)
    n_of = {"copy": args.rows, "insert": args.inserts, "autocommit": args.inserts}
    samples: dict[str, dict[str, list[dict]]] = {k: {v: [] for v in VARIANTS} for k in KINDS}
    captures: dict[str, list[dict]] = {k: [] for k in KINDS}
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
        for variant in order:
            table = f"w_{variant}"
            for kind in KINDS:
                v = setup(db, table, variant)
                conn = warm_capture(db) if variant == "wal" else None
                try:
                    samples[kind][variant].append(write(db, table, kind, data, n_of[kind]))
                    if conn is not None:
                        captures[kind].append(capture_written(db, conn, n_of[kind]))
                finally:
                    if conn is not None:
                        conn.close()
                    teardown(db, table, v)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    def ratio(kind: str, variant: str, field: str) -> float:
        """Median over rounds of none's / the variant's, within a round (the machine drifts)."""
        pairs = [b[field] / x[field] for b, x in zip(samples[kind]["none"], samples[kind][variant])
                 if x[field] > 0]
        return statistics.median(pairs) if pairs else float("nan")

    variants: dict[str, dict] = {}
    for variant in VARIANTS:
        row: dict[str, Any] = {}
        for kind in KINDS:
            s, n = samples[kind][variant], n_of[kind]
            row[f"{kind}_wall_s"] = [x["wall_s"] for x in s]
            row[f"{kind}_rows_per_s"] = n / statistics.median(x["wall_s"] for x in s)
            row[f"{kind}_ratio"] = ratio(kind, variant, "wall_s")
            row[f"{kind}_cpu_ratio"] = ratio(kind, variant, "cpu_s")
            row[f"{kind}_writer_cpu_us_per_row"] = statistics.median(x["cpu_s"] for x in s) / n * 1e6
            row[f"{kind}_wal_bytes_per_row"] = statistics.median(x["wal_bytes"] for x in s) / n
        variants[variant] = row
    cpu: dict[str, dict] = {}
    for kind in KINDS:
        n, used = n_of[kind], [c["used"] for c in captures[kind]]
        wal_backend = statistics.median(u["backend_cpu_s"] for u in used) / n * 1e6
        wal_python = statistics.median(u["python_cpu_s"] for u in used) / n * 1e6
        cpu[kind] = {
            "none_writer": variants["none"][f"{kind}_writer_cpu_us_per_row"],
            "empty_stmt_trigger_writer": variants["empty_stmt_trigger"][f"{kind}_writer_cpu_us_per_row"],
            "triggers_writer": variants["triggers"][f"{kind}_writer_cpu_us_per_row"],
            "wal_writer": variants["wal"][f"{kind}_writer_cpu_us_per_row"],
            "wal_capture_backend": wal_backend, "wal_capture_python": wal_python,
            "wal_total": variants["wal"][f"{kind}_writer_cpu_us_per_row"] + wal_backend + wal_python,
            "capture_keys_per_s": statistics.median(u["keys"] / u["wall_s"] for u in used),
            "stalled_rounds": sum(c["stalled"] for c in captures[kind]),
            "stalled_default_calls": [c["default"] for c in captures[kind] if c["stalled"]],
        }
    return variants, cpu


# --- 2: capture throughput ----------------------------------------------------------------


def baseline_module(rev: str) -> Any:
    """pgvz_nb/capture.py as it was at git revision ``rev``, beside the current one (same
    package, same sql module), so that both are timed in one run on the same server."""
    import subprocess
    import sys
    import types

    src = subprocess.run(["git", "show", f"{rev}:pgvz_nb/capture.py"], check=True, capture_output=True,
                         text=True, cwd=str(Path(__file__).resolve().parent)).stdout
    mod = types.ModuleType("pgvz_nb._baseline_capture")
    mod.__package__ = "pgvz_nb"
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"{rev}:pgvz_nb/capture.py", "exec"), mod.__dict__)  # our own file, from git
    return mod


def throughput(db: pgvz.Database, rows: int, rounds: int, baseline: Any = None) -> dict[str, dict]:
    """Keys/s of one capture call after a bulk INSERT of ``rows`` rows, by row shape. With
    ``baseline`` (a capture module), each round also captures one more bulk INSERT with it,
    the two calls' order alternating by round."""
    with db.connect() as conn:
        make_table(conn, "bulk_blog")
        conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} (" + BLOG_DDL_COLUMNS + ")").format(rel("staging")))
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(rel("staging"), COLUMNS)) as copy:
            copy.write(make_copy_data(rows, seed=2))
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text NOT NULL)").format(rel("bulk_narrow")))
        sizes = {
            "blog": conn.execute(sql.SQL("SELECT avg(pg_column_size(s.*))::int FROM {} s").format(
                rel("staging"))).fetchone()[0],
            "narrow": conn.execute(sql.SQL("SELECT pg_column_size(ROW(1, 'row 100000'::text))")).fetchone()[0],
        }
    vs = [vectorizer(db, "bulk_blog", "wal"), vectorizer(db, "bulk_narrow", "wal", column="body")]
    inserts = {
        "blog": sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(rel("bulk_blog"), COLUMNS, COLUMNS,
                                                                         rel("staging")),
        "narrow": sql.SQL("INSERT INTO {} (id, body) SELECT g, 'row ' || g FROM generate_series(%s::int, %s::int) g")
        .format(rel("bulk_narrow")),
    }
    impls = {"current": capture, **({"baseline": baseline} if baseline is not None else {})}
    runs: dict[str, dict[str, list[dict]]] = {shape: {i: [] for i in impls} for shape in ("blog", "narrow")}
    conn = warm_capture(db)
    written = 0
    try:
        for r in range(rounds):
            for shape in (["blog", "narrow"] if r % 2 == 0 else ["narrow", "blog"]):
                for impl in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
                    with db.connect() as w:
                        w.execute(inserts[shape], [written + 1, written + rows] if shape == "narrow" else None)
                        w.commit()
                    written += rows if shape == "narrow" else 0
                    runs[shape][impl].append(capture_written(db, conn, rows, impls[impl]))
    finally:
        conn.close()
        for v in vs:
            v.drop()
        with db.connect() as c:
            for t in ("bulk_blog", "bulk_narrow", "staging"):
                c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(rel(t)))

    def summary(s: list[dict]) -> dict[str, Any]:
        used = [x["used"] for x in s]
        return {
            "row_bytes": sizes[shape], "rows": rows,
            "keys_per_s": statistics.median(u["keys"] / u["wall_s"] for u in used),
            "wall_s": [u["wall_s"] for u in used],
            "cpu_us_per_key": statistics.median((u["backend_cpu_s"] + u["python_cpu_s"]) / u["keys"] * 1e6
                                                for u in used if u["keys"]),
            "backend_cpu_us_per_key": statistics.median(u["backend_cpu_s"] / u["keys"] * 1e6 for u in used if u["keys"]),
            "python_cpu_us_per_key": statistics.median(u["python_cpu_s"] / u["keys"] * 1e6 for u in used if u["keys"]),
            "stalled_rounds": sum(x["stalled"] for x in s),
            "stalled_default_calls": [x["default"] for x in s if x["stalled"]],
        }

    out = {}
    for shape, by_impl in runs.items():
        out[shape] = summary(by_impl["current"])
        if baseline is not None:
            out[shape]["baseline"] = summary(by_impl["baseline"])
            out[shape]["speedup_vs_baseline"] = statistics.median(  # per round: the two calls ran side by side
                b["used"]["wall_s"] / c["used"]["wall_s"] for c, b in zip(by_impl["current"], by_impl["baseline"]))
    return out


# --- 3: latency ---------------------------------------------------------------------------


def percentiles(ms: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"p50_ms": statistics.median(ms), "p99_ms": cuts[98], "max_ms": max(ms), "n": len(ms)}


def write_singles(db: pgvz.Database, table: str, n: int, gap: float, notify: bool = False) -> list[tuple[int, float]]:
    """(id, time its autocommit returned) of n single-row INSERTs a random 0..2*gap apart.
    ``notify``: the triggers send their NOTIFY, which they do not by default where the server
    allows prepared transactions (the embedded server does)."""
    rng = random.Random(3)
    insert = sql.SQL("INSERT INTO {} ({}) VALUES (%s, 'Ann', %s, 'tech', now()) RETURNING id").format(
        rel(table), COLUMNS)
    out = []
    with db.connect(autocommit=True) as w:
        if notify:
            w.execute(sql.SQL("SELECT set_config('pgvz.notify', 'on', false)"))
        for i in range(n):
            key = w.execute(insert, [f"probe {i}", f"latency probe number {i}"]).fetchone()[0]
            out.append((key, time.perf_counter()))
            time.sleep(rng.uniform(0, 2 * gap))
    return out


def latency_capture_loop(db: pgvz.Database, writes: int, gap: float) -> dict:
    """Commit to queued, a thread capturing in a loop."""
    with db.connect() as conn:
        make_table(conn, "lat")
    v = vectorizer(db, "lat", "wal")
    stop, ready = threading.Event(), threading.Event()
    queued: list[tuple[float, int]] = []  # (capture call returned, keys it queued)
    calls: list[float] = []

    def loop() -> None:
        with db.connect(autocommit=True) as conn:
            while not stop.is_set():
                t0 = time.perf_counter()
                done = capture.capture(db, conn)
                t1 = time.perf_counter()
                calls.append(t1 - t0)
                if done.keys:
                    queued.append((t1, done.keys))
                ready.set()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        ready.wait(60)
        commits = write_singles(db, "lat", writes, gap)
        deadline = time.monotonic() + 60
        while sum(k for _, k in queued) < writes and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
        v.drop()
        with db.connect() as c:
            c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(rel("lat")))
    at = [t for t, k in queued for _ in range(k)]
    if len(at) != writes:
        raise SystemExit(f"the capture loop queued {len(at)} keys of {writes} written")
    return {**percentiles([(q - c) * 1e3 for q, (_, c) in zip(at, commits)]),
            "capture_call_ms_p50": statistics.median(calls) * 1e3, "capture_calls": len(calls)}


def latency_worker(db: pgvz.Database, mode: str, writes: int, gap: float, poll: float,
                   notify: bool = False) -> dict:
    """Commit to embedded, a Worker running; the destination polled every 2 ms."""
    table = f"lat_worker_{mode}{'_notify' if notify else ''}"
    with db.connect() as conn:
        make_table(conn, table)
    v = vectorizer(db, table, mode)
    seen: dict[int, float] = {}
    stop = threading.Event()
    select = sql.SQL("SELECT {} FROM {}").format(sql.Identifier(v.config.dest_keys[0]),
                                                 sql.Identifier(*v.destination))

    def poller() -> None:
        with db.connect(autocommit=True) as conn:
            while not stop.is_set():
                for (key,) in conn.execute(select):
                    seen.setdefault(key, time.perf_counter())
                time.sleep(0.002)

    worker = Worker(db, [v.name], poll=poll)
    threads = [threading.Thread(target=worker.run, daemon=True), threading.Thread(target=poller, daemon=True)]
    for t in threads:
        t.start()
    try:
        time.sleep(poll + 0.5)  # its first round done: it waits for a NOTIFY or its poll
        commits = write_singles(db, table, writes, gap, notify)
        deadline = time.monotonic() + 60 + 2 * poll
        while any(k not in seen for k, _ in commits) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop_event.set()
        stop.set()
        for t in threads:
            t.join()
        v.drop()
        with db.connect() as c:
            c.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(rel(table)))
    missing = [k for k, _ in commits if k not in seen]
    if missing:
        raise SystemExit(f"the worker ({mode}) embedded {len(commits) - len(missing)} of {len(commits)} rows")
    return {**percentiles([(seen[k] - c) * 1e3 for k, c in commits]), "poll_s": poll, "wakeups": worker.wakeups,
            "wal_wakeups": worker.wal_wakeups}


# --- the run ------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the COPY")
    ap.add_argument("--inserts", type=int, default=5_000, help="single-row INSERTs, one tx and autocommitted")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--bulk-rows", type=int, default=200_000, help="rows of the bulk INSERT captured")
    ap.add_argument("--bulk-rounds", type=int, default=3)
    ap.add_argument("--latency-writes", type=int, default=500)
    ap.add_argument("--worker-writes", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.01, help="mean seconds between the latency writes")
    ap.add_argument("--poll", type=float, default=1.0, help="the Worker's poll (pgvz worker's default: 5)")
    ap.add_argument("--quick", action="store_true", help="everything tiny: checks the script, measures nothing")
    ap.add_argument("--only-throughput", action="store_true", help="part 2 only")
    ap.add_argument("--baseline", metavar="REV", help="part 2 also times pgvz_nb/capture.py of git revision REV, "
                    "alternating with the current one round by round")
    add_out_argument(ap)
    args = ap.parse_args()
    if args.quick:
        args.rows, args.inserts, args.rounds, args.bulk_rows, args.bulk_rounds = 2000, 20, 1, 2000, 1
        args.latency_writes, args.worker_writes, args.poll = 20, 10, 0.3

    db = pgvz.connect()
    drop_bench_schema(db, SCHEMA, EMBEDDER)
    with db.connect(autocommit=True) as conn:
        capture.capture(db, conn)  # a slot an interrupted run left, with no vectorizer: dropped
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        settings = {s: conn.execute(sql.SQL("SELECT current_setting(%s)"), [s]).fetchone()[0]
                    for s in ("wal_level", "logical_decoding_work_mem", "work_mem", "synchronous_commit",
                              "max_slot_wal_keep_size")}
    if settings["wal_level"] != "logical":
        raise SystemExit(f"wal_level is {settings['wal_level']}, not logical: capture='wal' cannot run")
    print(f"server: {', '.join(f'{k} {v}' for k, v in settings.items())}", flush=True)
    variants: dict = {}
    cpu: dict = {}
    latency: dict = {}
    try:
        if not args.only_throughput:
            variants, cpu = overhead(db, args)
        print("capture throughput ...", flush=True)
        bulk = throughput(db, args.bulk_rows, args.bulk_rounds, baseline_module(args.baseline) if args.baseline else None)
        if not args.only_throughput:
            print("latency ...", flush=True)
            latency = {"capture_loop": latency_capture_loop(db, args.latency_writes, args.gap)}
            for label, mode, notify in WORKER_CASES:
                latency[label] = latency_worker(db, mode, args.worker_writes, args.gap * 2, args.poll, notify)
    finally:
        drop_bench_schema(db, SCHEMA, EMBEDDER)
    report = {"rows": args.rows, "inserts": args.inserts, "rounds": args.rounds, "settings": settings,
              "variants": variants, "cpu_us_per_row": cpu, "throughput": bulk, "latency": latency,
              "baseline": args.baseline}
    print_report(args, report)
    if args.only_throughput:
        return

    def plot(ax: Any) -> None:
        import numpy as np

        names = [v for v in VARIANTS if v != "none"]
        y = np.arange(len(names))[::-1]
        for off, kind, label in ((0.27, "copy", "COPY"), (0, "insert", "INSERTs, 1 tx"),
                                 (-0.27, "autocommit", "INSERTs, autocommit")):
            ax.barh(y + off, [variants[v][f"{kind}_ratio"] for v in names], height=0.26, label=label)
        ax.set_yticks(y, names)
        ax.axvline(GOAL_RATIO, color="#c44e52", linestyle="--", linewidth=1)
        ax.text(GOAL_RATIO, len(names) - 0.5, f" goal (wal) {GOAL_RATIO}", color="#c44e52", fontsize=8)
        ax.set_xlim(0, 1.25)
        ax.set_xlabel("rows/s relative to no vectorizer (median of per-round ratios)")
        ax.set_title(f"Write overhead, capture modes ({args.rounds} rounds)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    save(args.out, "wal_capture", report, db, plot)


def print_report(args: argparse.Namespace, r: dict) -> None:
    v, cpu, bulk, lat = r["variants"], r["cpu_us_per_row"], r["throughput"], r["latency"]
    mark = {True: "met", False: "MISSED"}
    if not v:
        print_throughput(args, bulk, cpu, mark)
        return
    print(f"\n1. Write overhead: COPY {args.rows:,} rows; {args.inserts:,} single-row INSERTs in one "
          f"transaction, and autocommitted; {args.rounds} rounds, order rotated; rows/s are medians, "
          "ratios the median of per-round ratios of time to 'none' (goal for wal: "
          f">= {GOAL_RATIO}x each); WAL B/row for COPY / 1 tx / autocommit")
    print(f"{'variant':<20}{'COPY rows/s':>12}{'vs none':>8}{'1 tx rows/s':>13}{'vs none':>8}"
          f"{'autocommit/s':>13}{'vs none':>8}   {'WAL B/row':<20}")
    for name in VARIANTS:
        x = v[name]
        wal = " / ".join(f"{x[f'{k}_wal_bytes_per_row']:.0f}" for k in KINDS)
        print(f"{name:<20}" + "".join(f"{x[f'{k}_rows_per_s']:>{w},.0f}{x[f'{k}_ratio']:>7.3f}x"
                                      for k, w in zip(KINDS, (12, 13, 13))) + f"   {wal}")
    print("wal vs none: " + ", ".join(f"{k} {v['wal'][f'{k}_ratio']:.3f}x {mark[v['wal'][f'{k}_ratio'] >= GOAL_RATIO]}"
                                      for k in KINDS))

    print_throughput(args, bulk, cpu, mark)
    print_latency_and_cpu(args, cpu, lat)


def print_throughput(args: argparse.Namespace, bulk: dict, cpu: dict, mark: dict) -> None:
    print(f"\n2. Capture throughput: one capture.capture() call after one {args.bulk_rows:,}-row bulk INSERT "
          f"(median of {args.bulk_rounds}; goal >= {GOAL_KEYS_PER_S:,} keys/s)")
    for shape, b in bulk.items():
        note = ""
        if b["stalled_rounds"]:
            d = b["stalled_default_calls"][0]
            note = (f"  STALLED at the default logical_decoding_work_mem in {b['stalled_rounds']} of "
                    f"{args.bulk_rounds} rounds (a call queued {d['keys']} keys in {d['wall_s']:.2f} s); "
                    f"figures with it at {NO_STREAMING}")
        print(f"  {shape:<7} rows (~{b['row_bytes']} B): {b['keys_per_s']:>9,.0f} keys/s, "
              f"{b['cpu_us_per_key']:.2f} us CPU/key (backend + Python)  "
              f"{mark[b['keys_per_s'] >= GOAL_KEYS_PER_S]}{note}")
        print(f"{'':13}CPU/key: backend {b['backend_cpu_us_per_key']:.2f} us, Python {b['python_cpu_us_per_key']:.2f} us")
        if "baseline" in b:
            o = b["baseline"]
            print(f"    baseline {args.baseline}: {o['keys_per_s']:>9,.0f} keys/s, {o['cpu_us_per_key']:.2f} us CPU/key "
                  f"(backend {o['backend_cpu_us_per_key']:.2f}, Python {o['python_cpu_us_per_key']:.2f}); current "
                  f"{b['speedup_vs_baseline']:.2f}x faster (median of per-round wall ratios)")
    for k in KINDS if cpu else ():
        c = cpu[k]
        stalled = f", STALLED in {c['stalled_rounds']} rounds (then at {NO_STREAMING})" if c["stalled_rounds"] else ""
        print(f"  after the {k:<10} writes of part 1: {c['capture_keys_per_s']:>9,.0f} keys/s{stalled}")


def print_latency_and_cpu(args: argparse.Namespace, cpu: dict, lat: dict) -> None:
    loop = lat["capture_loop"]
    print(f"\n3. Commit-to-queued latency, {loop['n']} single-row autocommitted INSERTs ~{args.gap * 1e3:.0f} ms "
          "apart, a thread calling capture.capture() in a loop on its own connection: from the writer's "
          "commit returning to the return of the capture call that queued the key (an upper bound: "
          "that call advances the slot and runs one empty round after its inbox commit)")
    print(f"  p50 {loop['p50_ms']:.1f} ms, p99 {loop['p99_ms']:.1f} ms, max {loop['max_ms']:.1f} ms; "
          f"a capture call took {loop['capture_call_ms_p50']:.1f} ms (median of {loop['capture_calls']})")
    print(f"  end to end with a Worker (poll {args.poll:g} s; pgvz worker's default is 5 s), commit to the row "
          "in the destination, polled every 2 ms:")
    for label, _, _ in WORKER_CASES:
        x = lat[label]
        print(f"    {label:<24} p50 {x['p50_ms']:7.1f} ms, p99 {x['p99_ms']:7.1f} ms  ({x['n']} writes, "
              f"{x['wakeups']} NOTIFY wake-ups, {x['wal_wakeups']} from the slot)")

    print("\n4. CPU per written row, microseconds (medians over rounds): writer = the writing backend; "
          "WAL capture = the capture call's backend (decoding) + its Python thread")
    print(f"{'workload':<12}{'none':>8}{'floor':>8}{'triggers':>10}{'wal writer':>12}{'+ capture be':>14}"
          f"{'+ python':>10}{'= wal total':>13}")
    for k in KINDS:
        c = cpu[k]
        print(f"{k:<12}{c['none_writer']:>8.2f}{c['empty_stmt_trigger_writer']:>8.2f}{c['triggers_writer']:>10.2f}"
              f"{c['wal_writer']:>12.2f}{c['wal_capture_backend']:>14.2f}{c['wal_capture_python']:>10.2f}"
              f"{c['wal_total']:>13.2f}" + ("  (capture at " + NO_STREAMING + ")" if c["stalled_rounds"] else ""))


if __name__ == "__main__":
    main()
