"""Readable results: search frames show the chunk's own text and a title, status() is compact,
times read as ages, and ``pgvz status NAME`` prints only that vectorizer."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb import cli
from pgvz_nb.embedders import HashingEmbedder
from pgvz_nb.frames import Frame, chunk_text, interactive, interactive_data, time_text
from pgvz_nb.sample import BLOG_POSTS, load_blog

TEMPLATE = "Author {author}, title: {title}, contents:{chunk}"


def blog_vectorizer(db, schema, **kw):
    load_blog(db, schema=schema)
    opts = dict(template=TEMPLATE, chunk_column="contents", metadata=["author", "category"],
                embedder=HashingEmbedder(64))
    return pgvz.Vectorizer(db, f"{schema}.blog", **{**opts, **kw}).create()


def test_chunk_text_strips_the_template_around_the_chunk():
    contents = "Author Matvey Arye, title: First Post, contents:some super interesting content about cats."
    text, fields = chunk_text(contents, TEMPLATE)
    assert text == "some super interesting content about cats."
    assert fields == {"author": "Matvey Arye", "title": "First Post"}
    # a chunk holding the template's own words, newlines, and a field after the chunk
    text, fields = chunk_text("T: a, title: b\nc (by X)", "T: {chunk} (by {author})")
    assert text == "a, title: b\nc" and fields == {"author": "X"}
    # no {chunk}, or contents the template does not match: the contents themselves
    assert chunk_text("{title} alone", "{title}")[0] == "{title} alone"
    assert chunk_text("something else", TEMPLATE) == ("something else", {})


def test_search_frame_shows_chunk_text_and_title(db, conn, schema):
    v = blog_vectorizer(db, schema)
    v.sync(progress=False)
    conn.execute(sql.SQL("UPDATE {} SET contents = %s WHERE id = 1").format(sql.Identifier(schema, "blog")),
                 ["A post about giraffes, their long necks and what they eat."])
    v.sync(progress=False)
    hits = v.search("A post about giraffes, their long necks and what they eat.", k=3)
    assert list(hits.columns[:4]) == ["rank", "distance", "title", "text"]
    assert hits["text"][0] == "A post about giraffes, their long necks and what they eat."
    assert hits["title"][0] == BLOG_POSTS[0][0] and hits["blog_id"][0] == 1
    assert not any(t.startswith("Author") for t in hits["text"])
    # the embedded text stays in the frame, out of the display
    assert hits["contents"][0].startswith("Author Matvey Arye, title: First Post, contents:A post about giraffes")
    page = hits._repr_html_()
    assert "giraffes, their long necks and what they eat." in page  # whole, not cut at 50 characters
    assert "<th>contents</th>" not in page and "<th>id</th>" not in page and "<th>text</th>" in page
    assert "Author Matvey" not in repr(hits)
    # hybrid ranking adds its score to the display
    hybrid = v.search("giraffes", k=2, hybrid=True)
    assert list(hybrid.columns[:5]) == ["rank", "distance", "score", "title", "text"]
    assert "<th>score</th>" in hybrid._repr_html_()
    # choosing columns shows those columns
    assert "<th>contents</th>" in hits[["rank", "contents"]]._repr_html_()
    v.close()


def test_search_text_is_exact_when_a_field_holds_the_template_text(db, conn, schema):
    load_blog(db, schema=schema)
    title = next(p[0] for p in BLOG_POSTS if ": " in p[0])  # "Bread, salt and olive oil: a Catalan breakfast"
    v = pgvz.Vectorizer(db, f"{schema}.blog", template="{title}: {chunk}", chunk_column="contents",
                        embedder=HashingEmbedder(64)).create()
    v.sync(progress=False)
    body = next(p[4] for p in BLOG_POSTS if p[0] == title)
    hits = v.search(f"{title}: {body}", k=1)
    assert hits["title"][0] == title and hits["text"][0] == body
    # a row changed since it was embedded: the template's fixed text is matched instead
    conn.execute(sql.SQL("UPDATE {} SET title = 'Renamed' WHERE title = %s").format(sql.Identifier(schema, "blog")),
                 [title])
    stale = v.search(f"{title}: {body}", k=1)
    assert stale["contents"][0] == f"{title}: {body}" and stale["text"][0].endswith(body)
    v.close()


def test_search_title_from_metadata_or_key(db, schema):
    load_blog(db, schema=schema)
    with_meta = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", metadata=["title", "author"],
                                embedder=HashingEmbedder(64)).create()
    with_meta.sync(progress=False)
    hits = with_meta.search("cats", k=3)
    assert list(hits.columns[:4]) == ["rank", "distance", "title", "text"]
    assert list(hits.columns).count("title") == 1
    assert set(hits["title"]) <= {p[0] for p in BLOG_POSTS}
    with_meta.drop()
    bare = pgvz.Vectorizer(db, f"{schema}.blog", template="{author}: {chunk}", chunk_column="contents",
                           embedder=HashingEmbedder(64)).create()
    bare.sync(progress=False)
    hits = bare.search("cats", k=2)
    # the source's title column, neither metadata nor in the template, read for the hits
    titles = {i + 1: p[0] for i, p in enumerate(BLOG_POSTS)}
    assert list(hits["title"]) == [titles[i] for i in hits["blog_id"]]
    assert not hits["text"][0].startswith(hits["contents"][0].split(":")[0] + ":")
    bare.close()


def test_status_is_compact_with_readable_ages(db, schema):
    v = blog_vectorizer(db, schema)
    time.sleep(1.2)  # the backfill's rows are over a second old
    st = v.status()
    page = st._repr_html_()
    shown = ["name", "pending", "failed", "embedded_rows", "coverage_pct", "oldest_pending_age", "last_success"]
    assert isinstance(st, Frame) and st.shown() == shown
    assert "<th>destination</th>" not in page and "<th>claimable</th>" not in page
    assert " s ago" in page  # the oldest pending row's age
    assert "NaT" not in page and "0 days" not in page and "—" in page  # no success yet
    # every column stays in the frame, with real dtypes
    assert st["claimable"][0] == len(BLOG_POSTS) and st["source_rows"][0] == len(BLOG_POSTS)
    assert pd.api.types.is_timedelta64_dtype(st["oldest_pending_age"])
    assert "<th>claimable</th>" in v.status(full=True)._repr_html_()
    v.sync(progress=False)
    page = v.status()._repr_html_()
    assert "UTC (just now)" in page or " s ago)" in page  # last success
    assert re.search(r"\d\d:\d\d:\d\d UTC", page) and not re.search(r"\d\d:\d\d:\d\d\.\d", page)
    assert "NaT" not in page and "0 days" not in page
    for view in (v.queue(), v.errors(), pgvz.vectorizers(db)):
        html = view._repr_html_()
        assert "NaT" not in html and "+00:00" not in html and "0 days" not in html
    v.close()


def test_queue_and_errors_read_well(db, schema):
    class Picky(HashingEmbedder):
        def embed_documents(self, texts):
            if any("sourdough" in t.lower() for t in texts):
                raise ValueError("this model does not do bread")
            return super().embed_documents(texts)

    v = blog_vectorizer(db, schema, embedder=Picky(64), max_attempts=1, retry_backoff=0.01)
    page = v.queue()._repr_html_()
    assert "(just now)" in page or " s ago)" in page
    assert "<td>—</td>" in page  # retry_after and last_error, not NaT / None
    v.sync(progress=False)
    errors = v.errors()
    assert len(errors) == 1 and "does not do bread" in errors._repr_html_()
    assert pd.api.types.is_datetime64_any_dtype(errors["failed_at"])
    assert "NaT" not in errors._repr_html_()
    v.close()


def test_time_text_has_no_microseconds():
    now = datetime(2026, 12, 1, 14, 0, 0, tzinfo=timezone.utc)
    assert time_text(now - timedelta(seconds=6.44088), now) == "2026-12-01 13:59:53 UTC (6 s ago)"
    assert time_text(now + timedelta(minutes=3), now) == "2026-12-01 14:03:00 UTC (in 3 min)"
    assert time_text(now - timedelta(days=400), now) == "2025-10-27 14:00:00 UTC"


def test_interactive_tables_keep_numbers_sortable():
    f = Frame({"n": pd.array([3, None], dtype="Int64"), "t": [pd.Timestamp("2026-01-01 10:00:00.123456", tz="UTC"), pd.NaT]})
    data = interactive_data(f)
    assert data["n"].tolist()[0] == 3 and data["t"].tolist()[1] == "—" and ".123456" not in data["t"][0]
    pytest.importorskip("itables")
    assert "<table" in interactive(f).data


def test_cli_status_of_one_vectorizer(db, schema, capsys):
    one = blog_vectorizer(db, schema, name=f"one_{schema}")
    load_blog(db, table="other", schema=schema)
    other = pgvz.Vectorizer(db, f"{schema}.other", chunk_column="contents", embedder=HashingEmbedder(64),
                            name=f"two_{schema}").create()
    assert cli.main(["status", one.name, "--dsn", db.dsn]) == 0
    out = capsys.readouterr().out
    assert one.name in out and other.name not in out
    assert f"0 of {len(BLOG_POSTS)} rows" in out and f"pending          {len(BLOG_POSTS)}" in out
    assert "NaT" not in out and "0 days" not in out and max(len(line) for line in out.splitlines()) < 120
    assert cli.main(["status", "--dsn", db.dsn]) == 0
    out = capsys.readouterr().out
    assert one.name in out and other.name in out and "NaT" not in out
    one.close()
    other.close()


def test_search_frame_names_and_collections():
    from pgvz_nb.frames import search_frame

    rows = [(0.1, "T: hello", {"text": "a metadata text", "doc_id": 7}, "id-1")]
    hits = search_frame(rows, template="T: {chunk}", key="doc_id", label="doc")
    # a metadata key called text keeps its name; the chunk's text is then "chunk"
    assert list(hits.columns) == ["rank", "distance", "title", "chunk", "text", "doc_id", "id", "contents"]
    assert hits["chunk"][0] == "hello" and hits["text"][0] == "a metadata text" and hits["title"][0] == "doc 7"
    # no template (a Collection, the callback API): the text is the contents, no title made up
    plain = search_frame([(0.2, "just text", {"blog_id": 1}, "id-2")])
    assert list(plain.columns) == ["rank", "distance", "text", "blog_id", "id", "contents"]
    assert plain["text"][0] == "just text"


def test_frames_reshaped_still_display():
    f = Frame({"a": [1, 2], "b": [pd.Timestamp("2026-01-01 10:00:00.5", tz="UTC"), pd.NaT]}).show_columns(["a"])
    assert "<th>b</th>" not in f._repr_html_() and "1 more column(s)" in f._repr_html_()
    assert "<th>b</th>" in f[["b"]]._repr_html_() and "<th>b</th>" in f[["b", "a"]]._repr_html_()
    transposed = f.T._repr_html_()  # integer column labels
    assert "2026-01-01 10:00:00 UTC" in transposed and ".500" not in transposed
    assert "<table" in pd.concat([f, f], axis=1)._repr_html_()  # duplicate columns: pandas' own
    assert "<table" in Frame()._repr_html_() or Frame()._repr_html_() is None


def test_set_embedder_swaps_the_model_but_refuses_another(db, conn, schema):
    from pgvz_nb.errors import ConfigConflict, DimensionMismatch

    class Other:  # another model of the same size
        dimensions = 64

        def embed_documents(self, texts):
            return [[1.0] * 64 for _ in texts]

        def embed_query(self, text):
            return [1.0] * 64

    v = blog_vectorizer(db, schema, embedder=HashingEmbedder(64), max_attempts=1)
    with pytest.raises(DimensionMismatch):
        v.set_embedder(HashingEmbedder(32))
    with pytest.raises(ConfigConflict):
        v.set_embedder(Other())
    assert v.set_embedder(HashingEmbedder(64)) is v
    v.sync(progress=False)
    opened = pgvz.Vectorizer.open(db, v.name)
    fixed = HashingEmbedder(64)
    opened.set_embedder(fixed)
    conn.execute(sql.SQL("UPDATE {} SET contents = 'new words' WHERE id = 1").format(sql.Identifier(schema, "blog")))
    opened.sync(progress=False)
    assert fixed.texts_embedded == 1  # the swapped-in model did the work
    v.close()
    opened.close()


def test_sync_progress_bar_is_not_green_when_rows_failed(db, schema, monkeypatch):
    """Tutorial 03 showed a full green bar beside "1 failed": the bar now turns orange."""
    from pgvz_nb import vectorizer as vmod
    from pgvz_nb.embedders import HashingEmbedder
    from pgvz_nb.sample import load_blog

    class Poisoned(HashingEmbedder):
        def embed_documents(self, texts):
            if any("giraffes" in t for t in texts):
                raise ValueError("this model cannot take giraffes")
            return super().embed_documents(texts)

    bars = []
    real = vmod._progress
    monkeypatch.setattr(vmod, "_progress", lambda total, name: bars.append(real(total, name)) or bars[-1])
    load_blog(db, schema=schema)
    with db.connect() as c:
        c.execute(sql.SQL("UPDATE {} SET contents = contents || ' giraffes' WHERE id = 2").format(
            sql.Identifier(schema, "blog")))
        c.commit()
    v = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=Poisoned(64)).create()
    report = v.sync(progress=True)
    assert report.failed == 1 and bars and bars[0].colour == vmod._FAILED_COLOUR
    clean = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=HashingEmbedder(64),
                            name="clean", destination=f"{schema}.blog_clean").create()
    assert clean.sync(progress=True).failed == 0 and bars[-1].colour != vmod._FAILED_COLOUR
    v.close()
    clean.close()
