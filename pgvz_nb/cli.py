"""The ``pgvz`` command."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import PgvzError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgvz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="load the sample blog table, sync it and search it")
    demo.add_argument("query", nargs="?", default="Blogs about cats")
    demo.add_argument("-k", type=int, default=5, help="how many results (default 5)")
    worker = sub.add_parser("worker", help="drain vectorizers, all or the named ones, until stopped")
    worker.add_argument("names", nargs="*", help="vectorizer names (default: every pipeline vectorizer)")
    worker.add_argument("--once", action="store_true", help="drain the queues, then exit (1 if any row failed)")
    worker.add_argument("--poll", type=float, default=5.0,
                        help="seconds between rounds when no NOTIFY arrives (retries need a poll)")
    worker.add_argument("--dsn", default=None, help="PostgreSQL DSN (default: PGVZ_DSN, DATABASE_URL, embedded)")
    worker.add_argument("--give-up-after", type=float, default=-1,
                        help="seconds without a database before exiting (default: never; 60 with --once)")
    sync_p = sub.add_parser("sync", help="drain vectorizers now, with progress bars, then exit")
    sync_p.add_argument("names", nargs="*", help="vectorizer names (default: every pipeline vectorizer)")
    sync_p.add_argument("--once", action="store_true", help="(the default) drain once and exit")
    sync_p.add_argument("--dsn", default=None)
    status_p = sub.add_parser("status", help="vectorizers and their queues: one line each, or "
                                             "the named ones in full")
    status_p.add_argument("names", nargs="*", help="vectorizer names (default: a table of every one)")
    status_p.add_argument("--dsn", default=None)
    reconcile_p = sub.add_parser("reconcile", help="queue what no trigger saw (writes with triggers off, "
                                                  "dropped partitions); then sync")
    reconcile_p.add_argument("names", nargs="*", help="vectorizer names (default: every pipeline vectorizer)")
    reconcile_p.add_argument("--dsn", default=None)
    export_p = sub.add_parser("export", help="write a standalone sync script for a vectorizer")
    export_p.add_argument("name")
    export_p.add_argument("path")
    export_p.add_argument("--dsn", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.query, k=args.k)
        elif args.command == "worker":
            import logging

            from .db import Database, resolve_dsn
            from .worker import Worker

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
            # no probe here: a server that is down (restarting) is waited for by the worker
            if args.once and args.give_up_after < 0:
                args.give_up_after = 60.0
            w = Worker(Database(*resolve_dsn(args.dsn)), args.names, poll=args.poll,
                       give_up_after=args.give_up_after if args.give_up_after >= 0 else None)
            w.install_signal_handlers()
            logging.getLogger("pgvz_nb.worker").info(
                "pgvz worker started (pid %d): %s", os.getpid(), ", ".join(args.names) or "all vectorizers")
            stats = w.run(once=args.once)
            print(f"pgvz worker: {stats.processed} rows processed, {stats.failed} failed, "
                  f"{stats.reconnects} reconnects, {stats.errors} vectorizer errors, "
                  f"{stats.interruptions} interrupted")
            return 1 if args.once and (stats.failed or stats.errors or stats.interruptions) else 0
        elif args.command == "sync":
            from .db import connect
            from .queue import Queue
            from .vectorizer import Vectorizer

            db = connect(args.dsn)
            names = args.names or _pipeline_names(db, Queue)
            failed = 0
            for name in names:
                report = Vectorizer.open(db, name).sync(progress=sys.stderr.isatty())
                print(f"{name}: {report}")
                failed += report.failed
            return 1 if failed else 0
        elif args.command == "status":
            from .db import connect
            from .queue import Queue
            from .vectorizer import Vectorizer

            db = connect(args.dsn)
            if args.names:
                for i, name in enumerate(args.names):
                    v = Vectorizer.open(db, name)
                    print(("\n" if i else "") + status_block(v, v.status()))
            else:
                print(status_table(db, Queue))
        elif args.command == "reconcile":
            from .db import connect
            from .queue import Queue
            from .vectorizer import Vectorizer

            db = connect(args.dsn)
            for name in args.names or _pipeline_names(db, Queue):
                found = Vectorizer.open(db, name).reconcile()
                print(f"{name}: queued {found['gone']} keys whose rows are gone, "
                      f"{found['missing']} rows never embedded")
        elif args.command == "export":
            from .db import connect
            from .vectorizer import Vectorizer

            path = Vectorizer.open(connect(args.dsn), args.name).export_script(args.path)
            print(f"wrote {path}; run it with PGVZ_DSN=... python {path} --once")
    except PgvzError as exc:
        print(f"pgvz: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def status_block(v, st) -> str:
    """One vectorizer's status as a few labelled lines (``pgvz status NAME``)."""
    from .frames import cell_text

    row = st.iloc[0]
    pct = f"{row['coverage_pct']:.1f}".rstrip("0").rstrip(".")
    lines = [
        f"{row['name']}  {row['source']} -> {row['destination']}  "
        f"({v.config.embedder.get('identity')}, {v.config.embedder.get('dimensions')} dimensions)",
        f"  pending          {row['pending']} ({row['claimable']} claimable now, {row['retrying']} retrying)",
        f"  failed           {row['failed']}",
        f"  embedded         {row['embedded_rows']} of {row['source_rows']} rows ({pct} %), "
        f"{row['embedded_chunks']} chunks",
        f"  oldest pending   {cell_text(row['oldest_pending_age'], 'oldest_pending_age')}",
        f"  next retry       {cell_text(row['next_retry'])}",
        f"  last success     {cell_text(row['last_success'])}",
    ]
    if row["uncovered_partitions"]:
        lines.append(f"  not queued       writes aimed directly at {row['uncovered_partitions']}; "
                     "run create() again as their owner")
    return "\n".join(lines)


def status_table(db, queue_cls) -> str:
    """Every vectorizer, one line each (``pgvz status``): the pipeline ones with their
    queue and coverage, then the callback ones by name."""
    import pandas as pd

    from .frames import readable
    from .vectorizer import Vectorizer

    with db.connect() as conn:
        every = queue_cls.list_all(conn)
    names = [q.name for q in every if q.config.get("kind") == "pipeline"]
    callbacks = [q.name for q in every if q.config.get("kind") != "pipeline"]
    out = []
    if names:
        frames = [Vectorizer.open(db, n).status() for n in names]
        st = pd.concat(frames, ignore_index=True)
        cols = ["name", "pending", "failed", "embedded_rows", "source_rows", "coverage_pct",
                "oldest_pending_age", "last_success"]
        out.append(readable(st, cols).to_string(index=False))
        for f in frames:
            if f["uncovered_partitions"][0]:
                out.append(f"{f['name'][0]}: writes aimed directly at {f['uncovered_partitions'][0]} "
                           "are not queued; run create() again as their owner")
    else:
        out.append("no pipeline vectorizers")
    if callbacks:
        out.append("callback vectorizers (Vectorize): " + ", ".join(callbacks))
    return "\n".join(out)


def _pipeline_names(db, queue_cls) -> list[str]:
    with db.connect() as conn:
        return [v.name for v in queue_cls.list_all(conn) if v.config.get("kind") == "pipeline"]


if __name__ == "__main__":
    sys.exit(main())
