"""The notebook panels, driven through their widgets' values and handlers (no browser).

Button.click() swallows handler exceptions, so these tests assert on what the database
and the widgets hold afterwards."""

from __future__ import annotations

from datetime import date

import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.sample import BLOG_POSTS, load_blog

W = pytest.importorskip("ipywidgets")
from pgvz_nb.widgets import SearchPanel, SetupPanel, SyncPanel, highlight  # noqa: E402

TEMPLATE = "Author {author}, title: {title}, contents:{chunk}"


def test_setup_panel_lists_tables_previews_and_creates(db, conn, schema):
    load_blog(db, schema=schema)
    panel = SetupPanel(db)
    assert f"{schema}.blog" in panel.table.options
    panel.table.value = f"{schema}.blog"
    assert panel.chunk_column.value == "contents"  # guessed from the column names
    panel.template.value = TEMPLATE
    panel.metadata.value = ("author", "category")
    panel.time_column.value = "published_time"
    panel.where.value = "published_time IS NOT NULL"
    panel.embedder.value = next(k for k in panel.embedder.options if k.startswith("hashing"))
    previews = panel.preview()
    assert len(previews) == 3 and previews[0].startswith("Author Matvey Arye, title: First Post, contents:")
    assert "<pre" in panel.preview_out.value and "Matvey Arye" in panel.preview_out.value
    code = panel.code_text()
    assert f"pgvz.Vectorizer(\n    db, '{schema}.blog'" in code and "time_column='published_time'" in code
    assert code == panel.code.value
    compile(code, "<panel code>", "exec")
    panel.create_button.click()
    assert "created" in panel.result.value
    found = conn.execute("SELECT config->'pipeline'->>'template' FROM pgvz.vectorizers WHERE source_schema = %s",
                         [schema]).fetchone()
    assert found == (TEMPLATE,)


def test_setup_panel_masks_the_password_and_reports_bad_templates(db, schema):
    load_blog(db, schema=schema)
    panel = SetupPanel(db)
    assert isinstance(panel.dsn, W.Password)
    panel.table.value = f"{schema}.blog"
    panel.template.value = "{writer}: {chunk}"
    assert "writer" in panel.preview_out.value and "not a column" in panel.preview_out.value
    panel.embedder.value = next(k for k in panel.embedder.options if k.startswith("hashing"))
    panel.create_button.click()  # the error shows in the panel, nothing is created
    assert "NotFound" in panel.result.value and "writer" in panel.result.value


def test_sync_panel_batch_all_errors_and_retry(db, conn, schema):
    from pgvz_nb.embedders import HashingEmbedder

    class Picky(HashingEmbedder):
        def embed_documents(self, texts):
            if any("Sourdough" in t for t in texts):
                raise RuntimeError("no bread <b>please</b>")
            return super().embed_documents(texts)

    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", template=TEMPLATE, chunk_column="contents", embedder=Picky(),
                        batch_size=5, max_attempts=1, retry_backoff=0).create()
    panel = SyncPanel(v, refresh=0)
    assert "23" in panel.status_html.value  # pending
    panel.batch_button.click()
    assert v.status()["pending"][0] == len(BLOG_POSTS) - 5
    panel.sync_all(wait=True)
    assert panel.progress.value == len(BLOG_POSTS) - 5 and "rows/s" in panel.rate.value
    assert v.status()["pending"][0] == 0
    assert "no bread &lt;b&gt;please&lt;/b&gt;" in panel.errors_html.value, "escaped, not rendered"
    embedded = conn.execute(sql.SQL("SELECT count(DISTINCT blog_id) FROM {}").format(
        sql.Identifier(schema, "blog_embedding"))).fetchone()[0]
    assert embedded == len(BLOG_POSTS) - 1
    panel.retry_button.click()
    assert list(v.queue()["id"]) == [next(i + 1 for i, p in enumerate(BLOG_POSTS) if "Sourdough" in p[0])]
    panel.close()


def test_search_panel_filters_highlights_compares_and_maps(db, schema):
    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", template=TEMPLATE, chunk_column="contents",
                        metadata=["author", "category", "published_time"], time_column="published_time",
                        where="published_time IS NOT NULL").create()
    v.sync(progress=False)
    panel = SearchPanel(v, filters=["author", "category", "blog_id"])
    assert ("Pets", "Pets") in panel.filters["category"].options
    panel.query.value = "Blogs about cats"
    panel.filters["blog_id"].value = 2  # a number stays a number in the filter
    assert list(panel.search()[0]["blog_id"]) == [2]
    panel.filters["blog_id"].value = None
    panel.k.value = 3
    panel.button.click()
    (frame,) = panel.last
    assert frame["blog_id"][0] == 1
    assert "<mark>cats</mark>" in panel.results.value and "source row" in panel.results.value
    assert panel.code.value == "v.search('Blogs about cats', k=3)"
    panel.filters["category"].value = "Travel"
    panel.compare.value = "sourdough bread"
    panel.start.value = date(2023, 1, 1)
    panel.show_map.value = True
    frames = panel.search()
    assert len(frames) == 2 and set(frames[0]["category"]) == {"Travel"}
    assert all(t >= "2023" for t in frames[1]["published_time"])
    assert "start=datetime.datetime(2023, 1, 1" in panel.code.value and panel.code.value.count("v.search(") == 2
    assert panel.map.value[:8] == b"\x89PNG\r\n\x1a\n" and len(panel.map.value) > 5000
    v.close()


def test_highlight_escapes_before_marking():
    out = highlight("<script>cats</script> & Cats", "cats script")
    assert "<script>" not in out and "&lt;<mark>script</mark>&gt;" in out
    assert out.count("<mark>") == 4


def is_utc(series) -> bool:
    """A tz-aware datetime column (pandas picks ns or us resolution by version)."""
    return str(series.dtype).startswith("datetime64[") and str(series.dtype).endswith(", UTC]")


def test_frames_have_proper_dtypes_and_last_success(db, conn, schema):
    from pgvz_nb.embedders import HashingEmbedder

    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=HashingEmbedder()).create()
    st = v.status()
    assert str(st["oldest_pending_age"].dtype) == "timedelta64[ns]" and st["oldest_pending_age"][0].total_seconds() >= 0
    assert is_utc(st["last_success"]) and st["last_success"].isna()[0]
    pending = v.queue()
    assert is_utc(pending["queued_at"]) and str(pending["attempts"].dtype) == "Int64"
    v.sync(progress=False)
    st = v.status()
    assert st["last_success"].notna()[0] and st["pending"][0] == 0
    empty = v.errors()
    assert empty.empty and is_utc(empty["failed_at"])
    listing = pgvz.vectorizers(db)
    assert str(listing["created_at"].dtype).startswith("datetime64")
    v.close()
