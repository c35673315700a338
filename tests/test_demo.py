"""The quickstart demo: real server, sample data, sync through the callback API, search."""

from __future__ import annotations

from psycopg import sql

from pgvz_nb.demo import SCHEMA, run_demo
from pgvz_nb.sample import BLOG_POSTS


def test_demo_syncs_every_published_post_and_finds_cats(db, conn):
    lines = []
    results = run_demo("Blogs about cats", k=3, out=lines.append)
    published = sum(1 for p in BLOG_POSTS if p[3] is not None)
    count = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, "blog_embedding"))
    ).fetchone()[0]
    assert count == published
    queue_left = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, "blog_embedding_work_queue"))
    ).fetchone()[0]
    assert queue_left == 0
    assert list(results["rank"]) == [1, 2, 3]
    assert results["distance"].is_monotonic_increasing
    assert all("cat" in c.lower() for c in results["contents"])
    assert any("NOT a semantic model" in line for line in lines), "the stand-in must be labelled"
    # a second run starts clean: same counts, not doubled
    run_demo("Blogs about cats", k=3, out=lambda _: None)
    assert conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, "blog_embedding"))
    ).fetchone()[0] == published


def test_demo_reflects_an_edit_after_sync(db, conn):
    run_demo(out=lambda _: None)
    from pgvz_nb.demo import blog_embed_and_write
    from pgvz_nb.embedders import HashingEmbedder
    from pgvz_nb.search import Collection
    from pgvz_nb.vectorizer import Vectorize

    conn.execute(
        sql.SQL("UPDATE {} SET contents = 'A post about giraffes and their long necks.' "
                "WHERE title = 'First Post'").format(sql.Identifier(SCHEMA, "blog"))
    )
    emb = HashingEmbedder()
    col = Collection("blog_embedding", schema=SCHEMA)
    v = Vectorize(db, "blog", schema_name=SCHEMA)
    assert v.process(blog_embed_and_write(emb, col)) == 1
    with db.connect(vector=True) as c:
        top = col.search(c, emb.embed_query("giraffes necks"), k=1)
    assert "giraffes" in top["contents"][0]
    v.close()
