"""PgvzVectorStore: LangChain's VectorStore interface on the collection layout."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.errors import PgvzError
from pgvz_nb.langchain import PgvzVectorStore
from pgvz_nb.sample import load_blog

TEXTS = ["Cats sleep most of the afternoon.", "Sourdough needs a lively starter.",
         "Night trains link Vienna and Paris.", "Autovacuum reclaims dead tuples."]


def test_store_add_search_filter_delete_and_retriever(db, conn, schema):
    t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    store = PgvzVectorStore(collection_name="notes", service_url=db.dsn, schema_name=schema,
                            time_partition_interval=timedelta(days=7))
    ids = [str(pgvz.uuid_from_time(t + timedelta(days=i))) for i in range(len(TEXTS))]
    metas = [{"topic": topic, "n": i} for i, topic in enumerate(["pets", "food", "travel", "db"])]
    assert store.add_texts(TEXTS, metas, ids) == ids
    notes = sql.Identifier(schema, "notes")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(notes)).fetchone()[0] == 4
    (doc, dist), *_ = store.similarity_search_with_score("where do cats nap?", k=2)
    assert doc.page_content == TEXTS[0] and doc.metadata["topic"] == "pets" and doc.metadata["id"] == ids[0]
    only_food = store.similarity_search("anything", k=4, filter={"topic": "food"})
    assert [d.page_content for d in only_food] == [TEXTS[1]]
    late = store.similarity_search_with_score("anything", k=4, start_date=t + timedelta(days=2))
    assert {d.metadata["topic"] for d, _ in late} == {"travel", "db"}
    docs = store.as_retriever(search_kwargs={"k": 1}).invoke("trains across Europe")
    assert docs[0].page_content == TEXTS[2]
    store.delete_by_metadata([{"topic": "pets"}, {"topic": "db"}])
    store.delete([ids[1]])
    left = conn.execute(sql.SQL("SELECT contents FROM {}").format(notes)).fetchall()
    assert left == [(TEXTS[2],)]


def test_store_reads_a_vectorizer_destination(db, schema):
    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", template="{title}: {chunk}", chunk_column="contents",
                        metadata=["category"]).create()
    v.sync(progress=False)
    store = PgvzVectorStore(collection_name="blog_embedding", service_url=db.dsn, schema_name=schema)
    (doc, _), = store.similarity_search_with_score("Blogs about cats", k=1)
    assert "cat" in doc.page_content.lower() and doc.metadata["blog_id"] >= 1
    v.close()


def test_store_refuses_a_nul_character_with_a_clear_error(db, conn, schema):
    """PostgreSQL text cannot hold U+0000: a PgvzError naming the text, not a COPY failure."""
    store = PgvzVectorStore(collection_name="nul", service_url=db.dsn, schema_name=schema)
    with pytest.raises(PgvzError, match=r"text 1 .*NUL"):
        store.add_texts(["fine", "bad\x00text"])
    table = sql.Identifier(schema, "nul")
    if conn.execute("SELECT to_regclass(%s)", [table.as_string(conn)]).fetchone()[0]:
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0] == 0
