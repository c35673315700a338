"""A LangChain ``VectorStore`` over a collection-layout table (``id, metadata, contents,
embedding``): the read side of a Vectorizer's destination, and a stand-in for
LangChain's ``TimescaleVector`` that runs on plain pgvector.

The constructor takes ``TimescaleVector``'s arguments. ``time_partition_interval`` is
accepted and ignored: there is no TimescaleDB here, and the ids still carry time (v1
uuids) so ``start_date`` / ``end_date`` filters work.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from .db import Database, as_database
from .errors import PgvzError
from .search import Collection, search_rows

__all__ = ["PgvzVectorStore"]


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
        if pre_delete_collection:
            from . import sql as q

            with self._db.connect() as conn:
                conn.execute(q.drop_table((schema_name, collection_name)))

    def __repr__(self) -> str:
        return f"PgvzVectorStore({self._schema}.{self.collection_name}, {self._db!r})"

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    def _table(self, conn, dims: int | None) -> Collection | None:
        """The collection, created on first write (the size comes from the first vectors)."""
        if self._collection is None:
            from . import sql as q

            found = conn.execute(q.collection_dimensions(), [self._schema, self.collection_name]).fetchone()
            if found is not None:
                self._collection = Collection(self.collection_name, self._schema, found[0])
            elif dims is not None:
                col = Collection(self.collection_name, self._schema, dims)
                col.create(conn)
                self._collection = col
        return self._collection

    # --- writes --------------------------------------------------------------------------

    def add_embeddings(self, texts: Sequence[str], embeddings: Sequence[Sequence[float]],
                       metadatas: Sequence[dict] | None = None, ids: Sequence[str] | None = None,
                       **kwargs: Any) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        ids = [str(i) for i in ids] if ids is not None else [str(uuid.uuid4()) for _ in texts]
        with self._db.connect(vector=True) as conn:
            col = self._table(conn, len(embeddings[0]))
            col.add(conn, texts, metadatas, embeddings, ids)
        return ids

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        return self.add_embeddings(texts, self._embedding.embed_documents(texts), metadatas, ids)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if not ids:
            return None
        from . import sql as q

        with self._db.connect(vector=True) as conn:
            if self._table(conn, None) is None:
                return True
            conn.execute(q.collection_delete_ids((self._schema, self.collection_name)),
                         [[uuid.UUID(str(i)) for i in ids]])
        return True

    def delete_by_metadata(self, filter: dict | list[dict], **kwargs: Any) -> bool:
        """Delete rows whose metadata contains ``filter`` (a dict, or a list: any of them)."""
        filters = filter if isinstance(filter, list) else [filter]
        with self._db.connect(vector=True) as conn:
            col = self._table(conn, None)
            if col is not None:
                col.delete_by_metadata(conn, filters)
        return True

    # --- reads ---------------------------------------------------------------------------

    def _search(self, embedding: Sequence[float], k: int, filter: dict | None, query: str | None,
                start_date: datetime | None, end_date: datetime | None) -> list[tuple[Document, float]]:
        with self._db.connect(vector=True) as conn:
            col = self._table(conn, None)
            if col is None:
                return []
            rows = search_rows(conn, col.rel, embedding, query, k, filter=filter,
                               start=start_date, end=end_date)
        return [
            (Document(page_content=contents, metadata={"id": str(id_), **(metadata or {})}), float(distance))
            for distance, contents, metadata, id_ in rows
        ]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                     start_date: datetime | None = None, end_date: datetime | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """(Document, cosine distance) pairs, nearest first."""
        return self._search(self._embedding.embed_query(query), k, filter, query, start_date, end_date)

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None,
                          **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [d for d, _ in self._search(embedding, k, filter, None, kwargs.get("start_date"),
                                           kwargs.get("end_date"))]

    def _select_relevance_score_fn(self):
        if self.override_relevance_score_fn is not None:
            return self.override_relevance_score_fn
        return self._cosine_relevance_score_fn

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None,
                   ids: list[str] | None = None, collection_name: str = "langchain_store",
                   service_url: str | None = None, **kwargs: Any) -> PgvzVectorStore:
        store = cls(collection_name=collection_name, service_url=service_url, embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids)
        return store
