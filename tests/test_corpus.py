"""The larger real corpus (CPython's language reference) and retrieval on it."""

from __future__ import annotations

import pytest

import pgvz_nb as pgvz
from pgvz_nb.errors import PgvzError
from pgvz_nb.sample import load_python_docs

TOPICS = ["function", "try", "for", "with", "import", "lambda", "while", "if", "return", "del"]
QUESTIONS = {
    "how do I define a function with default arguments": "function",
    "catch an exception and clean up afterwards": "try",
    "loop over the items of a list": "for",
    "what does the with statement do": "with",
    "import a module from a package": "import",
    "repeat while a condition is true": "while",
    "delete a variable": "del",
}


def test_python_docs_corpus_answers_natural_questions(db, conn, schema):
    assert load_python_docs(db, schema=schema, topics=TOPICS) == len(TOPICS)
    v = pgvz.Vectorizer(db, f"{schema}.python_docs", template="{title}\n{chunk}", chunk_column="body",
                        metadata=["topic"]).create()
    report = v.sync(progress=False)
    assert report.processed == len(TOPICS) and report.embedded > len(TOPICS)  # long topics split
    found = {q: list(v.search(q, k=5)["topic"]) for q in QUESTIONS}
    hits = sum(QUESTIONS[q] in got for q, got in found.items())
    assert hits >= len(QUESTIONS) - 1, found
    v.close()


def test_unknown_topic_is_a_clear_error(db, schema):
    with pytest.raises(PgvzError, match="no topics"):
        load_python_docs(db, schema=schema, topics=["no-such-topic"])
