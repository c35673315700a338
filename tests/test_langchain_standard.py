"""LangChain's own standard tests for vector stores (``langchain-tests``), run against
PgvzVectorStore as the README documents it, with every capability left at the suite's
defaults."""

from __future__ import annotations

import uuid

import pytest

from pgvz_nb.langchain import PgvzVectorStore

standard = pytest.importorskip("langchain_tests.integration_tests")


class TestPgvzVectorStoreStandard(standard.VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, db):
        store = PgvzVectorStore(collection_name=f"lc_{uuid.uuid4().hex[:10]}", service_url=db,
                                embedding=self.get_embeddings())
        yield store
        store.delete_collection()
