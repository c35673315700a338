"""The built-in pipeline (Vectorizer) with the real default model, against the real server."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np
import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.embedders import HashingEmbedder, MiniLMEmbedder, default_embedder
from pgvz_nb.errors import ConfigConflict, DimensionMismatch, NotFound, PgvzError
from pgvz_nb.sample import BLOG_POSTS, load_blog
from pgvz_nb.uuids import time_from_uuid

TEMPLATE = "Author {author}, title: {title}, contents:{chunk}"


class Counting(MiniLMEmbedder):
    """The real default model, counting what it is asked to embed."""

    def __init__(self):
        self.__dict__.update(default_embedder().__dict__)
        self.calls = 0
        self.texts = 0

    def encode(self, texts):
        self.calls += 1
        self.texts += len(texts)
        return super().encode(texts)


def blog_vectorizer(db, schema, embedder=None, **kw):
    load_blog(db, schema=schema)
    opts = dict(template=TEMPLATE, chunk_column="contents", chunk_size=300, chunk_overlap=50,
                metadata=["author", "category", "published_time"], time_column="published_time",
                where="published_time IS NOT NULL", embedder=embedder)
    opts.update(kw)
    return pgvz.Vectorizer(db, f"{schema}.blog", **opts).create()


def dest_rows(conn, schema, table="blog_embedding"):
    return conn.execute(sql.SQL(
        "SELECT blog_id, chunk_seq, chunk_hash, contents, metadata, id FROM {} ORDER BY blog_id, chunk_seq"
    ).format(sql.Identifier(schema, table))).fetchall()


def test_sync_embeds_published_posts_and_cats_come_first(db, conn, schema):
    v = blog_vectorizer(db, schema)
    report = v.sync(progress=False)
    published = [i + 1 for i, p in enumerate(BLOG_POSTS) if p[3] is not None]
    assert report.processed == len(BLOG_POSTS) and report.failed == 0 and report.answer == "empty"
    rows = dest_rows(conn, schema)
    assert sorted({r[0] for r in rows}) == published  # drafts (NULL published_time) get nothing
    assert report.embedded == len(rows)
    assert all(r[4]["blog_id"] == r[0] and "author" in r[4] for r in rows)
    hits = v.search("Blogs about cats", k=3)
    assert list(hits.columns[:4]) == ["rank", "distance", "title", "text"] and hits.columns[-1] == "contents"
    assert "cats" in hits["text"][0].lower() and hits["blog_id"][0] == 1
    assert hits["contents"][0].endswith(hits["text"][0]) and hits["contents"][0] != hits["text"][0]
    assert hits["distance"].is_monotonic_increasing
    v.close()


def test_create_is_idempotent_and_refuses_other_settings(db, conn, schema):
    v = blog_vectorizer(db, schema)
    again = pgvz.Vectorizer(db, f"{schema}.blog", template=TEMPLATE, chunk_column="contents",
                            chunk_size=300, chunk_overlap=50, metadata=["author", "category", "published_time"],
                            time_column="published_time", where="published_time IS NOT NULL").create()
    assert pgvz.vectorizers(db).query("name == @v.name").shape[0] == 1
    assert again.status()["pending"][0] == len(BLOG_POSTS), "a second create must not queue twice"
    # how it runs may change: a new batch size is taken, not refused
    faster = pgvz.Vectorizer(db, f"{schema}.blog", template=TEMPLATE, chunk_column="contents",
                             chunk_size=300, chunk_overlap=50, metadata=["author", "category", "published_time"],
                             time_column="published_time", where="published_time IS NOT NULL",
                             batch_size=7).create()
    assert pgvz.Vectorizer.open(db, v.name).config.batch_size == 7
    faster.close()
    with pytest.raises(ConfigConflict, match="chunk_size"):
        pgvz.Vectorizer(db, f"{schema}.blog", template=TEMPLATE, chunk_column="contents",
                        chunk_size=500, chunk_overlap=50, metadata=["author", "category", "published_time"],
                        time_column="published_time", where="published_time IS NOT NULL").create()
    v.close(), again.close()


def test_unrelated_updates_cost_no_embedding_call(db, conn, schema):
    counting = Counting()
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, views int DEFAULT 0)").format(
        sql.Identifier(schema, "docs")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT i, 'document number ' || i FROM generate_series(1, 1000) i").format(
        sql.Identifier(schema, "docs")))
    v = pgvz.Vectorizer(db, f"{schema}.docs", template="{body}", embedder=counting).create()
    v.sync(progress=False)
    before = counting.calls
    for _ in range(2):  # 1,000 single-row updates of an unrelated column, twice
        with db.connect() as c:
            for i in range(1, 1001):
                c.execute(sql.SQL("UPDATE {} SET views = views + 1 WHERE id = %s").format(
                    sql.Identifier(schema, "docs")), [i])
    report = v.sync(progress=False)
    assert counting.calls == before and report.processed == 0 and report.embedded == 0
    v.close()


def test_unchanged_chunks_keep_their_vectors(db, conn, schema):
    counting = Counting()
    v = blog_vectorizer(db, schema, embedder=counting)
    v.sync(progress=False)
    before = {(r[0], r[1]): (r[2], r[5]) for r in dest_rows(conn, schema)}
    blog = sql.Identifier(schema, "blog")
    # metadata-only change: rows rewritten, nothing embedded
    conn.execute(sql.SQL("UPDATE {} SET category = 'Animals' WHERE id = 2").format(blog))
    calls = counting.texts
    report = v.sync(progress=False)
    assert counting.texts == calls and report.embedded == 0 and report.unchanged >= 1
    after = {(r[0], r[1]): (r[2], r[5], r[4]) for r in dest_rows(conn, schema)}
    assert all(after[k][2]["category"] == "Animals" for k in after if k[0] == 2)
    assert all(after[k][:2] == before[k] for k in before), "hashes and ids must be kept"
    # a rewrite of the same text: the trigger sees no change at all
    conn.execute(sql.SQL("UPDATE {} SET contents = contents || '' WHERE id = 2").format(blog))
    assert v.status()["pending"][0] == 0
    # change the tail of a two-chunk post: only the changed chunk is embedded
    n2 = sum(1 for k in before if k[0] == 2)
    assert n2 >= 2
    conn.execute(sql.SQL("UPDATE {} SET contents = contents || ' Also: she loves boxes.' WHERE id = 2").format(blog))
    report = v.sync(progress=False)
    assert report.embedded == 1 and report.unchanged == n2 - 1
    v.close()


def test_rows_leaving_and_entering_where_lose_and_gain_vectors(db, conn, schema):
    v = blog_vectorizer(db, schema)
    v.sync(progress=False)
    blog = sql.Identifier(schema, "blog")
    conn.execute(sql.SQL("UPDATE {} SET published_time = NULL WHERE id = 1").format(blog))
    draft = next(i + 1 for i, p in enumerate(BLOG_POSTS) if p[3] is None)
    conn.execute(sql.SQL("UPDATE {} SET published_time = '2025-06-01' WHERE id = %s").format(blog), [draft])
    v.sync(progress=False)
    keys = {r[0] for r in dest_rows(conn, schema)}
    assert 1 not in keys and draft in keys
    st = v.status()
    assert st["coverage_pct"][0] == 100.0
    v.close()


def test_deleted_and_truncated_rows_lose_their_vectors(db, conn, schema):
    v = blog_vectorizer(db, schema)
    v.sync(progress=False)
    blog = sql.Identifier(schema, "blog")
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(blog))
    v.sync(progress=False)
    assert 2 not in {r[0] for r in dest_rows(conn, schema)}
    conn.execute(sql.SQL("TRUNCATE {}").format(blog))
    v.sync(progress=False)
    assert dest_rows(conn, schema) == []
    v.close()


def test_time_column_gives_time_uuids_and_time_filters(db, conn, schema):
    v = blog_vectorizer(db, schema)
    v.sync(progress=False)
    for r in dest_rows(conn, schema):
        assert r[5].version == 1
        assert time_from_uuid(r[5]).isoformat() == r[4]["published_time"]
    start = datetime(2023, 1, 1, tzinfo=timezone.utc)
    end = datetime(2024, 1, 1, tzinfo=timezone.utc)
    hits = v.search("travel by train", k=10, start=start, end=end)
    assert len(hits) > 0
    assert all("2023" in t for t in hits["published_time"])
    v.close()


def test_filter_and_hybrid_search(db, conn, schema):
    v = blog_vectorizer(db, schema)
    v.sync(progress=False)
    travel = v.search("a long journey", k=5, filter={"category": "Travel"})
    assert len(travel) > 0 and set(travel["category"]) == {"Travel"}
    none = v.search("a long journey", k=5, filter={"category": "No such category"})
    assert len(none) == 0
    v.create_index(hybrid=True)
    hybrid = v.search("sourdough starter", k=3, hybrid=True)
    assert "score" in hybrid.columns and hybrid["score"].is_monotonic_decreasing
    assert "sourdough" in hybrid["contents"][0].lower()
    indexes = {r[0] for r in conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'blog_embedding'", [schema])}
    assert any("hnsw" in i and "vector_cosine_ops" in i for i in indexes)
    assert any("to_tsvector" in i for i in indexes)
    v.close()


def test_open_in_another_process_rebuilds_the_same_pipeline(db, conn, schema):
    v = blog_vectorizer(db, schema)
    code = (
        "import sys, pgvz_nb as p\n"
        "db = p.Database(sys.argv[1])\n"
        "v = p.Vectorizer.open(db, sys.argv[2])\n"
        "r = v.sync(progress=False)\n"
        "print(r.processed, r.embedded, v.config.template)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, db.dsn, v.name], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    processed, embedded, template = out.stdout.split(" ", 2)
    assert int(processed) == len(BLOG_POSTS) and template.strip() == TEMPLATE
    assert len(dest_rows(conn, schema)) == int(embedded)
    v.close()


def test_failing_embedder_leaves_destination_and_queue_consistent(db, conn, schema):
    class Picky(HashingEmbedder):
        def embed_documents(self, texts):
            if any("sourdough" in t.lower() for t in texts):
                raise RuntimeError("cannot embed bread")
            return super().embed_documents(texts)

    v = blog_vectorizer(db, schema, embedder=Picky(), name="picky")
    report = v.sync(progress=False)
    assert report.failed == 1 and report.answer == "waiting"
    keys = {r[0] for r in dest_rows(conn, schema)}
    bread = next(i + 1 for i, p in enumerate(BLOG_POSTS) if "Sourdough" in p[0])
    assert bread not in keys and len(keys) == sum(1 for p in BLOG_POSTS if p[3] is not None) - 1
    pending = v.queue()
    assert list(pending["id"]) == [bread] and "cannot embed bread" in pending["last_error"][0]
    v.close()


def test_errors_name_what_was_expected(db, conn, schema):
    load_blog(db, schema=schema)
    with pytest.raises(NotFound, match=r"\['writer'\].*its columns are"):
        pgvz.Vectorizer(db, f"{schema}.blog", template="{writer}: {chunk}", chunk_column="contents").create()
    with pytest.raises(PgvzError, match="not a valid SQL condition"):
        pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", where="published_tim IS NULL").create()
    v = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents").create()
    with pytest.raises(DimensionMismatch) as info:
        pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=HashingEmbedder(128)).create()
    assert "384" in str(info.value) and "128" in str(info.value) and "replace=True" in str(info.value)
    with pytest.raises(ConfigConflict, match="already the destination"):
        pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="title", name="another",
                        destination=f"{schema}.blog_embedding").create()
    # the way out works: replace=True rebuilds with the new size
    w = pgvz.Vectorizer(db, f"{schema}.blog", chunk_column="contents", embedder=HashingEmbedder(128)).create(
        replace=True)
    w.sync(progress=False)
    dims = conn.execute("SELECT vector_dims(embedding) FROM " + f'"{schema}".blog_embedding LIMIT 1').fetchone()
    assert dims == (128,)
    v.close(), w.close()


def test_default_embedder_sorts_by_length_but_keeps_order():
    e = default_embedder()
    texts = ["a much longer text about cats and dogs and their habits", "short", "medium length text"]
    together = e.encode(texts)
    alone = np.stack([e.encode([t])[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-4)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert together.shape == (3, 384)


def test_tables_that_cannot_be_vectorized(db, conn, schema):
    from pgvz_nb.errors import NoPrimaryKey, NotATable

    conn.execute(sql.SQL("CREATE TABLE {} (body text)").format(sql.Identifier(schema, "nokey")))
    conn.execute(sql.SQL("CREATE VIEW {} AS SELECT 1 AS id, 'x' AS body").format(sql.Identifier(schema, "aview")))
    with pytest.raises(NoPrimaryKey, match="has no primary key.*ADD PRIMARY KEY"):
        pgvz.Vectorizer(db, f"{schema}.nokey", chunk_column="body", embedder=HashingEmbedder()).create()
    with pytest.raises(NotATable, match="is a view.*underlying table"):
        pgvz.Vectorizer(db, f"{schema}.aview", chunk_column="body", embedder=HashingEmbedder()).create()
    with pytest.raises(NotFound, match="does not exist"):
        pgvz.Vectorizer(db, f"{schema}.missing", chunk_column="body", embedder=HashingEmbedder()).create()
    with pytest.raises(PgvzError, match="expected template= .* or chunk_column="):
        pgvz.Vectorizer(db, f"{schema}.nokey")


def test_bytea_and_timestamp_keys_round_trip_through_the_pipeline(db, conn, schema):
    """Keys travel to SQL as JSON text: bytea and timestamptz must come back as themselves."""
    for table, ddl, values in (
        ("blobs", "id bytea PRIMARY KEY, body text", "('\\x00ff'::bytea, 'zero ff'), ('\\x01'::bytea, 'one')"),
        ("events", "id timestamptz PRIMARY KEY, body text", "('2024-01-01 10:00+00', 'new year'), ('2024-02-01 10:00+00', 'feb')"),
    ):
        t = sql.Identifier(schema, table)
        conn.execute(sql.SQL("CREATE TABLE {} (" + ddl + ")").format(t))
        conn.execute(sql.SQL("INSERT INTO {} VALUES " + values).format(t))
        v = pgvz.Vectorizer(db, f"{schema}.{table}", chunk_column="body", embedder=HashingEmbedder(8)).create()
        assert v.sync(progress=False).processed == 2
        conn.execute(sql.SQL("UPDATE {} SET body = body || ' (edited)'").format(t))
        assert v.sync(progress=False).processed == 2  # old chunks found and replaced by key
        rows = conn.execute(sql.SQL("SELECT contents FROM {} ORDER BY 1").format(
            sql.Identifier(schema, f"{table}_embedding"))).fetchall()
        assert len(rows) == 2 and all(r[0].endswith("(edited)") for r in rows), rows
        v.close()


@pytest.mark.parametrize("template", [
    "{title}: {chunk}", "{{literal}} {title!r} {n:>5} {price:.2f}", "{when.year}-{tags[0]}",
    "{meta} / {missing_is_none}", "no fields at all", "{chunk}{chunk}", "{n:{width}}",
])
def test_compiled_template_renders_like_str_format(template):
    """The pipeline's pre-parsed template is a fast path of str.format with NULL -> '' and
    dict/list -> JSON; every template must render exactly as the general formatter does."""
    from datetime import datetime as dt
    from decimal import Decimal

    from pgvz_nb.pipeline import _FORMATTER, _Template

    values = {"title": "Cats", "n": 7, "price": Decimal("3.5"), "when": dt(2024, 5, 1), "tags": ["a", "b"],
              "meta": {"k": [1, "é"]}, "missing_is_none": None, "width": 4}
    t = _Template(template)
    assert t.render(values, "piece") == _FORMATTER.format(template, **{**values, "chunk": "piece"})
    assert t.simple == (template not in ("{when.year}-{tags[0]}", "{n:{width}}"))


def test_next_batch_size_aims_at_the_target_and_moves_gradually():
    from pgvz_nb.vectorizer import next_batch_size

    # 64 rows took 6.4 s (0.1 s a row): 2 s a batch is 20 rows
    assert next_batch_size(None, 64, 6.4, 2.0, hi=1000) == (20, 0.1)
    # 64 rows took 64 ms: 2,000 rows would take 2 s, but a batch at most quadruples
    assert next_batch_size(None, 64, 0.064, 2.0, hi=1000)[0] == 256
    assert next_batch_size(None, 400, 0.4, 2.0, hi=1000)[0] == 1000  # and never passes hi
    assert next_batch_size(None, 2, 30.0, 2.0, hi=1000)[0] == 1  # a row slower than the target: one at a time
    size, est = next_batch_size(0.1, 20, 0.2, 2.0, hi=1000)  # halfway from 0.1 to 0.01 s a row
    assert est == pytest.approx(0.055) and size == 36


class Slow(HashingEmbedder):
    """50 ms per text, recording the size of every call."""

    def __init__(self):
        super().__init__(16)
        self.sizes = []

    def embed_documents(self, texts):
        self.sizes.append(len(texts))
        time.sleep(0.05 * len(texts))
        return super().embed_documents(texts)


def test_sync_sizes_claims_by_time_and_a_fixed_size_on_request(db, conn, schema):
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(schema, "slow")))
    conn.execute(sql.SQL("INSERT INTO {} SELECT i, 'text ' || i FROM generate_series(1, 60) i").format(
        sql.Identifier(schema, "slow")))
    emb = Slow()
    v = pgvz.Vectorizer(db, f"{schema}.slow", template="{body}", embedder=emb, batch_size=20).create()
    report = v.sync(progress=False, lanes=1, batch_seconds=0.2)
    dest = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "slow_embedding"))
    assert report.processed == 60 and conn.execute(dest).fetchone()[0] == 60
    # the first claim is batch_size; a 50 ms text with a 0.2 s target makes the rest 4 rows or
    # fewer (a slower machine only makes them smaller)
    assert emb.sizes[0] == 20 and max(emb.sizes[1:]) <= 4, emb.sizes
    conn.execute(sql.SQL("UPDATE {} SET body = body || '!' WHERE id <= 40").format(sql.Identifier(schema, "slow")))
    emb.sizes.clear()
    v.sync(progress=False, lanes=1, batch_seconds=None)
    assert emb.sizes == [20, 20], emb.sizes
    v.close()


@pytest.mark.parametrize("typ", ["timestamp", "date"])
def test_naive_timestamp_and_date_time_columns_give_stable_time_ids(db, conn, schema, typ):
    """A date used to fail every row, and a naive timestamp gave a row's chunks new ids on
    every update (its time never matched the aware time in the stored id). Both are read as
    local time, as PostgreSQL casts them to timestamptz."""
    from datetime import date

    t = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, cat text, at {})").format(
        t, sql.SQL(typ)))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a concert', 'x', '2024-05-06 07:08:09'), "
                         "(2, 'a play', 'y', '2023-01-02 03:04:05')").format(t))
    v = pgvz.Vectorizer(db, f"{schema}.events", template="{body}", metadata=["cat"], time_column="at",
                        embedder=HashingEmbedder(8)).create()
    assert v.sync(progress=False).failed == 0
    ids = dict(conn.execute(sql.SQL("SELECT events_id, id FROM {}").format(
        sql.Identifier(schema, "events_embedding"))).fetchall())
    local = {1: datetime(2024, 5, 6, 7, 8, 9), 2: datetime(2023, 1, 2, 3, 4, 5)}
    if typ == "date":
        local = {k: datetime.combine(d.date(), datetime.min.time()) for k, d in local.items()}
    assert {k: time_from_uuid(u) for k, u in ids.items()} == {
        k: d.astimezone(timezone.utc) for k, d in local.items()}
    conn.execute(sql.SQL("UPDATE {} SET cat = 'z'").format(t))  # metadata only: ids must stay
    assert v.sync(progress=False).processed == 2
    assert dict(conn.execute(sql.SQL("SELECT events_id, id FROM {}").format(
        sql.Identifier(schema, "events_embedding"))).fetchall()) == ids
    hits = v.search("anything", k=5, start=datetime(2024, 1, 1, tzinfo=timezone.utc))
    assert hits["events_id"].tolist() == [1]
    v.close()


def test_a_selective_filter_still_returns_k_hits_through_the_hnsw_index(db, conn, schema):
    """An HNSW scan hands over ef_search (40) candidates and the filter keeps those that
    match: 1 category in 50 gave 1 hit for k=10. pgvector's iterative scan continues until
    k rows pass; search turns it on."""
    t = sql.Identifier(schema, "notes")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, cat text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT i, 'note ' || i || ' on ' || md5(i::text), (i % 50)::text "
                         "FROM generate_series(1, 10000) i").format(t))
    v = pgvz.Vectorizer(db, f"{schema}.notes", template="{body}", metadata=["cat"],
                        embedder=HashingEmbedder(64)).create()
    v.sync(progress=False)
    v.create_index()
    dest = sql.Identifier(schema, "notes_embedding")
    conn.execute(sql.SQL("ANALYZE {}").format(dest))
    plan = "\n".join(r[0] for r in conn.execute(sql.SQL(
        "EXPLAIN SELECT id FROM {d} WHERE metadata @> '{{\"cat\": \"7\"}}' "
        "ORDER BY embedding <=> (SELECT embedding FROM {d} LIMIT 1) LIMIT 10").format(d=dest)))
    assert "hnsw" in plan  # the planner takes the index, so the filter runs on its candidates
    hits = v.search("a note", k=10, filter={"cat": "7"})
    assert len(hits) == 10 and set(hits["cat"]) == {"7"}
    assert hits["distance"].is_monotonic_increasing
    # the same on a connection inside the caller's own transaction (set for it alone)
    from pgvz_nb.search import search_rows

    with db.connect(vector=True) as c:
        c.execute("SELECT 1")  # a transaction is open
        rows = search_rows(c, (schema, "notes_embedding"), v.embedder.embed_query("a note"), None, 10,
                           filter={"cat": "9"})
        assert len(rows) == 10
        c.rollback()
        assert c.execute("SELECT current_setting('hnsw.iterative_scan')").fetchone()[0] == "off"
    v.close()


def test_create_index_adds_a_time_index_that_narrow_time_ranges_use(db, conn, schema):
    """Measured on 100k rows: a 1-day range took 240 ms walking the HNSW graph, 1.1 ms from
    this index (30 days: 84 -> 4.1 ms)."""
    t = sql.Identifier(schema, "log")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, at timestamptz)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT i, 'entry ' || i, timestamptz '2020-01-01' + i * interval '1 hour' "
                         "FROM generate_series(1, 5000) i").format(t))
    v = pgvz.Vectorizer(db, f"{schema}.log", template="{body}", time_column="at",
                        embedder=HashingEmbedder(64)).create()
    v.sync(progress=False)
    v.create_index()
    dest = sql.Identifier(schema, "log_embedding")
    indexes = [r[0] for r in conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'log_embedding'", [schema])]
    assert any("uuid_extract_timestamp(id)" in i for i in indexes), indexes
    conn.execute(sql.SQL("ANALYZE {}").format(dest))
    start = datetime(2020, 3, 1, tzinfo=timezone.utc)
    end = datetime(2020, 3, 2, tzinfo=timezone.utc)
    params = {"q": np.ones(64, dtype=np.float32), "k": 5, "filter": None, "start": start, "end": end,
              "text": None, "pool": 40}
    from pgvector.psycopg import register_vector

    register_vector(conn)
    plan = "\n".join(r[0] for r in conn.execute(
        sql.SQL("EXPLAIN ") + pgvz.sql.search((schema, "log_embedding"), hybrid=False, time_range=True), params))
    assert "log_embedding_time" in plan, plan
    hits = v.search("entry", k=5, start=start, end=end)
    assert len(hits) == 5
    v.close()


def test_upserts_and_merge_are_followed(db, conn, schema):
    """INSERT ... ON CONFLICT fires the INSERT and the UPDATE statement triggers, MERGE those
    of each action it takes; an upsert that changes only an unwatched column queues nothing."""
    t = sql.Identifier(schema, "posts")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text, views int DEFAULT 0)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'one'), (2, 'two')").format(t))
    v = pgvz.Vectorizer(db, f"{schema}.posts", template="{body}", embedder=HashingEmbedder(8)).create()
    v.sync(progress=False)
    conn.execute(sql.SQL("INSERT INTO {} VALUES (2, 'two v2'), (3, 'three') "
                         "ON CONFLICT (id) DO UPDATE SET body = excluded.body").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'ignored') ON CONFLICT DO NOTHING").format(t))
    conn.execute(sql.SQL("INSERT INTO {} AS p VALUES (1, 'one') "
                         "ON CONFLICT (id) DO UPDATE SET views = p.views + 1").format(t))
    conn.commit()
    assert sorted(v.queue()["id"]) == [2, 3]
    v.sync(progress=False)
    conn.execute(sql.SQL(
        "MERGE INTO {} AS p USING (VALUES (1, 'one merged'), (4, 'four'), (3, NULL)) AS s(id, body) "
        "ON p.id = s.id WHEN MATCHED AND s.body IS NULL THEN DELETE "
        "WHEN MATCHED THEN UPDATE SET body = s.body WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.body)").format(t))
    conn.commit()
    assert sorted(v.queue()["id"]) == [1, 3, 4]
    v.sync(progress=False)
    got = sorted(conn.execute(sql.SQL("SELECT posts_id, contents FROM {}").format(
        sql.Identifier(schema, "posts_embedding"))).fetchall())
    assert got == sorted(conn.execute(sql.SQL("SELECT id, body FROM {}").format(t)).fetchall()) == [
        (1, "one merged"), (2, "two v2"), (4, "four")]
    v.close()
