"""OpenAI embeddings through langchain-openai, against a loopback OpenAI-compatible server."""

from __future__ import annotations

import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.sample import load_blog

from .openai_server import FakeOpenAI

langchain_openai = pytest.importorskip("langchain_openai")


def test_vectorizer_with_openai_embeddings_honours_base_url(db, conn, schema, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    load_blog(db, schema=schema)
    with FakeOpenAI() as server:
        emb = langchain_openai.OpenAIEmbeddings(model="text-embedding-3-small", base_url=server.base_url,
                                                check_embedding_ctx_length=False)
        v = pgvz.Vectorizer(db, f"{schema}.blog", template="{title}: {chunk}", chunk_column="contents",
                            metadata=["category"], embedder=emb).create()
        report = v.sync(progress=False)
        assert report.failed == 0 and report.embedded > 0
        assert server.requests and all(r["path"] == "/v1/embeddings" for r in server.requests)
        assert {r["auth"] for r in server.requests} == {"Bearer sk-test-key"}
        assert {r["body"]["model"] for r in server.requests} == {"text-embedding-3-small"}
        hits = v.search("Blogs about cats", k=2)
        assert "cat" in hits["contents"][0].lower()
        # another process would rebuild the same client from the catalog (the key from the env)
        w = pgvz.Vectorizer.open(db, v.name)
        assert type(w.embedder).__name__ == "OpenAIEmbeddings"
        assert w.embedder.openai_api_base == server.base_url and w.embedder.model == "text-embedding-3-small"
        conn.execute(sql.SQL("UPDATE {} SET title = title || '!' WHERE id = 1").format(sql.Identifier(schema, "blog")))
        seen = len(server.requests)
        assert w.sync(progress=False).processed == 1
        assert len(server.requests) > seen
        config = conn.execute("SELECT config::text FROM pgvz.vectorizers WHERE name = %s", [v.name]).fetchone()[0]
        assert "sk-test-key" not in config, "the API key must never be stored"
        v.close(), w.close()


def test_a_migration_to_an_openai_model_is_priced_before_any_call(db, schema, monkeypatch):
    """estimate() says rows, chunks, tokens and, for a model with a known price, the cost,
    without calling the model; then the real client builds the shadow."""
    from pgvz_nb.embedders import HashingEmbedder

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", template="{title}: {chunk}", chunk_column="contents",
                        embedder=HashingEmbedder(32)).create()
    v.sync(progress=False)
    with FakeOpenAI() as server:
        emb = langchain_openai.OpenAIEmbeddings(model="text-embedding-3-small", base_url=server.base_url,
                                                check_embedding_ctx_length=False)
        m = v.migrate(embedder=emb)
        calls = len(server.requests)  # the size probe, when the client does not say its size
        est = m.estimate()
        assert len(server.requests) == calls
        tokens = int(est["tokens_approx"][0])
        assert est["rows"][0] > 0 and tokens > 0
        assert est["cost_usd"][0] == round(tokens / 1e6 * 0.02, 4)
        m.sync(progress=False)
        assert len(server.requests) > calls and m.status()["pending"][1] == 0
        m.cutover()
        assert "cat" in v.search("Blogs about cats", k=1)["contents"][0].lower()
        m.finish()
