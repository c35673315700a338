"""The PgVectorize article's example runs with only its import lines changed."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgvz_nb.sample import BLOG_POSTS, load_blog

ARTICLE = Path(__file__).with_name("article_example.py")


@pytest.fixture
def article_db(db, conn):
    """A database of its own: the article uses public.blog and public.blog_embedding."""
    name = f"pgvz_article_{os.getpid()}"
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(db.dsn, dbname=name)
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_article_example_finds_the_cats_post_first(article_db):
    import pgvz_nb as pgvz

    # the other sample posts go in first, so that "first" means something
    load_blog(pgvz.Database(article_db))
    with psycopg.connect(article_db, autocommit=True) as c:
        c.execute("DELETE FROM blog WHERE title = 'First Post'")
    out = runpy.run_path(str(ARTICLE), init_globals={"service_url": article_db})
    res = out["res"]
    assert len(res) == 4  # similarity_search_with_score's default k
    doc, distance = res[0]
    assert doc.page_content == ("Author Matvey Arye, title: First Post, contents:some super "
                                "interesting content about cats.")
    assert doc.metadata["author"] == "Matvey Arye" and doc.metadata["category"] == "AI"
    assert doc.metadata["published_time"] == "2021-01-01T00:00:00+00:00"
    assert doc.metadata["id"].startswith("4a784000-4bc4-11eb-")  # uuid_from_time(2021-01-01)
    assert 0 <= distance < res[1][1]
    with psycopg.connect(article_db) as c:
        published = sum(1 for p in BLOG_POSTS if p[3] is not None)
        assert c.execute("SELECT count(DISTINCT metadata->>'blog_id') FROM blog_embedding").fetchone()[0] == published
        assert c.execute("SELECT count(*) FROM blog_embedding_work_queue").fetchone()[0] == 0
