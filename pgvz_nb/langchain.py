"""A LangChain ``VectorStore`` over a collection-layout table (``id, metadata, contents,
embedding``): a store of its own, or the read side of a Vectorizer's destination
(``from_vectorizer``), and a stand-in for LangChain's ``TimescaleVector`` that runs on plain
pgvector. It passes LangChain's standard tests (``tests/test_langchain_standard.py``).

The constructor takes ``TimescaleVector``'s arguments. ``time_partition_interval`` is
accepted and ignored: there is no TimescaleDB here, and the ids still carry time (v1
uuids) so ``start_date`` / ``end_date`` filters work.

Ids. The table's ``id`` is a uuid (the collection layout); LangChain allows any string. A
string that is a uuid is stored as that uuid; any other ("1", "doc-7") as the uuid5 of the
string in a namespace of pgvz_nb's, the string itself kept in the row's metadata under
``_pgvz_doc_id`` (taken out again on every read). So every id comes back as it was given,
adding an id that exists replaces that row, and ``get_by_ids`` / ``delete`` find rows by the
id they were given.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from . import sql as q
from .db import Database, as_database
from .errors import PgvzError
from .search import Collection, search_rows, search_statement

__all__ = ["PgvzVectorStore", "row_id"]

#: metadata key of an id that is not a uuid's own text (see module docs)
ID_KEY = "_pgvz_doc_id"
_NAMESPACE = uuid.UUID("6a7d1c9e-3b62-5f0e-9d3a-70677a5f6e62")


def row_id(doc_id: Any) -> tuple[uuid.UUID, str | None]:
    """(the table's uuid for a LangChain id, the id string to keep beside it, or None when the
    uuid's text is the id)."""
    text = str(doc_id)
    try:
        found = uuid.UUID(text)
    except ValueError:
        return uuid.uuid5(_NAMESPACE, text), text
    return found, (None if str(found) == text else text)


def _document(id_: uuid.UUID, contents: str, metadata: dict | None) -> Document:
    meta = dict(metadata or {})
    given = meta.pop(ID_KEY, None)
    return Document(id=given or str(id_), page_content=contents, metadata=meta)


def _relevance(distance: float) -> float:
    """LangChain's relevance: 1 for the same direction, down to 0; cosine distance runs to 2
    (opposite vectors), clamped so scores stay in [0, 1] as LangChain documents them."""
    return max(0.0, 1.0 - distance)


class _Moved(Exception):
    """The store's vectorizer was cut over to another model under a search (see _check_model)."""


def _vector_of_old_model(store: PgvzVectorStore) -> PgvzError:
    return PgvzError(
        f"vectorizer {store._vectorizer.name!r} was cut over to another model "
        f"({store._vectorizer.config.model_id()}) since the query vector was made; embed the "
        "query again with store.embeddings (the store follows the vectorizer)")


class PgvzVectorStore(VectorStore):
    """LangChain VectorStore on a pgvector table in the Timescale Vector layout."""

    def __init__(
        self,
        collection_name: str = "langchain_store",
        service_url: str | Database | None = None,
        embedding: Embeddings | None = None,
        num_dimensions: int | None = None,
        distance_strategy: Any = None,
        pre_delete_collection: bool = False,
        logger: Any = None,
        relevance_score_fn: Any = None,
        time_partition_interval: timedelta | None = None,
        schema_name: str = "public",
        *,
        read_only: str | None = None,
        **kwargs: Any,
    ) -> None:
        if embedding is None:
            from .embedders import default_embedder

            embedding = default_embedder()
        if distance_strategy not in (None, "cosine", "COSINE") and "COSINE" not in str(distance_strategy).upper():
            raise PgvzError(f"distance_strategy {distance_strategy!r}: only cosine distance is supported")
        self._db = as_database(service_url)
        self._embedding = embedding
        self.collection_name = collection_name
        self.service_url = self._db.dsn
        self._dims = num_dimensions
        self._collection: Collection | None = None
        self.override_relevance_score_fn = relevance_score_fn
        self.time_partition_interval = time_partition_interval
        self._schema = schema_name
        self._read_only = read_only  # why writes are refused (a vectorizer's destination)
        if pre_delete_collection:
            self.delete_collection()

    def __repr__(self) -> str:
        return f"PgvzVectorStore({self._schema}.{self.collection_name}, {self._db!r})"

    @classmethod
    def from_vectorizer(cls, vectorizer: Any, **kwargs: Any) -> PgvzVectorStore:
        """A read-only store over a Vectorizer's destination, searching with its embedder.
        Writes are refused: the vectorizer owns the table, and its next sync would overwrite
        them; change the source table instead."""
        schema, table = vectorizer.destination
        why = (f"{schema}.{table} is the destination of vectorizer {vectorizer.name!r}: its rows follow "
               f"{'.'.join(vectorizer.source)}, and the next sync would overwrite a write made here; "
               "change the source table (or use a store of your own)")
        store = cls(collection_name=table, schema_name=schema, service_url=vectorizer.db,
                    embedding=vectorizer.embedder, read_only=why, **kwargs)
        vectorizer._ready()
        store._vectorizer = vectorizer  # followed through a migration's cutover (see _check_model)
        return store

    _vectorizer: Any = None

    def _check_model(self, conn: Any) -> Any:
        """For a store over a vectorizer: after the search read, in its transaction, whether
        the vectorizer's name still means the model the query was embedded with (a cutover
        cannot commit while the read's lock is held); if not, the store takes on the model
        that has the name and _Moved is raised: a query given as text is embedded again."""
        v = self._vectorizer
        if v is None:
            return None
        return conn.execute(q.catalog_id_of(), [v.name])

    def _moved(self, found: Any) -> None:
        v = self._vectorizer
        if v is None or (found is not None and v._queue is not None and found[0] == v._queue.id):
            return
        v._follow()
        self._embedding = v.embedder
        self._schema, self.collection_name = v.destination
        self._collection = None
        raise _Moved()

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def rel(self) -> q.Rel:
        return (self._schema, self.collection_name)

    def _writable(self) -> None:
        if self._read_only:
            raise PgvzError(f"this store is read-only: {self._read_only}")

    def _found(self, dims: int) -> Collection:
        """The collection once known (the size comes from the table, or the first vectors)."""
        if self._collection is None:
            self._collection = Collection(self.collection_name, self._schema, dims)
        return self._collection

    def _table(self, conn, dims: int | None) -> Collection | None:
        """The collection, created on first write."""
        if self._collection is None:
            found = conn.execute(q.collection_dimensions(), list(self.rel)).fetchone()
            if found is not None:
                return self._found(found[0])
            if dims is not None:
                self._found(dims).create(conn)
        return self._collection

    async def _atable(self, conn, dims: int | None) -> Collection | None:
        if self._collection is None:
            found = await (await conn.execute(q.collection_dimensions(), list(self.rel))).fetchone()
            if found is not None:
                return self._found(found[0])
            if dims is not None:
                col = self._found(dims)
                await conn.execute(q.create_collection(col.rel, dims))
        return self._collection

    # --- writes --------------------------------------------------------------------------

    @staticmethod
    def _prepared(texts: Sequence[str], metadatas: Sequence[dict] | None,
                  ids: Sequence[str | None] | None) -> tuple[list[str], list[uuid.UUID], list[dict], list[int]]:
        """(ids as given or new, the table's uuids, metadatas with the id string kept where
        needed, the positions to write: the last of each id, as a later write replaces)."""
        n = len(texts)
        given = list(ids) if ids is not None else [None] * n
        if len(given) != n:
            raise PgvzError(f"got {n} texts and {len(given)} ids; expected one id (or None) per text")
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        out_ids, uuids, metas = [], [], []
        for doc_id, meta in zip(given, metadatas):
            if doc_id is None:
                doc_id = str(uuid.uuid4())
            rid, keep = row_id(doc_id)
            out_ids.append(str(doc_id))
            uuids.append(rid)
            metas.append({**(meta or {}), ID_KEY: keep} if keep is not None else dict(meta or {}))
        last = {u: i for i, u in enumerate(uuids)}
        return out_ids, uuids, metas, sorted(last.values())

    def add_embeddings(self, texts: Sequence[str], embeddings: Sequence[Sequence[float]],
                       metadatas: Sequence[dict] | None = None, ids: Sequence[str | None] | None = None,
                       **kwargs: Any) -> list[str]:
        """Write rows with these vectors; an id that exists is replaced (one transaction)."""
        self._writable()
        texts = list(texts)
        if not texts:
            return []
        out, uuids, metas, keep = self._prepared(texts, metadatas, ids)
        with self._db.connect(vector=True) as conn, conn.transaction():
            col = self._table(conn, len(embeddings[0]))
            assert col is not None  # made, with its size given
            conn.execute(q.collection_delete_ids(self.rel), [uuids])
            col.add(conn, [texts[i] for i in keep], [metas[i] for i in keep],
                    [embeddings[i] for i in keep], [uuids[i] for i in keep])
        return out

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        self._writable()
        texts = list(texts)
        if not texts:
            return []
        return self.add_embeddings(texts, self._embedding.embed_documents(texts), metadatas, ids)

    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None,
                         ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """``add_texts`` on psycopg's async connection."""
        self._writable()
        texts = list(texts)
        if not texts:
            return []
        embeddings = await self._embedding.aembed_documents(texts)
        out, uuids, metas, keep = self._prepared(texts, metadatas, ids)
        async with await self._db.aconnect(vector=True) as conn, conn.transaction():
            col = await self._atable(conn, len(embeddings[0]))
            assert col is not None  # made, with its size given
            await conn.execute(q.collection_delete_ids(self.rel), [uuids])
            await col.aadd(conn, [texts[i] for i in keep], [metas[i] for i in keep],
                           [embeddings[i] for i in keep], [uuids[i] for i in keep])
        return out

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the rows of these ids (ids that are not there are no error)."""
        self._writable()
        if not ids:
            return None
        with self._db.connect(vector=True) as conn:
            if self._table(conn, None) is not None:
                conn.execute(q.collection_delete_ids(self.rel), [[row_id(i)[0] for i in ids]])
                conn.commit()
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        self._writable()
        if not ids:
            return None
        async with await self._db.aconnect(vector=True) as conn:
            if await self._atable(conn, None) is not None:
                await conn.execute(q.collection_delete_ids(self.rel), [[row_id(i)[0] for i in ids]])
                await conn.commit()
        return True

    def delete_by_metadata(self, filter: dict | list[dict], **kwargs: Any) -> bool:
        """Delete rows whose metadata contains ``filter`` (a dict, or a list: any of them)."""
        self._writable()
        filters = filter if isinstance(filter, list) else [filter]
        with self._db.connect(vector=True) as conn:
            col = self._table(conn, None)
            if col is not None:
                col.delete_by_metadata(conn, filters)
                conn.commit()
        return True

    def delete_collection(self) -> None:
        """Drop the table (and with it every row)."""
        self._writable()
        with self._db.connect() as conn:
            conn.execute(q.drop_table(self.rel))
            conn.commit()
        self._collection = None

    # --- reads ---------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents of these ids that exist (in no particular order)."""
        if not ids:
            return []
        with self._db.connect(vector=True) as conn:
            if self._table(conn, None) is None:
                return []
            rows = conn.execute(q.collection_get_ids(self.rel), [[row_id(i)[0] for i in ids]]).fetchall()
        return [_document(*r) for r in rows]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        if not ids:
            return []
        async with await self._db.aconnect(vector=True) as conn:
            if await self._atable(conn, None) is None:
                return []
            cur = await conn.execute(q.collection_get_ids(self.rel), [[row_id(i)[0] for i in ids]])
            rows = await cur.fetchall()
        return [_document(*r) for r in rows]

    def _search(self, embedding: Sequence[float], k: int, filter: dict | None, query: str | None,
                start_date: datetime | None = None, end_date: datetime | None = None,
                vectors: bool = False) -> list[tuple]:
        with self._db.connect(vector=True) as conn:
            if self._table(conn, None) is None:
                return []
            try:
                rows = search_rows(conn, self.rel, embedding, query, k, filter=filter,
                                   start=start_date, end=end_date, vectors=vectors)
            except psycopg.Error:
                if self._vectorizer is None:
                    raise
                conn.rollback()  # another vector size behind the name, say: a cutover came first
                self._moved(self._check_model(conn).fetchone())
                raise
            self._moved(None if self._vectorizer is None else self._check_model(conn).fetchone())
            return rows

    async def _asearch(self, embedding: Sequence[float], k: int, filter: dict | None, query: str | None,
                       start_date: datetime | None = None, end_date: datetime | None = None,
                       vectors: bool = False) -> list[tuple]:
        stmt, params, filtered = search_statement(self.rel, embedding, query, k, filter=filter,
                                                  start=start_date, end=end_date, vectors=vectors)
        async with await self._db.aconnect(vector=True) as conn:
            if await self._atable(conn, None) is None:
                return []
            try:
                async with conn.transaction():
                    if filtered:  # see search.prepare_search; here for this transaction only
                        try:
                            async with conn.transaction():
                                await conn.execute(q.enable_iterative_scans(), {"local": True})
                        except psycopg.Error:  # pgvector < 0.8: no such setting
                            pass
                    # with the vectors, not prepared: see search.search_rows
                    rows = await (await conn.execute(stmt, params, prepare=False if vectors else None)).fetchall()
                    found = None  # in the read's transaction: see _check_model
                    if self._vectorizer is not None:
                        found = await (await conn.execute(q.catalog_id_of(), [self._vectorizer.name])).fetchone()
            except psycopg.Error:
                if self._vectorizer is None:
                    raise
                async with conn.transaction():  # another vector size behind the name: a cutover first?
                    found = await (await conn.execute(q.catalog_id_of(), [self._vectorizer.name])).fetchone()
                self._moved(found)
                raise
            self._moved(found)
            return rows

    @staticmethod
    def _scored(rows: list[tuple]) -> list[tuple[Document, float]]:
        return [(_document(id_, contents, metadata), float(distance))
                for distance, contents, metadata, id_, *_ in rows]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                     start_date: datetime | None = None, end_date: datetime | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """(Document, cosine distance) pairs, nearest first."""
        return self._again(lambda: self._scored(self._search(self._embedding.embed_query(query), k, filter, query,
                                                             start_date, end_date)))

    def _again(self, search: Any) -> Any:
        """``search()``, run again (up to twice) when the vectorizer's name moved to another
        model under it: the query is embedded again with the model that has the name now."""
        for _ in range(2):
            try:
                return search()
            except _Moved:
                continue
        try:
            return search()
        except _Moved:
            raise PgvzError("the vectorizer changed model during the search (cut over and back); "
                            "search again") from None

    async def asimilarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                            start_date: datetime | None = None, end_date: datetime | None = None,
                                            **kwargs: Any) -> list[tuple[Document, float]]:
        for _ in range(3):
            try:
                return self._scored(await self._asearch(await self._embedding.aembed_query(query), k, filter,
                                                        query, start_date, end_date))
            except _Moved:
                continue
        raise PgvzError("the vectorizer changed model during the search (cut over and back); search again")

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None,
                          **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search(self, query: str, k: int = 4, filter: dict | None = None,
                                 **kwargs: Any) -> list[Document]:
        return [d for d, _ in await self.asimilarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                    **kwargs: Any) -> list[Document]:
        try:
            return [d for d, _ in self._scored(self._search(embedding, k, filter, None, kwargs.get("start_date"),
                                                            kwargs.get("end_date")))]
        except _Moved:
            raise _vector_of_old_model(self) from None

    async def asimilarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                           **kwargs: Any) -> list[Document]:
        try:
            return [d for d, _ in self._scored(await self._asearch(embedding, k, filter, None,
                                                                   kwargs.get("start_date"), kwargs.get("end_date")))]
        except _Moved:
            raise _vector_of_old_model(self) from None

    @staticmethod
    def _mmr(query: Sequence[float], rows: list[tuple], k: int, lambda_mult: float) -> list[Document]:
        if not rows:
            return []
        vectors = [np.asarray(r[4].to_numpy() if hasattr(r[4], "to_numpy") else r[4], dtype=np.float32).tolist()
                   for r in rows]
        picked = maximal_marginal_relevance(np.asarray(query, dtype=np.float32), vectors, lambda_mult, k)
        docs = [d for d, _ in PgvzVectorStore._scored(rows)]
        return [docs[i] for i in picked]

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: dict | None = None,
                                                **kwargs: Any) -> list[Document]:
        """``k`` of the ``fetch_k`` nearest, chosen for relevance and diversity."""
        try:
            rows = self._search(embedding, max(fetch_k, k), filter, None, kwargs.get("start_date"),
                                kwargs.get("end_date"), vectors=True)
        except _Moved:
            raise _vector_of_old_model(self) from None
        return self._mmr(embedding, rows, k, lambda_mult)

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: dict | None = None, **kwargs: Any) -> list[Document]:
        def search() -> list[Document]:
            embedding = self._embedding.embed_query(query)
            rows = self._search(embedding, max(fetch_k, k), filter, None, kwargs.get("start_date"),
                                kwargs.get("end_date"), vectors=True)
            return self._mmr(embedding, rows, k, lambda_mult)

        return self._again(search)

    async def amax_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20,
                                             lambda_mult: float = 0.5, filter: dict | None = None,
                                             **kwargs: Any) -> list[Document]:
        for _ in range(3):
            embedding = await self._embedding.aembed_query(query)
            try:
                rows = await self._asearch(embedding, max(fetch_k, k), filter, None, kwargs.get("start_date"),
                                           kwargs.get("end_date"), vectors=True)
            except _Moved:
                continue
            return self._mmr(embedding, rows, k, lambda_mult)
        raise PgvzError("the vectorizer changed model during the search (cut over and back); search again")

    def _select_relevance_score_fn(self):
        return self.override_relevance_score_fn or _relevance

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None,
                   ids: list[str] | None = None, collection_name: str = "langchain_store",
                   service_url: str | Database | None = None, **kwargs: Any) -> PgvzVectorStore:
        store = cls(collection_name=collection_name, service_url=service_url, embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None,
                          ids: list[str] | None = None, collection_name: str = "langchain_store",
                          service_url: str | Database | None = None, **kwargs: Any) -> PgvzVectorStore:
        store = cls(collection_name=collection_name, service_url=service_url, embedding=embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store
