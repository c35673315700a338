"""The quickstart, end to end: sample blog table, vectorizer, sync, search "Blogs about cats"."""

from __future__ import annotations

import time
from typing import Any

from . import sql as q
from .db import connect
from .queue import Queue
from .sample import load_blog
from .vectorizer import Vectorizer

__all__ = ["SCHEMA", "TEMPLATE", "run_demo"]

SCHEMA = "pgvz_demo"
TEMPLATE = "Author {author}, title: {title}, contents:{chunk}"


def _reset(db) -> None:
    """Drop what an earlier run left, so the demo always starts from the same state."""
    with db.connect() as conn:
        for old in Queue.list_all(conn):
            if old.source[0] == SCHEMA:
                conn.rollback()
                old.drop(conn)
        conn.execute(q.drop_schema(SCHEMA))


def run_demo(query: str = "Blogs about cats", k: int = 5, out=print, progress: bool = True,
             embedder: Any = None):
    """Run the quickstart and return the search results (also printed through ``out``)."""
    t0 = time.perf_counter()
    db = connect()
    out(f"database: {db!r}")
    _reset(db)
    n = load_blog(db, schema=SCHEMA)
    out(f"loaded {n} posts into {SCHEMA}.blog")
    vectorizer = Vectorizer(
        db, f"{SCHEMA}.blog", template=TEMPLATE, chunk_column="contents",
        metadata=["author", "category", "published_time"], time_column="published_time",
        where="published_time IS NOT NULL", embedder=embedder,
    ).create()
    out(f"embedder: {vectorizer.config.embedder['identity']} "
        f"({vectorizer.config.embedder['dimensions']} dimensions, offline)")
    report = vectorizer.sync(progress=progress)
    out(f"sync: {report}")
    results = vectorizer.search(query, k=k)
    vectorizer.close()
    out(f'\ntop {k} for "{query}":')
    shown = results[["rank", "distance", "author", "category", "contents"]].copy()
    shown["contents"] = shown["contents"].map(lambda s: s if len(s) <= 90 else s[:89] + "…")
    out(shown.to_string(index=False, justify="left", float_format="{:.4f}".format))
    out(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return results
