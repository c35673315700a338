"""The source table's shape changing under a vectorizer: partitions and inheritance children
(a statement aimed at a partition fires only the partition's own statement triggers, so every
descendant carries the vectorizer's triggers), partitions created, attached, detached and
dropped later, renamed tables and columns."""

from __future__ import annotations

from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.embedders import HashingEmbedder


def make_events(conn, schema):
    s = sql.Identifier
    conn.execute(sql.SQL("CREATE TABLE {} (id int, at date NOT NULL, body text, PRIMARY KEY (id, at)) "
                         "PARTITION BY RANGE (at)").format(s(schema, "ev")))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
                 .format(s(schema, "ev_2025"), s(schema, "ev")))
    # a sub-partitioned year, the partitions in another schema
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2026-01-01') TO ('2027-01-01') "
                         "PARTITION BY RANGE (at)").format(s(schema, "ev_2026"), s(schema, "ev")))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2026-01-01') TO ('2026-07-01')")
                 .format(s(schema, "ev_2026h1"), s(schema, "ev_2026")))
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2026-07-01') TO ('2027-01-01')")
                 .format(s(schema, "ev_2026h2"), s(schema, "ev_2026")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, '2025-05-01', 'one'), (2, '2026-02-01', 'two'), "
                         "(3, '2026-08-01', 'three')").format(s(schema, "ev")))


def embedded(conn, schema):
    return sorted(conn.execute(sql.SQL("SELECT ev_id, ev_at::text, contents FROM {}").format(
        sql.Identifier(schema, "ev_embedding"))).fetchall())


def source(conn, schema):
    return sorted(conn.execute(sql.SQL("SELECT id, at::text, body FROM {}").format(
        sql.Identifier(schema, "ev"))).fetchall())


def test_writes_aimed_at_partitions_reach_the_embeddings(db, conn, schema):
    make_events(conn, schema)
    v = pgvz.Vectorizer(db, f"{schema}.ev", template="{body}", embedder=HashingEmbedder(8)).create()
    v.sync(progress=False)
    assert embedded(conn, schema) == source(conn, schema)
    s = sql.Identifier
    conn.execute(sql.SQL("INSERT INTO {} VALUES (4, '2025-09-01', 'into a leaf')").format(s(schema, "ev_2025")))
    conn.execute(sql.SQL("UPDATE {} SET body = 'updated in a leaf' WHERE id = 1").format(s(schema, "ev_2025")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (5, '2026-03-01', 'into a mid level')").format(s(schema, "ev_2026")))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(s(schema, "ev_2026h1")))
    conn.execute(sql.SQL("TRUNCATE {}").format(s(schema, "ev_2026h2")))
    conn.commit()
    assert sorted(v.queue()["id"]) == [1, 2, 3, 4, 5]
    v.sync(progress=False)
    assert embedded(conn, schema) == source(conn, schema) == [
        (1, "2025-05-01", "updated in a leaf"), (4, "2025-09-01", "into a leaf"), (5, "2026-03-01", "into a mid level")]
    # through the parent, as before: each change queued once, not again by a partition's trigger
    conn.execute(sql.SQL("UPDATE {} SET body = 'via the parent' WHERE id IN (1, 5)").format(s(schema, "ev")))
    conn.commit()
    assert sorted(v.queue()["id"]) == [1, 5]
    v.sync(progress=False)
    assert embedded(conn, schema) == source(conn, schema)
    # drop() takes the triggers off every partition too
    v.drop()
    left = conn.execute(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal",
        [schema]).fetchone()[0]
    assert left == 0


def test_a_partition_added_later_is_covered_by_the_next_create(db, conn, schema):
    """Without the event trigger (it needs a superuser), a partition created or attached
    after create() has no triggers; running create() again installs them and queues its
    rows, and status() says which partitions are not covered until then."""
    make_events(conn, schema)
    v = pgvz.Vectorizer(db, f"{schema}.ev", template="{body}", embedder=HashingEmbedder(8)).create()
    v.sync(progress=False)
    s = sql.Identifier
    conn.execute("SET pgvz.partition_event_trigger = 'off'")  # as on a server where it is missing
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(s(schema, "ev_2024"), s(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (9, '2024-03-01', 'attached with rows')").format(s(schema, "ev_2024")))
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')")
                 .format(s(schema, "ev"), s(schema, "ev_2024")))
    conn.execute("RESET pgvz.partition_event_trigger")
    conn.commit()
    assert v.status()["uncovered_partitions"][0] == f"{schema}.ev_2024"
    try:
        from pgvz_nb.widgets import SyncPanel
    except ImportError:  # the notebook extra is missing
        panel = None
    else:
        panel = SyncPanel(v, refresh=0)
        assert "not queued" in panel.status_html.value and f"{schema}.ev_2024" in panel.status_html.value
    pgvz.Vectorizer(db, f"{schema}.ev", template="{body}", embedder=HashingEmbedder(8)).create()
    assert v.status()["uncovered_partitions"][0] == ""
    if panel is not None:
        panel.update()
        assert "not queued" not in panel.status_html.value
        panel.close()
    conn.execute(sql.SQL("INSERT INTO {} VALUES (10, '2024-04-01', 'into the new leaf')").format(s(schema, "ev_2024")))
    conn.commit()
    v.sync(progress=False)
    assert embedded(conn, schema) == source(conn, schema) and (9, "2024-03-01", "attached with rows") in source(conn, schema)


def test_partitions_created_attached_or_detached_later_are_followed_at_once(db, conn, schema):
    """The event trigger (installed when a superuser runs create(), as on the embedded
    server) covers a partition in the same transaction that creates or attaches it, and
    takes the rows of a detached one out of the embeddings."""
    make_events(conn, schema)
    v = pgvz.Vectorizer(db, f"{schema}.ev", template="{body}", embedder=HashingEmbedder(8)).create()
    v.sync(progress=False)
    s = sql.Identifier
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')")
                 .format(s(schema, "ev_2027"), s(schema, "ev")))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(s(schema, "ev_2024"), s(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (9, '2024-03-01', 'attached with rows')").format(s(schema, "ev_2024")))
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')")
                 .format(s(schema, "ev"), s(schema, "ev_2024")))
    conn.commit()
    assert v.status()["uncovered_partitions"][0] == ""
    conn.execute(sql.SQL("INSERT INTO {} VALUES (7, '2027-05-01', 'into the new leaf')").format(s(schema, "ev_2027")))
    conn.execute(sql.SQL("UPDATE {} SET body = 'changed in the attached leaf' WHERE id = 9").format(s(schema, "ev_2024")))
    conn.commit()
    v.sync(progress=False)
    assert embedded(conn, schema) == source(conn, schema)
    assert (7, "2027-05-01", "into the new leaf") in source(conn, schema)
    assert (9, "2024-03-01", "changed in the attached leaf") in source(conn, schema)
    # detached: its rows leave the source, so they leave the embeddings, and writes to it
    # are no longer queued
    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(s(schema, "ev"), s(schema, "ev_2025")))
    conn.commit()
    v.sync(progress=False)
    assert embedded(conn, schema) == source(conn, schema) and all(r[1] >= "2026" or r[0] == 9
                                                                   for r in embedded(conn, schema))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (8, '2025-10-01', 'detached')").format(s(schema, "ev_2025")))
    conn.commit()
    assert v.status()["pending"][0] == 0
    v.close()


def test_a_dropped_partition_takes_its_embeddings_with_it(db, conn, schema):
    """DROP TABLE of a partition removes rows no trigger sees go (the time-partitioned
    retention pattern): the drop event trigger queues the destination keys left without a
    source row, so the next sync deletes their embeddings."""
    make_events(conn, schema)
    v = pgvz.Vectorizer(db, f"{schema}.ev", template="{body}", embedder=HashingEmbedder(8)).create()
    v.sync(progress=False)
    assert len(embedded(conn, schema)) == 3
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, "ev_2026")))  # with its two leaves
    conn.commit()
    assert sorted(v.queue()["id"]) == [2, 3]
    v.sync(progress=False)
    assert embedded(conn, schema) == source(conn, schema) == [(1, "2025-05-01", "one")]
    v.close()


def test_reconcile_queues_what_bypassed_the_triggers(db, conn, schema):
    """Writes made with triggers off (session_replication_role = replica, as a logical
    replication subscriber or pg_restore --disable-triggers makes them) never reach the
    queue; reconcile() finds both kinds of drift."""
    make_events(conn, schema)
    v = pgvz.Vectorizer(db, f"{schema}.ev", template="{body}", embedder=HashingEmbedder(8)).create()
    v.sync(progress=False)
    s = sql.Identifier
    conn.execute("SET session_replication_role = replica")
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 1").format(s(schema, "ev")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (6, '2026-09-09', 'unseen')").format(s(schema, "ev")))
    conn.execute("RESET session_replication_role")
    conn.commit()
    assert v.status()["pending"][0] == 0
    assert v.reconcile() == {"gone": 1, "missing": 1}
    assert v.reconcile() == {"gone": 0, "missing": 0}  # queued already: not twice
    v.sync(progress=False)
    assert embedded(conn, schema) == source(conn, schema) and len(source(conn, schema)) == 3
    assert v.reconcile() == {"gone": 0, "missing": 0}
    v.close()


def make_posts(conn, schema):
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, title text, category text, body text)")
                 .format(sql.Identifier(schema, "posts")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a', 'x', 'one'), (2, 'b', 'y', 'two')")
                 .format(sql.Identifier(schema, "posts")))


def test_a_renamed_or_dropped_watched_column_never_fails_the_applications_updates(db, conn, schema):
    """The trigger reads watched columns by name: renamed, every UPDATE of the table used to
    fail inside it ("column t.category does not exist"). Now each UPDATE queues every key
    it touched, and the DDL warns."""
    make_posts(conn, schema)
    v = pgvz.Vectorizer(db, f"{schema}.posts", template="{title}: {body}", metadata=["category"],
                        embedder=HashingEmbedder(8)).create()
    v.sync(progress=False)
    s = sql.Identifier
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN category TO topic").format(s(schema, "posts")))
    assert any("watches category" in m and "every UPDATE" in m for m in notices), notices
    conn.execute(sql.SQL("UPDATE {} SET topic = 'z' WHERE id = 1").format(s(schema, "posts")))
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN topic").format(s(schema, "posts")))
    conn.execute(sql.SQL("UPDATE {} SET body = 'two, changed' WHERE id = 2").format(s(schema, "posts")))
    conn.commit()
    assert sorted(v.queue()["id"]) == [1, 2]


def test_renaming_or_dropping_a_key_column_is_refused_with_what_to_do(db, conn, schema):
    import psycopg
    import pytest

    make_posts(conn, schema)
    v = pgvz.Vectorizer(db, f"{schema}.posts", template="{title}: {body}", embedder=HashingEmbedder(8)).create()
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as err:
        conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN id TO post_id").format(sql.Identifier(schema, "posts")))
    assert "is the key of vectorizer" in str(err.value) and "drop the vectorizer first" in err.value.diag.message_hint
    conn.rollback()
    # the table is as it was, and writes still work
    conn.execute(sql.SQL("INSERT INTO {} VALUES (3, 'c', 'z', 'three')").format(sql.Identifier(schema, "posts")))
    conn.commit()
    assert 3 in list(v.queue()["id"])
    v.drop(keep_destination=True)
    conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN id TO post_id").format(sql.Identifier(schema, "posts")))
    conn.commit()


def test_a_renamed_or_moved_source_is_followed(db, conn, schema):
    """ALTER TABLE ... RENAME / SET SCHEMA: the triggers go with the table, and the catalog
    follows it, so the vectorizer (reopened) keeps syncing it."""
    make_posts(conn, schema)
    v = pgvz.Vectorizer(db, f"{schema}.posts", template="{title}: {body}", embedder=HashingEmbedder(8)).create()
    v.sync(progress=False)
    s = sql.Identifier
    other = schema + "_moved"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(s(other)))
    try:
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO articles").format(s(schema, "posts")))
        conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(s(schema, "articles"), s(other)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (3, 'c', 'z', 'three')").format(s(other, "articles")))
        conn.commit()
        import pytest

        with pytest.raises(pgvz.PgvzError, match="reopen the vectorizer"):
            v.status()  # this object still names the old table
        v.close()
        again = pgvz.Vectorizer.open(db, v.name, embedder=HashingEmbedder(8))
        assert again.source == (other, "articles")
        assert again.sync(progress=False).processed == 1
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(s(schema, "posts_embedding"))).fetchone()[0] == 3
        again.drop()
    finally:
        conn.rollback()
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(s(other)))
        conn.commit()


def test_a_key_column_made_bigint_keeps_writes_and_syncs_working(db, conn, schema):
    """int -> bigint, the migration every growing table gets: the queue's key columns used
    to stay int, so the first id past 2^31 failed the application's INSERT inside the
    trigger ("integer out of range")."""
    s = sql.Identifier
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(s(schema, "posts")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'one')").format(s(schema, "posts")))
    v = pgvz.Vectorizer(db, f"{schema}.posts", template="{body}", embedder=HashingEmbedder(8)).create()
    v.sync(progress=False)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id TYPE bigint").format(s(schema, "posts")))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (5000000000, 'past 2^31')").format(s(schema, "posts")))
    conn.commit()
    v.close()
    v = pgvz.Vectorizer.open(db, v.name, embedder=HashingEmbedder(8))
    assert v.sync(progress=False).processed == 1
    assert sorted(r[0] for r in conn.execute(sql.SQL("SELECT posts_id FROM {}").format(
        s(schema, "posts_embedding")))) == [1, 5000000000]
    def key_type(rel, column):
        return conn.execute(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s",
            [*rel, column]).fetchone()[0]

    assert [key_type(v._queue.queue, "id"), key_type(v._queue.inbox, "id"), key_type(v._queue.failed, "id"),
            key_type((schema, "posts_embedding"), "posts_id")] == ["bigint", "bigint[]", "bigint", "bigint"]
    v.close()


def test_the_tables_owner_without_access_to_pgvz_is_guarded_too(db, conn, schema):
    """The event trigger runs as the superuser who installed it (SECURITY DEFINER), so a
    role that owns the source and cannot even see schema pgvz (an application's migration
    role) gets the same guards: its int -> bigint is followed (before: not followed, and the
    first id past 2^31 failed the INSERT), its key rename is refused (before: it went
    through, and then every INSERT failed), its rename of the table is followed and its new
    partition covered. A key type the vectorizer's tables cannot follow (not a built-in
    type: a domain's CHECK would run as that superuser) is refused with what to do."""
    import uuid

    import psycopg
    import pytest
    from psycopg.conninfo import make_conninfo

    role = f"owner_{uuid.uuid4().hex[:6]}"
    s = sql.Identifier
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(s(role)))
    try:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(s(schema, "posts")))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'one')").format(s(schema, "posts")))
        v = pgvz.Vectorizer(db, f"{schema}.posts", template="{body}", embedder=HashingEmbedder(8)).create()
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(s(schema, "posts"), s(role)))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(s(schema), s(role)))
        conn.execute(sql.SQL("CREATE DOMAIN {} AS bigint CHECK (VALUE > 0)").format(s(schema, "pos")))
        conn.commit()
        assert not conn.execute("SELECT has_schema_privilege(%s, 'pgvz', 'USAGE')", [role]).fetchone()[0]
        with psycopg.connect(make_conninfo(db.dsn, user=role), autocommit=True) as c:
            with pytest.raises(psycopg.errors.DependentObjectsStillExist) as err:
                c.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN id TO post_id").format(s(schema, "posts")))
            assert "is the key of vectorizer" in str(err.value) and err.value.diag.message_hint
            with pytest.raises(psycopg.errors.FeatureNotSupported) as err:
                c.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id TYPE {}").format(s(schema, "posts"),
                                                                                  s(schema, "pos")))
            assert "not a built-in type" in str(err.value) and "drop the vectorizer first" in err.value.diag.message_hint
            c.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id TYPE bigint").format(s(schema, "posts")))
            c.execute(sql.SQL("INSERT INTO {} VALUES (3000000000, 'big')").format(s(schema, "posts")))
            c.execute(sql.SQL("ALTER TABLE {} RENAME TO articles").format(s(schema, "posts")))
        for table, column in ((v._queue.queue, "id"), (v._queue.failed, "id"), (v.destination, "posts_id")):
            assert conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
                "AND attname = %s", [*table, column]).fetchone()[0] == "bigint"
        v = pgvz.Vectorizer.open(db, v.name, embedder=HashingEmbedder(8))
        assert v.source == (schema, "articles")
        v.sync(progress=False)
        assert sorted(conn.execute(sql.SQL("SELECT posts_id, contents FROM {}").format(
            s(*v.destination))).fetchall()) == [(1, "one"), (3000000000, "big")]
        v.drop()
    finally:
        conn.rollback()
        conn.execute(sql.SQL("DROP OWNED BY {}").format(s(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(s(role)))
        conn.commit()


def test_ddl_keeps_working_when_the_catalog_is_gone(db, conn):
    """The event triggers outlive a catalog dropped by hand (they live in schema pgvz with
    it): they must then do nothing, not fail every CREATE TABLE in the database."""
    from pgvz_nb.queue import Queue

    with db.connect() as c:
        Queue.ensure_catalog(c)
        c.commit()
    with db.connect() as c:  # one transaction, rolled back: the catalog comes back
        c.execute("ALTER TABLE pgvz.vectorizers RENAME TO vectorizers_away")
        c.execute("CREATE TABLE public.pgvz_ddl_probe (id int)")
        c.execute("ALTER TABLE public.pgvz_ddl_probe ADD COLUMN body text")
        c.execute("DROP TABLE public.pgvz_ddl_probe")
        c.rollback()
    assert conn.execute("SELECT to_regclass('pgvz.vectorizers') IS NOT NULL").fetchone()[0]
