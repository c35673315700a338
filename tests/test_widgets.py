"""The notebook panels, driven through their widgets' values and handlers (no browser).

Button.click() swallows handler exceptions, so these tests assert on what the database
and the widgets hold afterwards."""

from __future__ import annotations

import html
import re
import time
from datetime import date

import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.embedders import HashingEmbedder
from pgvz_nb.sample import BLOG_POSTS, load_blog

W = pytest.importorskip("ipywidgets")
from pgvz_nb.widgets import MigrationPanel, SearchPanel, SetupPanel, SyncPanel, highlight  # noqa: E402

TEMPLATE = "Author {author}, title: {title}, contents:{chunk}"


def hashing_label(panel) -> str:
    return next(k for k in panel.embedder.options if k.startswith("hashing"))


def test_setup_panel_lists_tables_previews_and_creates(db, conn, schema):
    load_blog(db, schema=schema)
    panel = SetupPanel(db)
    assert (f"{schema}.blog", f"{schema}.blog") in panel.table.options  # listed right away
    assert panel.table.label == "(choose a table)" and panel.create_button.disabled
    panel.table.value = f"{schema}.blog"
    assert panel.chunk_column.value == "contents"  # guessed among the text columns
    assert not panel.create_button.disabled and panel.create_hint.value == ""  # template: {chunk}
    assert "{title}" in panel.template.placeholder and "Matvey" not in panel.template.placeholder
    panel.template.value = TEMPLATE
    panel.metadata.value = ("author", "category")
    panel.time_column.value = "published_time"
    panel.where.value = "published_time IS NOT NULL"
    panel.embedder.value = hashing_label(panel)
    previews = panel.preview()
    assert len(previews) == 3 and previews[0].startswith("Author Matvey Arye, title: First Post, contents:")
    assert panel.preview_out.value.count("class='pgvz-chunk'") >= 3
    assert "<b>id=1</b> · chunk 1 of 1" in panel.preview_out.value, "each chunk labelled by row key"
    code = panel.code_text()
    assert f"pgvz.Vectorizer(\n    db, '{schema}.blog'" in code and "time_column='published_time'" in code
    assert code == panel.code.value
    compile(code, "<panel code>", "exec")
    panel.create_button.click()
    assert "created" in panel.result.value
    found = conn.execute("SELECT config->'pipeline'->>'template' FROM pgvz.vectorizers WHERE source_schema = %s",
                         [schema]).fetchone()
    assert found == (TEMPLATE,)
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "created" in bundle["text/html"]


def test_setup_panel_layout_labels_dsn_and_multiselect_hint(db, schema):
    panel = SetupPanel(db)
    for w in (panel.chunk_column, panel.time_column, panel.table, panel.metadata):
        assert w.style.description_width == "initial", "labels such as 'Chunk column' are not cut"
    assert panel.dsn.layout.display == "none"  # embedded: no DSN box
    panel.source.value = "DSN"
    assert panel.dsn.layout.display is None
    panel.connect_button.click()  # no DSN typed: said in the panel
    assert "type a DSN" in panel.connection.value
    panel.source.value = "embedded"
    assert panel.dsn.layout.display == "none"
    assert "Ctrl-click" in panel.metadata_hint.value


def test_setup_panel_create_without_a_table_shows_the_error(db, conn, schema):
    load_blog(db, schema=schema)
    panel = SetupPanel(db)
    assert panel.create_button.disabled and panel.create_button.tooltip == "choose a table first"
    assert "choose a table first" in panel.create_hint.value  # visible, not only as a tooltip
    panel.create_button.click()  # clicked anyway
    assert "choose a table first" in panel.result.value and "PgvzError" in panel.result.value
    assert conn.execute("SELECT count(*) FROM pgvz.vectorizers WHERE source_schema = %s",
                        [schema]).fetchone() == (0,)


def test_setup_panel_code_is_a_comment_until_it_can_run_then_runs(db, conn, schema, monkeypatch):
    load_blog(db, schema=schema)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, n int)").format(sql.Identifier(schema, "counts")))
    panel = SetupPanel(db)
    for step in ("no table", "no text column"):
        code = panel.code.value
        assert code == panel.code_text() and code.startswith("# ") and "\n" not in code, step
        assert "Vectorizer(" not in code and "None" not in code, f"{step}: nothing that looks runnable"
        compile(code, "<panel code>", "exec")
        panel.table.value = f"{schema}.counts"
    assert "write a template" in panel.code.value
    assert "choose a table first" not in panel.code.value
    panel.table.value = f"{schema}.blog"
    panel.embedder.value = hashing_label(panel)
    code = panel.code.value
    assert f"'{schema}.blog'" in code and "chunk_column='contents'" in code
    # what the box says is what Create would do: run it, against this test's database
    monkeypatch.setenv("PGVZ_DSN", db.dsn)
    scope: dict = {}
    exec(compile(code, "<panel code>", "exec"), scope)
    scope["v"].close()
    assert conn.execute("SELECT count(*) FROM pgvz.vectorizers WHERE source_schema = %s AND source_table = 'blog'",
                        [schema]).fetchone() == (1,)
    embedded = conn.execute(sql.SQL("SELECT count(DISTINCT blog_id) FROM {}").format(
        sql.Identifier(schema, "blog_embedding"))).fetchone()[0]
    assert embedded == len(BLOG_POSTS), "the code's v.sync() embedded every row"


def test_setup_panel_names_a_given_database_and_returns_to_it(db, schema):
    load_blog(db, schema=schema)
    given = pgvz.connect(db.dsn)  # as PGVZ_DSN would: not the embedded server, whatever it runs on
    panel = SetupPanel(given)
    assert panel.source.options[0] == ("this database", "embedded") and panel.db is given
    panel.source.value = "DSN"
    panel.dsn.value = db.dsn
    panel.connect_button.click()
    assert panel.db is not given and panel.db.dsn == db.dsn
    panel.source.value = "embedded"
    panel.connect_button.click()
    assert panel.db is given, "back to the database it was given, not the DSN typed"
    assert (f"{schema}.blog", f"{schema}.blog") in panel.table.options
    assert SetupPanel().source.options[0] == ("embedded", "embedded")


def test_setup_panel_never_offers_embedding_destinations(db, schema):
    load_blog(db, schema=schema)
    pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=HashingEmbedder(64)).create()
    tables = [value for _, value in SetupPanel(db).table.options]
    assert f"{schema}.blog" in tables and f"{schema}.blog_embedding" not in tables


def test_setup_panel_table_without_text_does_not_embed_timestamps(db, conn, schema):
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, written_at timestamptz, n int)").format(
        sql.Identifier(schema, "events")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, now(), 3)").format(sql.Identifier(schema, "events")))
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, headline text, body text)").format(
        sql.Identifier(schema, "news")))
    panel = SetupPanel(db)
    panel.table.value = f"{schema}.events"
    assert panel.template.value == "" and panel.chunk_column.value is None
    assert panel.chunk_column.options == (("(none)", None),), "only text columns can be chunked"
    assert "no text column" in panel.template_hint.value
    assert panel.create_button.disabled
    panel.template.value = "event {n} at {written_at}"  # the user says what to embed
    assert not panel.create_button.disabled and "event 3 at" in panel.preview_out.value
    panel.table.value = f"{schema}.news"
    assert panel.chunk_column.value == "body" and panel.template.value == ""
    assert panel.template.placeholder == "headline: {headline}, contents: {chunk}"


def test_setup_panel_preview_separates_the_chunks_of_long_rows(db, conn, schema):
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
        sql.Identifier(schema, "long")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (7, %s)").format(sql.Identifier(schema, "long")),
                 ["word " * 500])
    panel = SetupPanel(db)
    panel.table.value = f"{schema}.long"
    labels = [(key, j, n) for key, j, n, _ in panel.preview_chunks()]
    assert labels[0] == ("id=7", 1, labels[0][2]) and labels[0][2] >= 3 and len(labels) == 3
    assert f"chunk 2 of {labels[0][2]}" in panel.preview_out.value


def test_sync_panel_before_create_is_explained_or_waits(db, schema):
    load_blog(db, schema=schema)
    setup = SetupPanel(db)
    with pytest.raises(pgvz.PgvzError, match=r"SyncPanel\(setup\)"):
        SyncPanel(setup.vectorizer)
    panel = SyncPanel(setup, refresh=0)
    assert panel.sync_button.disabled and "waiting for Create" in panel.message.value
    setup.table.value = f"{schema}.blog"
    setup.embedder.value = hashing_label(setup)
    setup.create_button.click()
    assert panel.v is setup.vectorizer and not panel.sync_button.disabled
    assert "23" in panel.status_html.value
    panel.close()


def test_sync_panel_batch_all_errors_and_retry(db, conn, schema):
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
    assert re.search(r"<td>(\d+ s ago|just now)</td>", panel.status_html.value), "an age, as status() shows it"
    panel.batch_button.click()
    assert v.status()["pending"][0] == len(BLOG_POSTS) - 5
    panel.sync_all(wait=True)
    assert panel.progress.max == len(BLOG_POSTS) - 5 and "rows/s" in panel.rate.value
    assert v.status()["pending"][0] == 0
    # the Sourdough row failed in the first batch: the bar is not green
    assert panel.progress.bar_style == "warning" and "1 failed" in panel.message.value
    assert "NaT" not in panel.status_html.value and "—" in panel.status_html.value  # no pending age
    assert "no bread &lt;b&gt;please&lt;/b&gt;" in panel.errors_html.value, "escaped, not rendered"
    assert re.search(r"\d\d:\d\d:\d\d UTC \(", panel.errors_html.value), "to the second, with its age"
    embedded = conn.execute(sql.SQL("SELECT count(DISTINCT blog_id) FROM {}").format(
        sql.Identifier(schema, "blog_embedding"))).fetchone()[0]
    assert embedded == len(BLOG_POSTS) - 1
    panel.retry_button.click()
    assert list(v.queue()["id"]) == [next(i + 1 for i, p in enumerate(BLOG_POSTS) if "Sourdough" in p[0])]
    panel.sync_all(wait=True)  # it fails again, during this sync: not counted as done
    assert (panel.progress.value, panel.progress.max) == (0, 1) and panel.progress.bar_style == "warning"
    assert "1 failed" in panel.message.value
    panel.close()


class Slow(HashingEmbedder):
    """A model that takes ``delay`` seconds a text."""

    def __init__(self, delay: float):
        super().__init__(64)
        self.delay = delay
        self.done = 0  # texts embedded so far

    def embed_documents(self, texts):
        time.sleep(self.delay * len(texts))
        out = super().embed_documents(texts)
        self.done += len(texts)
        return out


def test_sync_panel_bar_moves_while_one_large_batch_is_embedded(db, schema):
    load_blog(db, schema=schema)
    total = len(BLOG_POSTS)
    # the first claim takes batch_size (64) rows: all 23 in one batch of about 3 s
    slow = Slow(0.12)
    v = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=slow).create()
    panel = SyncPanel(v, refresh=0, poll=0.1)
    seen: list[tuple[int, int]] = []  # (texts the model had embedded, bar value)
    panel.progress.observe(lambda ch: seen.append((slow.done, ch["new"])), names="value")
    panel.sync_all(wait=True)
    moving = [n for done, n in seen if 0 < n < total and done < slow.done]
    assert moving, "the bar moves while the one batch is still in the model's hands"
    assert panel.progress.value == total and panel.progress.bar_style == "success"
    panel.close()


def test_sync_panel_first_claim_moves_by_the_share_embedded_never_beyond(db, schema):
    load_blog(db, schema=schema)
    total = len(BLOG_POSTS)
    # short chunks: about three a row, all 23 rows in the first (and only) claim. Nothing is
    # written before that claim commits, so no chunks-per-row can be learnt from the
    # destination: 4 chunks embedded once showed 4 of 23 rows, about 1.4 rows' worth of work
    slow = Slow(0.03)
    v = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", chunk_size=120, chunk_overlap=0,
                        embedder=slow).create()
    panel = SyncPanel(v, refresh=0, poll=0.1)
    seen: list[tuple[int, int]] = []  # (texts the model had embedded, bar value)
    panel.progress.observe(lambda ch: seen.append((slow.done, ch["new"])), names="value")
    rates: list[str] = []
    panel.rate.observe(lambda ch: rates.append(ch["new"]), names="value")
    panel.sync_all(wait=True)
    texts = slow.done  # the one claim's texts, all embedded
    first = [r for r in rates if r.startswith("0 of")]  # no row written yet
    assert first and not [r for r in first if "0.0 rows/s" in r], rates
    assert [r for r in first if "chunks/s" in r], f"the first batch's speed is its chunks': {rates}"
    assert texts >= 2 * total, "several chunks a row"
    during = [(d, n) for d, n in seen if d < texts]  # before the claim could commit
    assert [n for _, n in during if 0 < n < total], f"the bar moves during the first claim: {seen}"
    assert all(n * texts <= d * total for d, n in during), f"never more rows than their share of the work: {seen}"
    values = [n for _, n in seen]
    assert values == sorted(values), f"never backwards: {values}"
    assert panel.progress.value == total and panel.progress.bar_style == "success"
    panel.close()


def test_sync_panel_progress_moves_during_a_sync_and_resumes_after_stop(db, schema):
    load_blog(db, schema=schema)
    total = len(BLOG_POSTS)
    v = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=Slow(0.05),
                        batch_size=2).create()
    panel = SyncPanel(v, refresh=0, batch_seconds=0.3, poll=0.1)
    seen, rates, statuses = [], [], []
    panel.progress.observe(lambda ch: seen.append(ch["new"]), names="value")
    panel.rate.observe(lambda ch: rates.append(ch["new"]), names="value")
    panel.status_html.observe(lambda ch: statuses.append(ch["new"]), names="value")
    thread = panel.sync_all()
    deadline = time.monotonic() + 30
    # the panel polls on its own clock: wait until it has shown two states, not only until the
    # database holds them (CI once asserted between a commit and the next poll)
    while ((int(v.status()["pending"][0]) > total - 4 or len(statuses) < 2)
           and thread.is_alive() and time.monotonic() < deadline):
        time.sleep(0.05)
    assert 0 < panel.progress.value < total, "the bar moves before the end"
    assert len(statuses) >= 2, "the status table refreshes during the sync"
    panel.stop_button.click()
    assert "stopping after this batch" in panel.message.value and panel.stop_button.disabled
    thread.join(30)
    stopped_at = panel.progress.value
    assert "stopped" in panel.message.value and 0 < stopped_at < total
    assert stopped_at == total - int(v.status()["pending"][0]), "the bar shows what was written"
    assert len(rates) >= 3, "the rate line is redrawn while the sync runs"
    panel.sync_all(wait=True)  # resume: the bar counts the whole work, not only this run
    assert panel.progress.max == total and panel.progress.value == total
    assert panel.progress.bar_style == "success" and v.status()["pending"][0] == 0
    assert any(stopped_at < s < total for s in seen)
    panel.close()


def test_sync_panel_shows_a_sync_that_fails_in_red(db, conn, schema):
    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=HashingEmbedder(64)).create()
    panel = SyncPanel(v, refresh=0)
    panel._get_runner()
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO gone").format(sql.Identifier(schema, "blog")))
    panel.sync_button.click()
    if panel.thread is not None:
        panel.thread.join(30)
    assert panel.progress.bar_style == "danger" and "pgvz-error" in panel.message.value
    assert "reopen the vectorizer" in panel.message.value and not panel.sync_button.disabled
    panel.close()


def explorer(db, schema, **kwargs):
    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", template=TEMPLATE, chunk_column="contents",
                        metadata=["author", "category", "published_time"], time_column="published_time",
                        where="published_time IS NOT NULL", **kwargs).create()
    v.sync(progress=False)
    return v


def test_search_panel_filters_highlights_compares_and_maps(db, schema):
    v = explorer(db, schema)
    panel = SearchPanel(v, filters=["author", "category", "blog_id"])
    assert ("Pets", "Pets") in panel.filters["category"].options
    assert all(w.label == "(any)" for w in panel.filters.values()), "not blank"
    panel.filters["blog_id"].value = 2  # a number stays a number in the filter
    panel.query.value = "Blogs about cats"  # Enter: searches
    assert list(panel.last[0]["blog_id"]) == [2]
    panel.filters["blog_id"].value = None  # a filter change searches again
    assert len(panel.last[0]) == 5
    panel.k.value = 3  # so does k
    (frame,) = panel.last
    assert len(frame) == 3 and frame["blog_id"][0] == 1
    assert "<mark>cats</mark>" in panel.results.value and "source row" in panel.results.value
    assert "white-space:pre-wrap" in panel.results.value
    assert panel.code.value == "v.search('Blogs about cats', k=3)"
    panel.filters["category"].value = "Travel"
    panel.compare.value = "sourdough bread"
    panel.start.value = date(2023, 1, 1)
    panel.show_map.value = True
    frames = panel.last
    assert len(frames) == 2 and set(frames[0]["category"]) == {"Travel"}
    assert all(t >= "2023" for t in frames[1]["published_time"])
    assert "start=datetime.datetime(2023, 1, 1" in panel.code.value and panel.code.value.count("v.search(") == 2
    pts = panel.map_data.points
    assert set(pts[pts["kind"] == "hit"]["id"]) == {str(i) for i in frames[0]["id"]}
    assert type(panel.map.children[1]).__name__ == "JupyterScatter"
    assert panel.map_data.png()[:8] == b"\x89PNG\r\n\x1a\n"
    assert panel.map.layout.display is None
    panel.show_map.value = False
    assert panel.map.layout.display == "none"
    fallback = panel._repr_mimebundle_()["text/html"]  # exported HTML, no widget state
    assert "Blogs about cats" in fallback and "1. " in fallback
    v.close()


def test_search_panel_offers_no_exact_time_filter(db, schema):
    v = explorer(db, schema)
    panel = SearchPanel(v)
    assert set(panel.filters) == {"author", "category"} and not panel.start.disabled
    v.close()


def test_search_panel_offers_no_exact_match_on_other_times(db, conn, schema):
    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", metadata=["category", "published_time"],
                        embedder=HashingEmbedder(64)).create()  # published_time: metadata, no time_column
    v.sync(progress=False)
    stored = conn.execute(sql.SQL("SELECT DISTINCT metadata->>'published_time' FROM {}").format(
        sql.Identifier(schema, "blog_embedding"))).fetchall()
    assert len(stored) > 3 and all(re.match(r"\d{4}-\d\d-\d\dT", t) for (t,) in stored if t)
    assert set(SearchPanel(v).filters) == {"category"}, "one exact timestamp is no filter"
    asked = SearchPanel(v, filters=["published_time"]).filters
    assert set(asked) == {"published_time"}, "unless asked for"
    assert (None,) in stored, "drafts: no published_time"
    assert [label for label, value in asked["published_time"].options if value is None] == ["(any)"], \
        "a JSON null is not a second '(any)'"
    v.close()


def tickets(conn, schema, rows=(("Cannot log in after reset", "portal", "The login page says my password is wrong."),
                                ("Parcel stuck in customs", "shop", "Order 4471 is held at customs."),
                                ("Refund for a cancelled order", "shop", "The money is still on my card."))):
    conn.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, subject text, product text, body text)").format(
        sql.Identifier(schema, "tickets")))
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} (subject, product, body) VALUES (%s, %s, %s)").format(
            sql.Identifier(schema, "tickets")), rows)


def shown_titles(panel) -> list[str]:
    return re.findall(r"<b class='pgvz-title'>(.*?)</b>", panel.results.value)


def test_search_panel_titles_hits_by_the_rows_subject(db, conn, schema):
    tickets(conn, schema)
    setup = SetupPanel(db)  # as a user would: the table, nothing else (chunks of body, no template)
    setup.table.value = f"{schema}.tickets"
    setup.embedder.value = hashing_label(setup)
    assert setup.chunk_column.value == "body" and setup.template.value == ""
    v = setup.create()
    v.sync(progress=False)
    panel = SearchPanel(v)
    panel.query.value = "my login password is wrong"
    (frame,) = panel.last
    subjects = dict(conn.execute(sql.SQL("SELECT id, subject FROM {}").format(
        sql.Identifier(schema, "tickets"))).fetchall())
    assert shown_titles(panel) == [subjects[k] for k in frame["tickets_id"]], "the row's subject, not 'tickets 1'"
    assert not re.search(r"tickets \d", panel.results.value)
    pts = panel.map_data.points
    hits = pts[pts["kind"] == "hit"]
    assert sorted(hits["label"]) == sorted(f"{subjects[k]} (tickets_id={k})" for k in frame["tickets_id"]), \
        "the map's hover label names the row too"
    v.close()


def test_search_panel_title_from_metadata_is_not_repeated(db, conn, schema):
    tickets(conn, schema)
    v = pgvz.Vectorizer(db, f"{schema}.tickets", chunk_column="body", metadata=["subject", "product"],
                        embedder=HashingEmbedder(64)).create()
    v.sync(progress=False)
    panel = SearchPanel(v, filters=["product"])
    panel.query.value = "customs"
    (frame,) = panel.last
    stored = dict(conn.execute(sql.SQL("SELECT (metadata->>'tickets_id')::int, metadata->>'subject' FROM {}").format(
        sql.Identifier(schema, "tickets_embedding"))).fetchall())
    assert shown_titles(panel) == [stored[k] for k in frame["tickets_id"]]
    metas = re.findall(r"<small>(.*?)</small><details>", panel.results.value)
    assert len(metas) == len(frame) and all("product: " in m and "subject" not in m for m in metas)
    v.close()


def test_search_panel_without_a_title_column_keeps_the_frames_title(db, conn, schema):
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(schema, "notes")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'cats sleep'), (2, 'dogs bark')").format(
        sql.Identifier(schema, "notes")))
    v = pgvz.Vectorizer(db, f"{schema}.notes", chunk_column="body", embedder=HashingEmbedder(64)).create()
    v.sync(progress=False)
    panel = SearchPanel(v)
    panel.query.value = "cats"
    (frame,) = panel.last
    assert panel.title_column is None and shown_titles(panel) == list(frame["title"])
    assert set(panel.map_data.points["label"]) == {"notes_id=1", "notes_id=2", "query"}
    v.close()


def test_map_always_holds_the_hits(db, schema):
    from pgvz_nb.widgets import embedding_map

    v = explorer(db, schema, embedder=HashingEmbedder(64))
    hits = v.search("Blogs about cats", k=5)
    m = embedding_map(v, "Blogs about cats", hits, limit=2)  # fewer samples than hits
    kinds = m.points["kind"].value_counts()
    assert kinds["hit"] == 5 and kinds["query"] == 1 and len(m.points) == 6
    m = embedding_map(v, "Blogs about cats", hits, limit=10)
    assert len(m.points) == 11 and m.points["kind"].value_counts()["hit"] == 5
    v.create_index(hybrid=True)
    fused = v.search("sourdough starter rye", k=6, hybrid=True)
    m = embedding_map(v, "sourdough starter rye", fused, limit=1)  # full-text hits far from the query
    assert set(m.points[m.points["kind"] == "hit"]["id"]) == {str(i) for i in fused["id"]}
    assert "Sourdough" in " ".join(m.points["text"]), "hover text: the chunk"
    bundle = m._repr_mimebundle_()
    assert {"image/png", "text/plain", "application/vnd.jupyter.widget-view+json"} <= set(bundle)
    v.close()


def test_search_panel_hybrid_shows_the_score_it_ranks_by(db, schema):
    v = explorer(db, schema, embedder=HashingEmbedder(64))
    v.create_index(hybrid=True)
    panel = SearchPanel(v)
    panel.hybrid.value = True
    panel.query.value = "sourdough starter rye"
    assert "<th title='fused rank score (ordering)'>score</th>" in panel.results.value
    scores = list(panel.last[0]["score"])
    assert scores == sorted(scores, reverse=True)
    assert f"{scores[0]:.4f}" in panel.results.value
    v.close()


def test_search_panel_shows_every_error_inside(db, schema):
    class Broken(HashingEmbedder):
        def embed_query(self, text):
            raise RuntimeError("model <gone>")

    v = explorer(db, schema, embedder=HashingEmbedder(64))
    panel = SearchPanel(v)
    panel.button.click()
    assert "type a query first" in panel.results.value
    v.embedder = Broken(64)
    panel.query.value = "cats"
    assert "RuntimeError" in panel.results.value and "model &lt;gone&gt;" in panel.results.value
    assert "traceback" in panel.results.value
    v.close()


def test_highlight_escapes_before_marking():
    out = highlight("<script>cats</script> & Cats", "cats script")
    assert "<script>" not in out and "&lt;<mark>script</mark>&gt;" in out
    assert out.count("<mark>") == 4


def test_highlight_marks_whole_words_not_stopwords():
    out = highlight("The other cat sat with the cats", "the cats")
    assert out == "The other cat sat with the <mark>cats</mark>"
    assert "<mark>" not in highlight("catalogue", "cat")


def is_utc(series) -> bool:
    """A tz-aware datetime column (pandas picks ns or us resolution by version)."""
    return str(series.dtype).startswith("datetime64[") and str(series.dtype).endswith(", UTC]")


def test_frames_have_proper_dtypes_and_last_success(db, conn, schema):
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


# --- MigrationPanel ---------------------------------------------------------------------------


def blog_migration(db, schema, new_embedder=None, **kwargs):
    """The blog on a 64-d hashing model, a post whose title needs escaping, and a migration
    to another model and template."""
    load_blog(db, schema=schema)
    with db.connect() as c:
        c.execute(sql.SQL("INSERT INTO {} (title, author, contents, category, published_time) VALUES "
                          "('<b>Cats</b> & kittens', 'Matvey Arye', 'Cats and kittens nap all day.', 'Pets', now())"
                          ).format(sql.Identifier(schema, "blog")))
    v = pgvz.Vectorizer(db, f"{schema}.blog", template=TEMPLATE, chunk_column="contents",
                        metadata=["author", "title"], embedder=HashingEmbedder(64), **kwargs).create()
    v.sync(progress=False)
    return v, v.migrate(embedder=new_embedder or HashingEmbedder(16), template="{title}: {chunk}")


def dest_models(conn, schema: str, table: str) -> set:
    return {r[0] for r in conn.execute(sql.SQL("SELECT DISTINCT model FROM {}").format(
        sql.Identifier(schema, table))).fetchall()}


def test_migration_panel_sync_compare_cutover_rollback_finish(db, conn, schema):
    v, m = blog_migration(db, schema)
    old_model, new_model = v.config.model_id(), m.other.config.model_id()
    total = len(BLOG_POSTS) + 1
    panel = MigrationPanel(m, refresh=0, k=3)
    assert "building" in panel.header.value and f"{old_model} → {new_model}" in panel.header.value
    assert f"<td>{total}</td>" in panel.status_html.value  # the shadow's pending: every row
    assert panel.progress.value == 0 and f"0 of {total} rows embedded" in panel.rate.value
    # nothing typed: no Compare; building: no Rollback, no Finish; no sync: no Stop
    assert panel.compare_button.disabled and panel.rollback_button.disabled
    assert panel.finish_button.disabled and panel.stop_button.disabled and not panel.sync_button.disabled
    assert not panel.cutover_button.disabled  # fewer pending rows than it drains itself

    panel.sync(wait=True)
    assert panel.progress.value == 100 and panel.progress.bar_style == "success"
    assert "queue empty" in panel.message.value and not panel.sync_button.disabled
    assert list(m.status()["pending"]) == [0, 0]
    assert dest_models(conn, schema, "blog_embedding_migration") == {new_model}

    panel.queries.value = "cats and kittens\n\n  bread baking  \n"
    assert not panel.compare_button.disabled
    panel.compare_button.click()
    found = panel.last_compare
    assert list(found["query"]) == ["cats and kittens", "bread baking"]
    out = panel.compare_html.value
    assert out.count("class='pgvz-compare-row'") == 2 and "overlap@3" in out
    assert f"old: {old_model}" in out and f"new: {new_model}" in out
    assert "&lt;b&gt;Cats&lt;/b&gt; &amp; kittens" in out and "<b>Cats</b>" not in out, "titles escaped"
    for rec in found.to_dict("records"):  # a hit in one list only is marked, one in both is not
        only = (set(rec["old_top"]) ^ set(rec["new_top"]))
        assert all(f"<li class='pgvz-only' style='background:#fff3c4'>{html.escape(t)}</li>" in out for t in only)
    assert "m.compare(['cats and kittens', 'bread baking'], k=3)" in html.unescape(panel.code.value)

    panel.cutover_button.click()
    assert panel.state == "cut over" and "cut over" in panel.header.value, panel.result.value
    assert re.search(r"held its lock for \d+ ms", panel.result.value)
    assert dest_models(conn, schema, "blog_embedding") == {new_model}
    assert dest_models(conn, schema, "blog_embedding_migration") == {old_model}
    assert panel.cutover_button.disabled and not panel.rollback_button.disabled
    assert not panel.finish_button.disabled and "old vectors" in panel.finish_button.tooltip
    assert panel.progress.description == "Old model"
    # a change after the cutover reaches both sides through the panel's Sync
    conn.execute(sql.SQL("UPDATE {} SET contents = 'Zebras graze at dawn.' WHERE title = 'First Post'").format(
        sql.Identifier(schema, "blog")))
    panel.sync(wait=True)
    panel.rollback_button.click()
    assert panel.state == "rolled back" and dest_models(conn, schema, "blog_embedding") == {old_model}
    assert "Zebras" in v.search("zebras graze", k=1)["contents"][0]
    assert not panel.cutover_button.disabled and panel.rollback_button.disabled
    panel.cutover_button.click()
    assert panel.state == "cut over"

    panel.finish_button.click()  # the first press asks
    assert "press it again" in panel.result.value and panel.finish_button.description == "Really drop?"
    assert conn.execute("SELECT to_regclass(%s)", [f"{schema}.blog_embedding_migration"]).fetchone()[0]
    panel.finish_button.click()
    assert panel.state == "finished" and "finished" in panel.result.value, panel.result.value
    assert conn.execute("SELECT to_regclass(%s)", [f"{schema}.blog_embedding_migration"]).fetchone()[0] is None
    assert pgvz.Vectorizer.open(db, v.name).migration is None
    assert dest_models(conn, schema, "blog_embedding") == {new_model}
    for b in (panel.sync_button, panel.cutover_button, panel.rollback_button, panel.finish_button,
              panel.compare_button, panel.stop_button):
        assert b.disabled, b.description
    assert "migration finished" in panel._repr_mimebundle_()["text/plain"]
    panel.close()


def test_migration_panel_from_a_vectorizer_and_errors_inside(db, conn, schema):
    class Picky(HashingEmbedder):
        def embed_documents(self, texts):
            if any("Sourdough" in t for t in texts):
                raise RuntimeError("no bread <b>please</b>")
            return super().embed_documents(texts)

    load_blog(db, schema=schema)
    v = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=HashingEmbedder(64),
                        batch_size=5, max_attempts=1, retry_backoff=0).create()
    v.sync(progress=False)
    with pytest.raises(pgvz.PgvzError, match=r"no migration in progress.*v\.migrate\(embedder="):
        MigrationPanel(v)
    with pytest.raises(pgvz.PgvzError, match="expected a Migration"):
        MigrationPanel(None)
    m = v.migrate(embedder=Picky(16), template="{title}: {chunk}")
    found = MigrationPanel(pgvz.Vectorizer.open(db, v.name), refresh=0)
    assert found.m.other.name == m.other.name and found.state == "building"
    found.close()
    # the Migration itself: its shadow embeds with the model object given (Vectorizer.open
    # would rebuild a plain HashingEmbedder from the catalog)
    panel = MigrationPanel(m, refresh=0, wait=0, drain=5)
    # more pending rows than it drains: Cutover disabled, and why; pressed anyway, the panel says why
    assert panel.cutover_button.disabled and "Sync first" in panel.switch_hint.value
    panel.cutover_button.click()
    assert "pending rows" in panel.result.value and "m.sync() first" in panel.result.value
    assert "NotCaughtUp" in panel.result.value  # the refusal by its name, not a private one
    assert panel.state == "building"
    panel.finish_button.click()
    assert "press Cutover first" in panel.result.value
    assert conn.execute("SELECT to_regclass(%s)", [f"{schema}.blog_embedding_migration"]).fetchone()[0]
    panel.compare_button.click()
    assert "type a query first" in panel.compare_html.value
    # a failed row on the shadow: the bar is not green, Cutover stays disabled and says what to do
    panel.sync(wait=True)
    assert panel.progress.bar_style == "warning" and "1 failed" in panel.message.value
    assert panel.cutover_button.disabled and "failed rows" in panel.switch_hint.value
    assert "retry_failed()" in panel.switch_hint.value
    # an unexpected error in a handler: inside the panel, escaped, with its traceback
    panel.m.other.embedder = type("Broken", (HashingEmbedder,), {
        "embed_query": lambda self, text: (_ for _ in ()).throw(RuntimeError("model <gone>"))})(16)
    panel.queries.value = "cats"
    panel.compare_button.click()
    assert "RuntimeError" in panel.compare_html.value and "model &lt;gone&gt;" in panel.compare_html.value
    assert "traceback" in panel.compare_html.value
    panel.close()


def test_migration_panel_progress_moves_and_resumes_after_stop(db, schema):
    _, m = blog_migration(db, schema, new_embedder=Slow(0.08), batch_size=2)
    total = len(BLOG_POSTS) + 1
    panel = MigrationPanel(m, refresh=0, batch_seconds=0.3, poll=0.1)
    seen, statuses = [], []
    panel.progress.observe(lambda ch: seen.append(ch["new"]), names="value")
    panel.status_html.observe(lambda ch: statuses.append(ch["new"]), names="value")
    thread = panel.sync()
    assert panel.sync_button.disabled and not panel.stop_button.disabled
    assert panel.cutover_button.disabled and "a sync is running" in panel.switch_hint.value
    deadline = time.monotonic() + 30
    while ((int(m.status()["pending"][1]) > total - 4 or len(statuses) < 2)
           and thread.is_alive() and time.monotonic() < deadline):
        time.sleep(0.05)
    assert len(statuses) >= 2, "the status table refreshes during the sync"
    panel.stop_button.click()
    assert "stopping after this batch" in panel.message.value and panel.stop_button.disabled
    thread.join(30)
    assert "stopped" in panel.message.value and panel.progress.bar_style == "warning"
    stopped_at = panel.progress.value
    assert 0 < stopped_at < 100 and any(0 < s < 100 for s in seen)
    assert not panel.sync_button.disabled and panel.stop_button.disabled
    panel.sync(wait=True)  # resume
    assert panel.progress.value == 100 and panel.progress.bar_style == "success"
    assert list(m.status()["pending"]) == [0, 0]
    assert re.search(r"<td>\d+ s</td>", panel.status_html.value), "an ETA column from the sync's rate"
    panel.close()
