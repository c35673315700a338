"""The quickstart, end to end: sample blog table, vectorizer, sync, search "Blogs about cats".

Until the built-in embedding pipeline lands, this demo embeds through the callback API
(``Vectorize``) with ``HashingEmbedder``, a deterministic bag-of-words stand-in that is
not a semantic model; the output says so.
"""

from __future__ import annotations

import time

import pandas as pd  # noqa: F401  (results are DataFrames)
from psycopg import sql

from .db import Database, connect
from .embedders import HashingEmbedder
from .queue import Queue
from .sample import load_blog
from .search import Collection
from .uuids import uuid_from_time
from .vectorizer import Row, Vectorize

__all__ = ["run_demo", "blog_embed_and_write"]

SCHEMA = "pgvz_demo"
TEMPLATE = "Author {author}, title: {title}, contents:{contents}"


def blog_embed_and_write(embedder, collection: Collection):
    """An ``embed_and_write`` callback for the blog table, as in the PgVectorize article:
    delete the key's old rows, then write one row per published post, in the claim's
    transaction (``vectorizer.connection``)."""

    def embed_and_write(rows: list[Row], vectorizer: Vectorize) -> None:
        conn = vectorizer.connection
        collection.delete_by_metadata(conn, [{"blog_id": r["locked_id"]} for r in rows])
        live = [r for r in rows if r["published_time"] is not None]
        if not live:
            return
        texts = [TEMPLATE.format(**r) for r in live]
        metadatas = [
            {
                "blog_id": r["id"],
                "author": r["author"],
                "category": r["category"],
                "published_time": r["published_time"].isoformat(),
            }
            for r in live
        ]
        ids = [uuid_from_time(r["published_time"]) for r in live]
        collection.add(conn, texts, metadatas, embedder.embed_documents(texts), ids)

    return embed_and_write


def _reset(db: Database) -> None:
    with db.connect() as conn:
        old = Queue.find(conn, f"{SCHEMA}.blog_embedding_work_queue")
        conn.rollback()
        if old is not None:
            old.drop(conn)
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


def run_demo(query: str = "Blogs about cats", k: int = 5, out=print) -> pd.DataFrame:
    """Run the quickstart and return the search results (also printed through ``out``)."""
    t0 = time.perf_counter()
    db = connect()
    out(f"database: {db!r}")
    _reset(db)
    n = load_blog(db, schema=SCHEMA)
    out(f"loaded {n} posts into {SCHEMA}.blog")

    embedder = HashingEmbedder()
    out(
        "embedder: HashingEmbedder, a deterministic bag-of-words stand-in "
        "(matches shared words, NOT a semantic model; the offline MiniLM model comes with "
        "the embedding pipeline)"
    )
    collection = Collection("blog_embedding", schema=SCHEMA, dimensions=embedder.dimensions)
    with db.connect(vector=True) as conn:
        collection.create(conn)

    vectorizer = Vectorize(db, "blog", schema_name=SCHEMA)
    vectorizer.register()
    callback = blog_embed_and_write(embedder, collection)
    processed = 0
    while (got := vectorizer.process(callback, batch_size=10)) > 0:
        processed += got
        out(f"  synced {processed} rows")
    with db.connect(vector=True) as conn:
        results = collection.search(conn, embedder.embed_query(query), k=k)
    vectorizer.close()
    out(f'\ntop {k} for "{query}":')
    shown = results[["rank", "distance", "author", "category", "contents"]].copy()
    shown["contents"] = shown["contents"].map(lambda s: s if len(s) <= 90 else s[:89] + "…")
    out(shown.to_string(index=False, justify="left", float_format="{:.4f}".format))
    out(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return results
