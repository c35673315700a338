"""The quickstart demo: real server, sample data, the built-in pipeline, search."""

from __future__ import annotations

from psycopg import sql

from pgvz_nb.demo import SCHEMA, run_demo
from pgvz_nb.sample import BLOG_POSTS


def count(conn, table):
    return conn.execute(sql.SQL("SELECT count(DISTINCT blog_id) FROM {}").format(
        sql.Identifier(SCHEMA, table))).fetchone()[0]


def test_demo_syncs_every_published_post_and_finds_cats(db, conn):
    lines = []
    results = run_demo("Blogs about cats", k=3, out=lines.append, progress=False)
    published = sum(1 for p in BLOG_POSTS if p[3] is not None)
    assert count(conn, "blog_embedding") == published
    assert list(results["rank"]) == [1, 2, 3]
    assert results["distance"].is_monotonic_increasing
    assert results["blog_id"][0] == 1  # the article's "some super interesting content about cats."
    assert all("cat" in c.lower() or "kitten" in c.lower() for c in results["contents"])
    assert any("all-MiniLM-L6-v2" in line for line in lines)
    # a second run starts clean: same counts, not doubled
    run_demo("Blogs about cats", k=3, out=lambda _: None, progress=False)
    assert count(conn, "blog_embedding") == published
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(SCHEMA, "blog_embedding"))).fetchone()[0] >= published
