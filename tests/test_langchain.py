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
    assert doc.page_content == TEXTS[0] and doc.metadata == {"topic": "pets", "n": 0} and doc.id == ids[0]
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


def test_any_string_id_is_kept_and_replaced_and_async_works_natively(db, conn, schema):
    """LangChain ids are any strings: "1" is stored under its uuid5, given back as "1";
    adding it again replaces the row; get_by_ids and delete find it. The async methods
    run on psycopg's AsyncConnection (not LangChain's thread-pool fallbacks)."""
    import asyncio

    from langchain_core.vectorstores import VectorStore

    from pgvz_nb.embedders import HashingEmbedder
    from pgvz_nb.langchain import ID_KEY, row_id

    store = PgvzVectorStore(collection_name="ids", service_url=db, schema_name=schema, embedding=HashingEmbedder(8))
    for method in ("aadd_texts", "adelete", "aget_by_ids", "asimilarity_search_with_score",
                   "amax_marginal_relevance_search"):
        assert getattr(PgvzVectorStore, method) is not getattr(VectorStore, method)
    u = "0b9f8a5c-2f4e-4d3e-9c1a-1f2e3d4c5b6a"
    assert store.add_texts(["one", "uuid", "none"], [{"n": 1}, {"n": 2}, {"n": 3}], ids=["1", u, None])[:2] == ["1", u]
    assert store.add_texts(["one again"], [{"n": 11}], ids=["1"]) == ["1"]
    rows = conn.execute(sql.SQL("SELECT id, contents, metadata FROM {} ORDER BY contents").format(
        sql.Identifier(schema, "ids"))).fetchall()
    assert len(rows) == 3 and (row_id("1")[0], "one again", {"n": 11, ID_KEY: "1"}) in rows
    got = {d.id: (d.page_content, d.metadata) for d in store.get_by_ids(["1", u, "missing"])}
    assert got == {"1": ("one again", {"n": 11}), u: ("uuid", {"n": 2})}
    store.delete(["1", "never there"])
    assert [d.id for d in store.get_by_ids(["1", u])] == [u]

    async def go():
        await store.aadd_texts(["async text"], [{"n": 5}], ids=["a-5"])
        docs = await store.asimilarity_search("async text", k=1)
        found = await store.aget_by_ids(["a-5"])
        await store.adelete(["a-5"])
        return docs, found, await store.aget_by_ids(["a-5"])

    docs, found, after = asyncio.run(go())
    assert docs[0].id == "a-5" and found[0].metadata == {"n": 5} and after == []


def test_mmr_retrievers_relevance_scores_and_class_constructors(db, schema):
    from pgvz_nb.embedders import HashingEmbedder

    texts = ["cats sleep all day", "cats sleep all day long", "kittens nap in the sun", "trains to Paris"]
    metas = [{"topic": "pets"}, {"topic": "pets"}, {"topic": "pets"}, {"topic": "travel"}]
    store = PgvzVectorStore.from_texts(texts, HashingEmbedder(64), metadatas=metas, collection_name="mmr",
                                       service_url=db, schema_name=schema)
    near = store.similarity_search("cats sleep all day", k=2)
    assert [d.page_content for d in near] == texts[:2]
    diverse = store.max_marginal_relevance_search("cats sleep all day", k=2, fetch_k=4, lambda_mult=0.1)
    assert diverse[0].page_content == texts[0] and diverse[1].page_content != texts[1]
    scored = store.similarity_search_with_relevance_scores("cats sleep all day", k=4)
    assert all(0.0 <= s <= 1.0 for _, s in scored) and scored[0][1] > 0.99
    for search_type, kwargs in (("similarity", {"k": 1}), ("mmr", {"k": 1, "fetch_k": 4}),
                                ("similarity_score_threshold", {"score_threshold": 0.0})):
        retriever = store.as_retriever(search_type=search_type,
                                       search_kwargs={**kwargs, "filter": {"topic": "travel"}})
        assert [d.page_content for d in retriever.invoke("anything")] == ["trains to Paris"]
    docs = store.get_by_ids(store.add_texts(["extra"]))
    again = PgvzVectorStore.from_documents(docs, HashingEmbedder(64), collection_name="mmr_copy",
                                           service_url=db, schema_name=schema)
    assert [d.id for d in again.get_by_ids([docs[0].id])] == [docs[0].id]
    again.delete_collection()
    assert again.similarity_search("extra") == []


def test_a_store_over_a_vectorizers_destination_is_read_only(db, schema):
    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", template="{title}: {chunk}", chunk_column="contents").create()
    v.sync(progress=False)
    store = PgvzVectorStore.from_vectorizer(v)
    assert "cat" in store.similarity_search("Blogs about cats", k=1)[0].page_content.lower()
    for write in (lambda: store.add_texts(["x"]), lambda: store.delete(["x"]),
                  lambda: store.delete_by_metadata({"blog_id": 1}), store.delete_collection):
        with pytest.raises(PgvzError, match="read-only.*next sync would overwrite"):
            write()
    v.close()


def test_langchain_indexing_api_incremental_and_full_cleanup(db, schema):
    """langchain_core.indexing.index() with a record manager: unchanged documents are
    skipped, changed ones replaced, and deleted ones removed (incremental / full)."""
    from langchain_core.documents import Document
    from langchain_core.indexing import InMemoryRecordManager, index

    from pgvz_nb.embedders import HashingEmbedder

    store = PgvzVectorStore(collection_name="indexed", service_url=db, schema_name=schema,
                            embedding=HashingEmbedder(16))
    records = InMemoryRecordManager(namespace=f"pgvz/{schema}/indexed")
    records.create_schema()
    docs = [Document(page_content=f"doc {i}", metadata={"source": f"s{i % 2}"}) for i in range(4)]
    first = index(docs, records, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
    assert (first["num_added"], first["num_skipped"]) == (4, 0)
    again = index(docs, records, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
    assert (again["num_added"], again["num_skipped"]) == (0, 4)
    changed = [Document(page_content="doc 0 edited", metadata={"source": "s0"}), *docs[1:]]
    inc = index(changed, records, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
    assert (inc["num_added"], inc["num_deleted"]) == (1, 1)
    full = index(changed[:2], records, store, cleanup="full", source_id_key="source", key_encoder="sha256")
    assert full["num_deleted"] == 2
    assert sorted(d.page_content for d in store.similarity_search("doc", k=10)) == ["doc 0 edited", "doc 1"]
