"""Failures: poison rows, transient service errors, rows that cannot be embedded, odd values."""

from __future__ import annotations

import json

import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.embedders import HashingEmbedder

from .openai_server import FakeOpenAI


class Poisoned(HashingEmbedder):
    """Fails on any batch holding a text with POISON in it."""

    attempts = 0  # every call, failed ones included

    def embed_documents(self, texts):
        self.attempts += 1
        if any("POISON" in t for t in texts):
            raise ValueError("the model rejects this text")
        return super().embed_documents(texts)


def make_docs(conn, schema, n, poison=()):
    t = sql.Identifier(schema, "docs")
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT i, 'document ' || i FROM generate_series(1, %s) i").format(t), [n])
    for k in poison:
        conn.execute(sql.SQL("UPDATE {} SET body = 'POISON ' || id WHERE id = %s").format(t), [k])


def dest_keys(conn, schema):
    return sorted(r[0] for r in conn.execute(
        sql.SQL("SELECT docs_id FROM {}").format(sql.Identifier(schema, "docs_embedding"))))


def test_poison_rows_are_isolated_and_end_in_the_failed_table(db, conn, schema):
    poison = [17, 90, 151]
    make_docs(conn, schema, 200, poison)
    emb = Poisoned()
    v = pgvz.Vectorizer(db, f"{schema}.docs", template="{body}", embedder=emb, max_attempts=3,
                        retry_backoff=0).create()
    report = v.sync(progress=False)
    assert report.answer == "empty"
    assert dest_keys(conn, schema) == [k for k in range(1, 201) if k not in poison]
    errors = v.errors()
    assert sorted(errors["id"]) == poison
    assert all(errors["attempts"] == 3) and all("the model rejects this text" in e for e in errors["last_error"])
    # halving finds them: far fewer model calls than one per row
    assert emb.attempts < 100, emb.attempts
    # retry_failed puts them back; once fixed, they embed
    conn.execute(sql.SQL("UPDATE {} SET body = 'fixed' WHERE id = ANY(%s)").format(
        sql.Identifier(schema, "docs")), [poison])
    v.sync(progress=False)  # a new change re-queues the key; success clears its failure
    assert dest_keys(conn, schema) == list(range(1, 201))
    assert v.errors().empty
    v.close()


def test_retry_failed_requeues_with_fresh_attempts(db, conn, schema):
    make_docs(conn, schema, 5, poison=[3])
    v = pgvz.Vectorizer(db, f"{schema}.docs", template="{body}", embedder=Poisoned(), max_attempts=1,
                        retry_backoff=0).create()
    v.sync(progress=False)
    assert list(v.errors()["id"]) == [3]
    assert v.retry_failed() == 1
    pending = v.queue()
    assert list(pending["id"]) == [3] and list(pending["attempts"]) == [0]
    assert v.errors().empty
    v.close()


def test_transient_429_and_5xx_are_waited_out_and_nothing_fails(db, conn, schema, monkeypatch):
    langchain_openai = pytest.importorskip("langchain_openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    make_docs(conn, schema, 30)
    with FakeOpenAI() as server:
        server.fail_next = [(429, {"Retry-After": "1"}), (429, {"Retry-After": "1"}), (500, {}), (503, {})]
        emb = langchain_openai.OpenAIEmbeddings(model="m", base_url=server.base_url, max_retries=0,
                                                check_embedding_ctx_length=False)
        server.fail_next, pending_failures = [], server.fail_next  # let create() probe the size
        v = pgvz.Vectorizer(db, f"{schema}.docs", template="{body}", embedder=emb).create()
        server.fail_next = pending_failures
        start = len(server.requests)
        # two lanes: a batch already waiting for the model when the other lane's call got the
        # 429 goes back without a call too (it once called right after it: 40 ms apart)
        report = v.sync(progress=False, lanes=2)
        assert report.failed == 0 and report.processed == 30
        assert dest_keys(conn, schema) == list(range(1, 31))
        assert v.errors().empty and v.status()["retrying"][0] == 0
        calls = server.requests[start:]
        assert len(calls) >= 5  # four refused, then served
        # Retry-After: 1 was honoured before the next attempt
        assert calls[1]["at"] - calls[0]["at"] >= 0.9 and calls[2]["at"] - calls[1]["at"] >= 0.9
        v.close()


def test_a_row_too_long_to_embed_fails_alone_with_a_clear_error(db, conn, schema):
    make_docs(conn, schema, 10)
    conn.execute(sql.SQL("UPDATE {} SET body = repeat('lorem ipsum ', 90000) WHERE id = 4").format(
        sql.Identifier(schema, "docs")))  # about 1 MB
    emb = HashingEmbedder()
    v = pgvz.Vectorizer(db, f"{schema}.docs", chunk_column="body", embedder=emb).create()
    report = v.sync(progress=False)
    assert set(dest_keys(conn, schema)) == {k for k in range(1, 11) if k != 4}
    (err,) = v.errors()["last_error"]
    assert "max_chunks=500" in err and "raise max_chunks=" in err
    assert report.failed == 1 and v.errors()["attempts"][0] == 5  # straight to failed: retrying cannot help
    v.close()


def test_null_empty_and_non_text_values(db, conn, schema):
    t = sql.Identifier(schema, "things")
    conn.execute(sql.SQL(
        "CREATE TABLE {} (id int PRIMARY KEY, body text, tags text[], attrs jsonb, price numeric, "
        "seen timestamptz, n int)").format(t))
    conn.execute(sql.SQL(
        "INSERT INTO {} VALUES (1, NULL, NULL, NULL, NULL, NULL, NULL), (2, '', '{{}}', '{{}}', 0, NULL, 0), "
        "(3, 'a real text', '{{red,blue}}', '{{\"size\": \"L\"}}', 9.50, '2024-05-01 12:00+00', 7)").format(t))
    only_body = pgvz.Vectorizer(db, f"{schema}.things", chunk_column="body", embedder=HashingEmbedder(),
                                name="only_body", destination=f"{schema}.only_body").create()
    only_body.sync(progress=False)
    rows = conn.execute(sql.SQL("SELECT things_id, contents FROM {}").format(
        sql.Identifier(schema, "only_body"))).fetchall()
    assert rows == [(3, "a real text")], "NULL and empty texts make no vectors and no errors"
    everything = pgvz.Vectorizer(db, f"{schema}.things", template="{body} | {tags} | {attrs} | {price} | {seen} | {n}",
                                 embedder=HashingEmbedder(), name="everything",
                                 destination=f"{schema}.everything").create()
    report = everything.sync(progress=False)
    assert report.failed == 0
    got = dict(conn.execute(sql.SQL("SELECT things_id, contents FROM {}").format(
        sql.Identifier(schema, "everything"))).fetchall())
    assert got[3] == 'a real text | ["red", "blue"] | {"size": "L"} | 9.50 | 2024-05-01 12:00:00+00:00 | 7'
    assert got[2] == " | [] | {} | 0 |  | 0" and got[1] == " |  |  |  |  | "
    assert json.loads(got[3].split(" | ")[2]) == {"size": "L"}
    only_body.close(), everything.close()


# a worker that dies (no exception, no cleanup: as a segfault or the OOM killer would) when
# a claimed batch holds a POISON row; argv: dsn schema max_attempts
DYING_WORKER = """
import os, sys
from psycopg import sql
import pgvz_nb as pgvz
dsn, schema, top = sys.argv[1], sys.argv[2], int(sys.argv[3])

def cb(rows, vec):
    if any(r["body"] and "POISON" in r["body"] for r in rows):
        os._exit(3)
    for r in rows:
        vec.connection.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(
            sql.Identifier(schema, "done")), [r["locked_id"]])

v = pgvz.Vectorize(dsn, "docs", schema_name=schema, max_attempts=top)
while v.process(cb, batch_size=10) or v.last_result.answer == "busy":
    pass
"""


def test_a_row_that_kills_its_worker_is_set_aside_after_max_attempts_deaths(db, conn, schema):
    """Without the in-flight record, the row would be claimed again at the head of the queue
    and kill every worker forever; innocent rows of its batch must not share its fate."""
    import subprocess
    import sys

    make_docs(conn, schema, 30, poison=[7])
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(schema, "done")))
    top = 3
    v = pgvz.Vectorize(db.dsn, "docs", schema_name=schema, max_attempts=top)
    v.register()
    deaths = 0
    for _ in range(10):
        run = subprocess.run([sys.executable, "-c", DYING_WORKER, db.dsn, schema, str(top)],
                             capture_output=True, text=True, timeout=120)
        if run.returncode == 0:
            break
        assert run.returncode == 3, run.stderr
        deaths += 1
    assert deaths == top  # the worker died on it max_attempts times, then it was set aside
    done = [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(
        sql.Identifier(schema, "done")))]
    assert done == [k for k in range(1, 31) if k != 7]  # every other row, each exactly once
    failed = v.failed()
    assert [f["id"] for f in failed] == [7] and f"died while processing this row, {top} times" in failed[0]["last_error"]
    assert v.state().rows == 0
    assert conn.execute("SELECT count(*) FROM pgvz.in_flight WHERE vectorizer = %s", [v._queue.id]).fetchone()[0] == 0
    # once the row is fixed, retry_failed brings it back and it goes through
    conn.execute(sql.SQL("UPDATE {} SET body = 'fixed' WHERE id = 7").format(sql.Identifier(schema, "docs")))
    assert v.retry_failed() == 1
    seen = []
    while v.process(lambda rows, _: seen.extend(r["locked_id"] for r in rows)):
        pass
    assert seen == [7]
    v.close()


def test_sync_takes_a_key_left_in_flight_alone_and_sets_it_aside_at_max_attempts(db, conn, schema):
    """What a dead worker leaves behind, written by hand: sync processes such a key in a
    batch of its own, and one that reached max_attempts deaths goes to the failed table."""
    make_docs(conn, schema, 20)
    emb = HashingEmbedder(8)
    v = pgvz.Vectorizer(db, f"{schema}.docs", template="{body}", embedder=emb, max_attempts=2).create()
    vid = v._queue.id
    # two dead batches: one held keys 4, 9 and 12, the other (9 taken alone) key 9
    conn.execute("INSERT INTO pgvz.in_flight (vectorizer, keys) VALUES (%s, %s), (%s, %s)",
                 [vid, ["4", "9", "12"], vid, ["9"]])  # keys as queue._key_texts writes them
    batches = []
    real = emb.embed_documents
    emb.embed_documents = lambda texts: batches.append(list(texts)) or real(texts)
    report = v.sync(progress=False, lanes=1)
    assert report.answer == "empty" and report.failed == 1
    assert dest_keys(conn, schema) == [k for k in range(1, 21) if k != 9]
    # keys 4 and 12 went through in batches of their own; key 9 never reached the model
    assert ["document 4"] in batches and ["document 12"] in batches
    assert not any("document 9" in b for b in batches) and sum(map(len, batches)) == 19
    errors = v.errors()
    assert errors["id"].tolist() == [9] and "died while processing this row, 2 times" in errors["last_error"][0]
    assert conn.execute("SELECT count(*) FROM pgvz.in_flight WHERE vectorizer = %s", [vid]).fetchone()[0] == 0
    v.close()


def test_every_key_a_dead_worker_held_goes_alone_in_the_same_call(db, conn, schema):
    """One process() call takes each such key of its claim alone, instead of putting the
    whole claim back once per key (a killed batch of 500 keys: 7.4 s -> 3.5 s to drain)."""
    make_docs(conn, schema, 8)
    v = pgvz.Vectorize(db.dsn, "docs", schema_name=schema)
    v.register()
    conn.execute("INSERT INTO pgvz.in_flight (vectorizer, keys) VALUES (%s, %s)",
                 [v._queue.id, ["2", "3", "5"]])
    calls: list[list] = []
    assert v.process(lambda rows, _: calls.append([r["locked_id"] for r in rows]), batch_size=10) == 3
    assert calls == [[2], [3], [5]]
    assert v.process(lambda rows, _: calls.append([r["locked_id"] for r in rows]), batch_size=10) == 5
    assert calls[3] == [1, 4, 6, 7, 8]
    assert conn.execute("SELECT count(*) FROM pgvz.in_flight WHERE vectorizer = %s", [v._queue.id]).fetchone()[0] == 0
    v.close()


DYING_TZ_WORKER = """
import os, sys
import pgvz_nb as pgvz
v = pgvz.Vectorize(sys.argv[1], "events", schema_name=sys.argv[2], id_column_name="at")
v.process(lambda rows, vec: os._exit(3), batch_size=10)
"""


def test_a_death_counts_for_a_timestamptz_key_whatever_the_workers_time_zones(db, conn, schema):
    """Keys are matched in pgvz.in_flight by their text: a timestamptz read in New York and
    the same instant read in Tokyo must give the same text, or a worker killed by the row in
    one zone goes uncounted by the workers of the other, and the row kills them forever."""
    import os
    import subprocess
    import sys

    from psycopg.conninfo import make_conninfo

    t = sql.Identifier(schema, "events")
    conn.execute(sql.SQL("CREATE TABLE {} (at timestamptz PRIMARY KEY, body text)").format(t))
    v = pgvz.Vectorize(db.dsn, "events", schema_name=schema, id_column_name="at", max_attempts=1)
    v.register()
    conn.execute(sql.SQL("INSERT INTO {} VALUES ('2026-03-01 12:00:00+00', 'kills its worker')").format(t))
    run = subprocess.run([sys.executable, "-c", DYING_TZ_WORKER, db.dsn, schema],
                         env={**os.environ, "PGTZ": "America/New_York"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr
    assert conn.execute("SELECT count(*) FROM pgvz.in_flight WHERE vectorizer = %s", [v._queue.id]).fetchone()[0] == 1
    tokyo = pgvz.Vectorize(make_conninfo(db.dsn, options="-c TimeZone=Asia/Tokyo"), "events",
                           schema_name=schema, id_column_name="at", max_attempts=1)
    seen = []
    tokyo.process(lambda rows, _: seen.extend(rows), batch_size=10)
    assert seen == []  # its one death reached max_attempts: set aside, not run again
    failed = tokyo.failed()
    assert len(failed) == 1 and "died while processing this row, 1 times" in failed[0]["last_error"]
    assert conn.execute("SELECT count(*) FROM pgvz.in_flight WHERE vectorizer = %s", [v._queue.id]).fetchone()[0] == 0
    tokyo.close()
    v.close()
