"""The destination table (Timescale Vector's collection layout) and search over it."""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from . import sql as q
from .errors import DimensionMismatch, PgvzError
from .frames import search_frame as search_frame_from_rows

__all__ = ["Collection", "search_frame", "search_rows", "search_statement"]


def search_rows(
    conn: psycopg.Connection,
    rel: q.Rel,
    query_embedding: Sequence[float],
    query_text: str | None,
    k: int = 5,
    *,
    filter: dict[str, Any] | None = None,
    start: Any = None,
    end: Any = None,
    hybrid: bool = False,
    vectors: bool = False,
) -> list[tuple]:
    """k nearest rows of a collection-layout table: (distance, contents, metadata, id) tuples,
    plus the fused ``score`` when ``hybrid``, or the stored vector with ``vectors``."""
    stmt, params, filtered = search_statement(rel, query_embedding, query_text, k, filter=filter,
                                              start=start, end=end, hybrid=hybrid, vectors=vectors)
    if filtered:
        prepare_search(conn)
    # with the stored vectors, not prepared: after a migration's cutover to another size the
    # name is a table of another vector(n), and a prepared statement would fail for good
    return conn.execute(stmt, params, prepare=False if vectors else None).fetchall()


def search_statement(rel: q.Rel, query_embedding: Sequence[float], query_text: str | None, k: int, *,
                     filter: dict[str, Any] | None = None, start: Any = None, end: Any = None,
                     hybrid: bool = False, vectors: bool = False) -> tuple[Any, dict[str, Any], bool]:
    """(statement, parameters, whether it filters) of ``search_rows``, checked; shared by
    the sync and async callers."""
    if k < 1:
        raise PgvzError(f"k must be at least 1, got {k}")
    if filter is not None and not isinstance(filter, dict):
        raise PgvzError(f"filter must be a dict of metadata values, got {type(filter).__name__}")
    if hybrid and not query_text:
        raise PgvzError("hybrid=True ranks by the query's words too: it needs the query text")
    params = {
        "q": np.asarray(query_embedding, dtype=np.float32), "k": int(k),
        "filter": Jsonb(filter) if filter else None, "start": start, "end": end,
        "text": query_text, "pool": max(int(k) * 4, 40),
    }
    timed = start is not None or end is not None
    stmt = q.search(rel, hybrid=hybrid, time_range=timed, vectors=vectors)
    return stmt, params, bool(filter) or timed


_iterative: weakref.WeakSet = weakref.WeakSet()  # sessions already set up


def prepare_search(conn: psycopg.Connection) -> None:
    """Let a filtered HNSW scan go on until it has k rows that pass the filter (pgvector
    >= 0.8, ``hnsw.iterative_scan = relaxed_order``; the query sorts its rows again).
    Without it the index hands over ``ef_search`` (40) candidates and the filter keeps
    what it keeps: a filter matching 1 row in 50 returned 1 hit for k=10 where 400 rows
    matched. Set once for the session when no transaction is open, else for the caller's
    transaction only (a rollback would undo a session-wide setting made inside it). An
    older pgvector refuses the setting: searches then work as before."""
    if conn in _iterative:
        return
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    try:
        with conn.transaction():
            conn.execute(q.enable_iterative_scans(), {"local": not idle})
    except psycopg.Error:  # pgvector < 0.8: no such setting
        pass
    if idle:
        _iterative.add(conn)


def search_frame(conn: psycopg.Connection, rel: q.Rel, query_embedding: Sequence[float],
                 query_text: str | None, k: int = 5, *, template: str | None = None,
                 key: str | None = None, label: str | None = None,
                 source_values: Callable[[list[tuple]], list[dict[str, Any] | None]] | None = None,
                 **options: Any) -> pd.DataFrame:
    """``search_rows`` as a DataFrame: rank, distance, (score,) title, text, metadata keys,
    id, contents (``frames.search_frame``: ``template``, ``key``, ``label`` and the hits'
    ``source_values`` let it read the chunk's text and a title back)."""
    rows = search_rows(conn, rel, query_embedding, query_text, k, **options)
    values = source_values(rows) if source_values is not None and template and rows else None
    frame = search_frame_from_rows([r[:4] for r in rows], template=template, key=key, label=label,
                                   values=values)
    if options.get("hybrid"):
        shown = frame.shown()
        frame.insert(2, "score", [float(r[4]) for r in rows])
        frame.show_columns([*shown[:2], "score", *shown[2:]], frame._pgvz_hint)
    return frame


COPY_TYPES = ["uuid", "jsonb", "text", "vector"]


class Collection:
    """A table of ``id uuid, metadata jsonb, contents text, embedding vector(n)``.

    Methods take an open psycopg 3 connection with pgvector's adapter registered
    (``Database.connect(vector=True)``), so callers choose the transaction: inside a
    ``Vectorize`` callback, ``vectorizer.connection`` makes the writes atomic with the dequeue.
    """

    def __init__(self, table: str, schema: str = "public", dimensions: int = 384):
        self.rel: q.Rel = (schema, table)
        self.dimensions = dimensions

    def __repr__(self) -> str:
        return f"Collection({'.'.join(self.rel)!r}, dimensions={self.dimensions})"

    def create(self, conn: psycopg.Connection) -> None:
        """Create the table if missing; DimensionMismatch if it exists with another size."""
        found = conn.execute(q.collection_dimensions(), list(self.rel)).fetchone()
        if found is not None:
            if found[0] != self.dimensions:
                raise DimensionMismatch(
                    f"{'.'.join(self.rel)} holds vector({found[0]}), expected vector({self.dimensions}); "
                    "use an embedder of the same size, or another destination table"
                )
            return
        conn.execute(q.create_collection(self.rel, self.dimensions))

    def delete_by_metadata(self, conn: psycopg.Connection, filters: Sequence[dict[str, Any]]) -> int:
        """Delete rows whose metadata contains any of ``filters``; returns rows deleted."""
        if not filters:
            return 0
        return conn.execute(
            q.collection_delete_by_metadata(self.rel), [[Jsonb(f) for f in filters]]
        ).rowcount

    def add(
        self,
        conn: psycopg.Connection,
        contents: Sequence[str],
        metadatas: Sequence[dict[str, Any]],
        embeddings: Sequence[Sequence[float]] | np.ndarray,
        ids: Sequence[uuid.UUID | str] | None = None,
    ) -> int:
        """Write rows with binary COPY; returns how many."""
        rows = self.rows(contents, metadatas, embeddings, ids)
        with conn.cursor().copy(q.collection_copy(self.rel)) as copy:
            copy.set_types(COPY_TYPES)
            for row in rows:
                copy.write_row(row)
        return len(rows)

    async def aadd(self, conn: psycopg.AsyncConnection, contents: Sequence[str],
                   metadatas: Sequence[dict[str, Any]], embeddings: Sequence[Sequence[float]] | np.ndarray,
                   ids: Sequence[uuid.UUID | str] | None = None) -> int:
        """``add`` on an async connection."""
        rows = self.rows(contents, metadatas, embeddings, ids)
        async with conn.cursor().copy(q.collection_copy(self.rel)) as copy:
            copy.set_types(COPY_TYPES)
            for row in rows:
                await copy.write_row(row)
        return len(rows)

    def rows(self, contents: Sequence[str], metadatas: Sequence[dict[str, Any]],
             embeddings: Sequence[Sequence[float]] | np.ndarray,
             ids: Sequence[uuid.UUID | str] | None = None) -> list[tuple]:
        """The rows ``add`` writes, checked: lengths, NUL characters, vector sizes."""
        if ids is None:
            ids = [uuid.uuid4() for _ in contents]
        if not (len(ids) == len(contents) == len(metadatas) == len(embeddings)):
            raise PgvzError(
                f"add() got {len(contents)} contents, {len(metadatas)} metadatas, "
                f"{len(embeddings)} embeddings and {len(ids)} ids; expected equal lengths"
            )
        rows = []
        for i, (id_, text, meta, emb) in enumerate(zip(ids, contents, metadatas, embeddings)):
            if "\x00" in text:
                raise PgvzError(
                    f"text {i} contains a NUL character (U+0000), which PostgreSQL text cannot "
                    "store; remove it first, e.g. text.replace('\\x00', '')"
                )
            vec = np.asarray(emb, dtype=np.float32)
            if vec.shape != (self.dimensions,):
                raise DimensionMismatch(
                    f"an embedding has shape {vec.shape}, expected ({self.dimensions},) for "
                    f"{'.'.join(self.rel)}; use an embedder of that size or another destination"
                )
            rows.append((uuid.UUID(str(id_)), Jsonb(meta), text, vec))
        return rows

    def search(
        self,
        conn: psycopg.Connection,
        query_embedding: Sequence[float],
        k: int = 5,
        filter: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """k nearest rows by cosine distance as a DataFrame (rank, distance, text, metadata..., id,
        contents; ``text`` is ``contents`` here: a collection has no template)."""
        return search_frame(conn, self.rel, query_embedding, None, k, filter=filter)
