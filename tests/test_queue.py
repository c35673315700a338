"""The trigger-and-queue engine through the PgVectorize-compatible API, against a real server."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.errors import CallbackFailed, ConfigConflict, NoPrimaryKey, NotATable, NotFound
from pgvz_nb.queue import Queue, _key_texts

from .conftest import queued

Q = "blog_embedding_work_queue"


def make_blog(conn, schema, n=5, table="blog"):
    t = sql.Identifier(schema, table)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id serial PRIMARY KEY, title text, contents text, "
            "category text, views int DEFAULT 0)"
        ).format(t)
    )
    if n:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (title, contents, category) "
                "SELECT 'title ' || i, 'contents ' || i, 'c' FROM generate_series(1, %s) i"
            ).format(t),
            [n],
        )


def drain(v, batch_size=10):
    seen = []
    while v.process(lambda rows, _: seen.extend(dict(r) for r in rows), batch_size=batch_size) > 0:
        pass
    return seen


def test_register_backfills_existing_rows_once_and_is_idempotent(db, conn, schema):
    make_blog(conn, schema, n=5)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    v.register()
    pgvz.Vectorize(db.dsn, "blog", schema_name=schema).register()  # a fresh object too
    assert queued(conn, schema, Q) == [1, 2, 3, 4, 5]
    triggers = conn.execute(
        "SELECT tgname, tgtype & 1 FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
        [f"{schema}.blog"],
    ).fetchall()
    # four triggers, all statement level (tgtype bit 0 = FOR EACH ROW)
    assert sorted(t[0] for t in triggers) == [
        "track_changes_for_embedding_delete", "track_changes_for_embedding_insert",
        "track_changes_for_embedding_truncate", "track_changes_for_embedding_update",
    ]
    assert all(t[1] == 0 for t in triggers)
    count = conn.execute(
        "SELECT count(*) FROM pgvz.vectorizers WHERE source_schema = %s", [schema]
    ).fetchone()[0]
    assert count == 1


def test_insert_statement_queues_every_new_key(db, conn, schema):
    make_blog(conn, schema, n=0)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    conn.execute(
        sql.SQL("INSERT INTO {} (title) SELECT 't' FROM generate_series(1, 50)").format(
            sql.Identifier(schema, "blog")
        )
    )
    assert queued(conn, schema, Q) == list(range(1, 51))


def test_update_queues_only_real_changes(db, conn, schema):
    make_blog(conn, schema, n=3)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    drain(v)
    blog = sql.Identifier(schema, "blog")
    conn.execute(sql.SQL("UPDATE {} SET title = title, views = views").format(blog))
    assert queued(conn, schema, Q) == [], "an UPDATE that changes nothing must not queue"
    conn.execute(sql.SQL("UPDATE {} SET views = views + 1 WHERE id = 2").format(blog))
    assert queued(conn, schema, Q) == [2], "without a column list, any real change queues"


def test_update_of_unwatched_column_queues_nothing(db, conn, schema):
    make_blog(conn, schema, n=3)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema, columns=["title", "contents"])
    v.register()
    drain(v)
    blog = sql.Identifier(schema, "blog")
    conn.execute(sql.SQL("UPDATE {} SET views = views + 1, category = 'x'").format(blog))
    assert queued(conn, schema, Q) == []
    conn.execute(sql.SQL("UPDATE {} SET contents = 'new' WHERE id IN (1, 3)").format(blog))
    assert queued(conn, schema, Q) == [1, 3]
    conn.execute(sql.SQL("UPDATE {} SET title = NULL WHERE id = 2").format(blog))
    assert queued(conn, schema, Q) == [1, 2, 3], "a change to NULL is a change"


def test_primary_key_change_queues_old_and_new_key(db, conn, schema):
    make_blog(conn, schema, n=3)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema, columns=["title"])
    v.register()
    drain(v)
    blog = sql.Identifier(schema, "blog")
    conn.execute(sql.SQL("UPDATE {} SET id = id + 10 WHERE id = 2").format(blog))
    assert queued(conn, schema, Q) == [2, 12]
    seen = {r["locked_id"]: r for r in drain(v)}
    assert seen[2]["id"] is None and seen[2]["title"] is None  # gone: every column None
    assert seen[12]["title"] == "title 2"


def test_key_shift_queues_keys_whose_content_changed(db, conn, schema):
    """UPDATE id = id + 1 over all rows: key 1 vanishes, a new top key appears, and the
    keys in between now hold another row's content. Key 6 -> 7 and 7 -> 8 with equal
    titles: key 7 keeps the same content, so it needs no work."""
    t = sql.Identifier(schema, "shift")
    # DEFERRABLE: the uniqueness check waits for the end of the statement
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY DEFERRABLE, title text)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a'), (2, 'b'), (3, 'c'), (6, 'x'), (7, 'x')").format(t))
    v = pgvz.Vectorize(db.dsn, "shift", schema_name=schema, columns=["title"])
    v.register()
    drain(v)
    conn.execute(sql.SQL("UPDATE {} SET id = id + 1").format(t))
    assert queued(conn, schema, "shift_embedding_work_queue") == [1, 2, 3, 4, 6, 8]


def test_delete_hands_callback_a_row_of_nones(db, conn, schema):
    make_blog(conn, schema, n=3)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    drain(v)
    conn.execute(sql.SQL("DELETE FROM {} WHERE id >= 2").format(sql.Identifier(schema, "blog")))
    assert queued(conn, schema, Q) == [2, 3]
    rows = drain(v)
    assert [r["locked_id"] for r in rows] == [2, 3]
    assert all(r["id"] is None and r["title"] is None for r in rows)


def test_truncate_queues_every_key_that_existed(db, conn, schema):
    make_blog(conn, schema, n=4)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    drain(v)
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(schema, "blog")))
    assert queued(conn, schema, Q) == [1, 2, 3, 4]
    assert all(r["id"] is None for r in drain(v))


def test_rows_are_dict_like_and_positional_like_the_original(db, conn, schema):
    make_blog(conn, schema, n=1)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    got = []
    v.process(lambda rows, vec: got.extend(rows))
    (row,) = got
    assert row["locked_id"] == 1 and row[0] == 1  # locked_id comes first
    assert row["title"] == "title 1" and row[2] == "title 1"
    assert list(row.keys()) == ["locked_id", "id", "title", "contents", "category", "views"]


def test_process_returns_zero_and_says_why(db, conn, schema):
    make_blog(conn, schema, n=2)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema, max_attempts=3)
    assert v.process(lambda rows, _: None) == 2
    assert v.process(lambda rows, _: None) == 0
    assert v.last_result.answer == "empty"
    conn.execute(sql.SQL("UPDATE {} SET title = 'x' WHERE id = 1").format(sql.Identifier(schema, "blog")))
    with pytest.raises(CallbackFailed):
        v.process(lambda rows, _: 1 / 0)
    assert v.process(lambda rows, _: None) == 0
    assert v.last_result.answer == "waiting"  # queued, but in backoff
    assert v.last_result.state.next_retry is not None


def test_callback_error_leaves_rows_queued_with_attempts_raised(db, conn, schema):
    make_blog(conn, schema, n=3)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema, max_attempts=2)

    def boom(rows, _):
        raise RuntimeError("model offline")

    with pytest.raises(CallbackFailed, match="model offline") as info:
        v.process(boom)
    assert isinstance(info.value.__cause__, RuntimeError)
    rows = conn.execute(
        sql.SQL("SELECT id, attempts, retry_after > now(), last_error FROM {} ORDER BY id").format(
            sql.Identifier(schema, Q)
        )
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(1, 1, True), (2, 1, True), (3, 1, True)]
    assert all("RuntimeError: model offline" in r[3] for r in rows)
    # second failure reaches max_attempts: the keys move to the failed table
    conn.execute(sql.SQL("UPDATE {} SET retry_after = now()").format(sql.Identifier(schema, Q)))
    with pytest.raises(CallbackFailed):
        v.process(boom)
    assert queued(conn, schema, Q) == []
    assert [(f["id"], f["attempts"]) for f in v.failed()] == [(1, 2), (2, 2), (3, 2)]
    assert v.state().failed == 3
    assert v.retry_failed() == 3
    assert queued(conn, schema, Q) == [1, 2, 3] and v.failed() == []
    assert len(drain(v)) == 3


def test_one_poison_row_is_isolated_and_the_rest_commit(db, conn, schema):
    make_blog(conn, schema, n=10)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    done = []

    def picky(rows, _):
        if any(r["id"] == 7 for r in rows):
            raise ValueError("cannot embed row 7")
        done.extend(r["id"] for r in rows)

    with pytest.raises(CallbackFailed) as info:
        v.process(picky, batch_size=10)
    assert "1 of 10" in str(info.value)
    assert sorted(done) == [1, 2, 3, 4, 5, 6, 8, 9, 10]
    assert queued(conn, schema, Q) == [7]
    assert v.last_result.failed_keys == [(7,)]


def test_writes_through_vectorizer_connection_roll_back_with_the_claim(db, conn, schema):
    make_blog(conn, schema, n=2)
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(schema, "out")))
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)

    def write_then_fail(rows, vec):
        vec.connection.execute(
            sql.SQL("INSERT INTO {} SELECT unnest(%s::int[])").format(sql.Identifier(schema, "out")),
            [[r["id"] for r in rows]],
        )
        if any(r["id"] == 2 for r in rows):
            raise RuntimeError("fail after writing")

    with pytest.raises(CallbackFailed):
        v.process(write_then_fail)
    out = conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(schema, "out"))).fetchall()
    assert out == [(1,)], "the failed sub-batch's writes must roll back, the good one's commit"


def test_change_during_processing_is_processed_again(db, conn, schema):
    make_blog(conn, schema, n=1)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    seen = []

    def edit_while_in_flight(rows, _):
        seen.extend((r["id"], r["title"]) for r in rows)
        if len(seen) == 1:
            with psycopg.connect(db.dsn, autocommit=True) as other:
                other.execute(
                    sql.SQL("UPDATE {} SET title = 'edited' WHERE id = 1").format(
                        sql.Identifier(schema, "blog")
                    )
                )

    assert v.process(edit_while_in_flight) == 1
    assert queued(conn, schema, Q) == [1], "the edit's queue entry must survive the dequeue"
    assert v.process(edit_while_in_flight) == 1
    assert seen == [(1, "title 1"), (1, "edited")]


def test_duplicate_queue_entries_are_claimed_once(db, conn, schema):
    make_blog(conn, schema, n=2)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    blog = sql.Identifier(schema, "blog")
    for i in range(5):
        conn.execute(sql.SQL("UPDATE {} SET views = %s").format(blog), [i + 1])
    assert queued(conn, schema, Q) == [1] * 6 + [2] * 6
    assert [r["locked_id"] for r in drain(v, batch_size=100)] == [1, 2]
    assert queued(conn, schema, Q) == []


@pytest.mark.parametrize(
    "ddl, values, keycols",
    [
        ("id uuid PRIMARY KEY DEFAULT gen_random_uuid(), body text", "(DEFAULT, 'a'), (DEFAULT, 'b')", "id"),
        ("id text PRIMARY KEY, body text", "('alpha', 'a'), ('beta', 'b')", "id"),
        ("id bigint PRIMARY KEY, body text", "(9000000000, 'a'), (9000000001, 'b')", "id"),
    ],
)
def test_uuid_text_and_bigint_keys(db, conn, schema, ddl, values, keycols):
    t = sql.Identifier(schema, "docs")
    conn.execute(sql.SQL("CREATE TABLE {} (" + ddl + ")").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES " + values).format(t))
    v = pgvz.Vectorize(db.dsn, "docs", schema_name=schema)
    ids = sorted(r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}").format(t)))
    rows = drain(v)
    assert sorted(r["locked_id"] for r in rows) == ids
    conn.execute(sql.SQL("UPDATE {} SET body = 'changed' WHERE id = %s").format(t), [ids[0]])
    (row,) = drain(v)
    assert row["locked_id"] == ids[0] and row["body"] == "changed"
    qtype = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attname = 'id'",
        [f'{schema}.docs_embedding_work_queue'],
    ).fetchone()[0]
    src_type = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attname = 'id'",
        [f"{schema}.docs"],
    ).fetchone()[0]
    assert qtype == src_type


def test_composite_key(db, conn, schema):
    t = sql.Identifier(schema, "lines")
    conn.execute(
        sql.SQL("CREATE TABLE {} (doc int, line int, body text, PRIMARY KEY (doc, line))").format(t)
    )
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 1, 'a'), (1, 2, 'b'), (2, 1, 'c')").format(t))
    v = pgvz.Vectorize(db.dsn, "lines", schema_name=schema, id_column_name=["doc", "line"])
    assert sorted(r["locked_id"] for r in drain(v)) == [(1, 1), (1, 2), (2, 1)]
    conn.execute(sql.SQL("UPDATE {} SET line = 3 WHERE doc = 1 AND line = 2").format(t))
    rows = drain(v)
    assert sorted(r["locked_id"] for r in rows) == [(1, 2), (1, 3)]
    gone = next(r for r in rows if r["locked_id"] == (1, 2))
    assert gone["body"] is None


def test_long_table_name_outside_public_accepts_writes_after_register(db, conn, schema):
    name = "t" * 60
    t = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(t))
    v = pgvz.Vectorize(db.dsn, name, schema_name=schema)
    v.register()
    # the original's trigger names the queue without a schema: this INSERT would fail there
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'x'), (2, 'y')").format(t))
    conn.execute(sql.SQL("UPDATE {} SET body = 'z' WHERE id = 1").format(t))
    assert v.work_queue_table_name == '"' + "t" * 42 + '_embedding_work_queue"'
    assert sorted(r["locked_id"] for r in drain(v)) == [1, 2]


def test_advisory_lock_key_is_vectorizer_id_and_key_hash_not_an_oid(db, conn, schema):
    make_blog(conn, schema, n=1)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    locks = []

    def look(rows, vec):
        with psycopg.connect(db.dsn) as other:
            locks.extend(
                other.execute(
                    "SELECT classid, objid, objsubid FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = %s",
                    [vec.connection.info.backend_pid],
                ).fetchall()
            )

    v.process(look)
    vid, = conn.execute("SELECT id FROM pgvz.vectorizers WHERE name = %s", [v.name]).fetchone()
    key_hash, = conn.execute("SELECT hashtext(ROW(1)::text)").fetchone()
    # two-int4 form: classid = first key, objid = second key, objsubid = 2
    assert locks == [(vid, key_hash & 0xFFFFFFFF, 2)]


def test_errors_for_tables_that_cannot_be_vectorized(db, conn, schema):
    conn.execute(sql.SQL("CREATE TABLE {} (body text)").format(sql.Identifier(schema, "nokey")))
    conn.execute(
        sql.SQL("CREATE VIEW {} AS SELECT 1 AS id").format(sql.Identifier(schema, "aview"))
    )
    with pytest.raises(NotFound, match="column"):
        pgvz.Vectorize(db.dsn, "nokey", schema_name=schema).register()
    with pytest.raises(NoPrimaryKey, match="not a unique NOT NULL key"):
        pgvz.Vectorize(db.dsn, "nokey", schema_name=schema, id_column_name="body").register()
    with pytest.raises(NotATable, match="is a view"):
        pgvz.Vectorize(db.dsn, "aview", schema_name=schema).register()
    with pytest.raises(NotFound, match="does not exist"):
        pgvz.Vectorize(db.dsn, "missing", schema_name=schema).register()
    with pytest.raises(NotFound, match="schema 'nope' does not exist"):
        pgvz.Vectorize(db.dsn, "blog", schema_name="nope").register()
    assert conn.execute(
        "SELECT count(*) FROM pgvz.vectorizers WHERE source_schema = %s", [schema]
    ).fetchone()[0] == 0


def test_leftover_queue_of_the_original_is_reported_not_clobbered(db, conn, schema):
    make_blog(conn, schema, n=1)
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(schema, Q)))
    with pytest.raises(ConfigConflict, match="already exists"):
        pgvz.Vectorize(db.dsn, "blog", schema_name=schema).register()
    # nothing half-installed was left behind
    assert conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
        [f"{schema}.blog"],
    ).fetchone()[0] == 0


def test_dropped_queue_is_rebuilt_by_register(db, conn, schema):
    make_blog(conn, schema, n=3)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, Q)))
    pgvz.Vectorize(db.dsn, "blog", schema_name=schema).register()
    assert queued(conn, schema, Q) == [1, 2, 3]


def test_unregister_removes_everything_but_the_table(db, conn, schema):
    make_blog(conn, schema, n=2)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    v.unregister()
    rels = conn.execute(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = relnamespace "
        "WHERE nspname = %s AND relkind = 'r' ORDER BY 1",
        [schema],
    ).fetchall()
    assert rels == [("blog",)]
    assert Queue.find(conn, v.name) is None
    conn.execute(sql.SQL("INSERT INTO {} (title) VALUES ('still writable')").format(
        sql.Identifier(schema, "blog")))


def test_trigger_function_is_security_definer_with_pinned_search_path(db, conn, schema):
    make_blog(conn, schema, n=0)
    pgvz.Vectorize(db.dsn, "blog", schema_name=schema).register()
    secdef, config, public_exec = conn.execute(
        "SELECT prosecdef, proconfig, has_function_privilege('public', p.oid, 'EXECUTE') "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = pronamespace "
        "WHERE nspname = %s AND proname = 'blog_wq_for_embedding'",
        [schema],
    ).fetchone()
    assert secdef is True
    assert config == ["search_path=pg_catalog, pg_temp"]
    assert public_exec is False


def test_app_role_that_only_writes_the_source_still_queues(db, conn, schema):
    make_blog(conn, schema, n=0)
    pgvz.Vectorize(db.dsn, "blog", schema_name=schema).register()
    role = f"app_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT INSERT, UPDATE, SELECT ON {} TO {}").format(
            sql.Identifier(schema, "blog"), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
            sql.Identifier(schema), sql.Identifier(role)))
        with psycopg.connect(db.dsn, user=role, autocommit=True) as app:
            app.execute(sql.SQL("INSERT INTO {} (title) VALUES ('from app')").format(
                sql.Identifier(schema, "blog")))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, Q)))
        assert queued(conn, schema, Q) == [1]
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_max_attempts_of_a_later_registration_applies(db, conn, schema):
    make_blog(conn, schema, n=1)
    pgvz.Vectorize(db.dsn, "blog", schema_name=schema, max_attempts=5).register()
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema, max_attempts=1)
    with pytest.raises(CallbackFailed):
        v.process(lambda rows, _: 1 / 0)
    assert queued(conn, schema, Q) == []
    assert [f["id"] for f in v.failed()] == [1]
    assert "ZeroDivisionError" in v.failed()[0]["last_error"]


def test_a_layout_from_a_newer_pgvz_nb_is_refused_not_misread(db, conn, schema):
    from pgvz_nb.queue import LAYOUT_VERSION

    make_blog(conn, schema, n=1)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    name = conn.execute("SELECT name FROM pgvz.vectorizers WHERE source_schema = %s", [schema]).fetchone()[0]
    assert conn.execute("SELECT config->'layout' FROM pgvz.vectorizers WHERE name = %s",
                        [name]).fetchone()[0] == LAYOUT_VERSION
    conn.execute("UPDATE pgvz.vectorizers SET config = jsonb_set(config, '{layout}', %s::jsonb) "
                 "WHERE name = %s", [str(LAYOUT_VERSION + 1), name])
    with pytest.raises(ConfigConflict, match="newer pgvz_nb"):
        pgvz.Vectorize(db.dsn, "blog", schema_name=schema).process(lambda rows, _: None)
    conn.execute("UPDATE pgvz.vectorizers SET config = config - 'layout' WHERE name = %s", [name])
    # a row without a layout is the first layout; the refused process() took nothing off the queue
    assert pgvz.Vectorize(db.dsn, "blog", schema_name=schema).process(lambda rows, _: None) == 1


def test_a_catalog_from_before_the_in_flight_table_works_and_gets_it_at_the_next_register(db, conn, schema):
    make_blog(conn, schema, n=3)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    conn.execute("DROP TABLE pgvz.in_flight")  # as a catalog made by the previous pgvz_nb
    try:
        old = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
        # autoregister=False: as a worker that opens the vectorizer without installing anything
        assert old.process(lambda rows, _: None, batch_size=1, autoregister=False) == 1
        old.close()
        assert conn.execute("SELECT to_regclass('pgvz.in_flight')").fetchone()[0] is None
        pgvz.Vectorize(db.dsn, "blog", schema_name=schema).register()  # idempotent: upgrades the catalog
    finally:
        conn.execute(sql.SQL("{}").format(pgvz.sql.create_in_flight()))
    assert conn.execute("SELECT to_regclass('pgvz.in_flight')").fetchone()[0] == "pgvz.in_flight"
    assert v.process(lambda rows, _: None, batch_size=5) == 2
    v.close()


def test_in_flight_key_texts_keep_awkward_keys_apart(db, conn):
    """Keys travel to pgvz.in_flight as one string (keys joined by chr(30), columns by
    chr(31)); separators inside text keys are escaped, so no two keys share a text and no
    key splits in two on the server."""
    from pgvz_nb.queue import ClaimedRow

    keys = [("a\x1fb", "c"), ("a", "b\x1fc"), ("x\x1ey", "z"), ("x\\", "\x1ey"), (b"\x00\x1e", 5)]
    rows = [ClaimedRow(k, 0, None, {}, False) for k in keys]
    texts = conn.execute("SELECT string_to_array(%s, chr(30))", [_key_texts(rows)]).fetchone()[0]
    assert len(texts) == len(keys) == len(set(texts))
    ints = [ClaimedRow((i,), 0, None, {}, False) for i in (3, 10, -2)]
    assert conn.execute("SELECT string_to_array(%s, chr(30))", [_key_texts(ints)]).fetchone()[0] == ["3", "10", "-2"]


def test_create_on_an_installed_catalog_takes_no_lock_on_it(db, conn, schema):
    """create() used to ALTER the catalog every time (ADD COLUMN IF NOT EXISTS takes an
    exclusive lock even with nothing to add) and then lock pgvz.in_flight, while a syncing
    worker holds in_flight and reads the catalog through its foreign key: a deadlock that
    killed the sync when a notebook ran create() beside a worker."""
    make_blog(conn, schema, n=1)
    pgvz.Vectorize(db.dsn, "blog", schema_name=schema).register()
    with db.connect() as c:
        Queue.ensure_catalog(c)  # inside create()'s transaction, after the install lock
        held = c.execute(
            "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid = pg_backend_pid() AND c.relname IN ('vectorizers', 'in_flight') "
            "AND l.mode NOT IN ('AccessShareLock')").fetchall()
        c.rollback()
    assert held == []



def test_an_install_without_in_flight_row_security_gets_it_at_the_next_create(db, conn, schema):
    """Installs made before pgvz.in_flight had row security get it from the next create()
    or register() run by the table's owner (a worker role's register() leaves it alone)."""
    make_blog(conn, schema, n=1)
    pgvz.Vectorize(db.dsn, "blog", schema_name=schema).register()

    def secured():
        return conn.execute(
            "SELECT c.relrowsecurity, count(p.polname) FROM pg_class c LEFT JOIN pg_policy p "
            "ON p.polrelid = c.oid WHERE c.oid = 'pgvz.in_flight'::regclass GROUP BY 1").fetchone()

    assert secured() == (True, 1)
    conn.execute("DROP POLICY workers_see_their_queues ON pgvz.in_flight")
    conn.execute("ALTER TABLE pgvz.in_flight DISABLE ROW LEVEL SECURITY")
    conn.commit()
    assert secured() == (False, 0)
    pgvz.Vectorize(db.dsn, "blog", schema_name=schema).register()
    assert secured() == (True, 1)

def test_a_deadlock_is_reported_as_a_conflict_to_retry_not_a_failed_connection():
    from psycopg import errors as pg_errors

    from pgvz_nb.errors import translate

    msg = str(translate(pg_errors.DeadlockDetected("deadlock detected"), "syncing 'x'"))
    assert "deadlock detected" in msg and "run it again" in msg and "connection failed" not in msg


def test_one_notify_per_writing_transaction_and_again_in_the_next(db, conn, schema):
    """The trigger notifies once per transaction (a transaction-local flag spares the
    repeated pg_notify calls); the flag must not outlive the transaction, nor a savepoint
    rolled back together with its NOTIFY."""
    make_blog(conn, schema, n=0)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    vid = str(v._queue.id)
    ins = sql.SQL("INSERT INTO {} (title, contents) VALUES ('t', 'b')").format(sql.Identifier(schema, "blog"))
    with psycopg.connect(db.dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgvz_nb")
        # pgvz.notify = on: notify even where prepared transactions are allowed (see the 2PC test)
        with psycopg.connect(db.dsn, options="-c pgvz.notify=on") as w:
            for _ in range(3):
                w.execute(ins)
            flag = w.execute("SELECT current_setting(%s, true)", [f"pgvz.notified_{vid}"]).fetchone()[0]
            w.commit()
            after = w.execute("SELECT current_setting(%s, true)", [f"pgvz.notified_{vid}"]).fetchone()[0]
            w.rollback()
            got = [n.payload for n in listener.notifies(timeout=1, stop_after=5)]
            assert flag == "y" and after in (None, "") and got == [vid]
            w.execute(ins)  # the next transaction notifies again
            w.commit()
            assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == [vid]
            with w.transaction():  # a savepoint rolled back takes its NOTIFY and its flag
                with w.transaction(force_rollback=True):
                    w.execute(ins)
                w.execute(ins)
            assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == [vid]
    v.close()


def test_register_gives_an_installed_trigger_the_current_body(db, conn, schema):
    """A trigger written by an older pgvz_nb (here: one that notified on every statement)
    gets the current body at the next register(); the queue keeps working."""
    make_blog(conn, schema, n=1)
    v = pgvz.Vectorize(db.dsn, "blog", schema_name=schema)
    v.register()
    q = v._queue
    src = "SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname = %s"
    current = conn.execute(src, list(q.function)).fetchone()[0]
    old = current.replace("IF queued > 0 AND current_setting", "IF queued > 0 OR current_setting")
    assert old != current
    conn.execute(pgvz.sql.create_trigger_function(q.function, old))
    pgvz.Vectorize(db.dsn, "blog", schema_name=schema).register()
    assert conn.execute(src, list(q.function)).fetchone()[0] == current
    conn.execute(sql.SQL("INSERT INTO {} (title) VALUES ('new')").format(sql.Identifier(schema, "blog")))
    assert v.process(lambda rows, _: None, batch_size=10) == 2
    v.close()
