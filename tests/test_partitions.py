"""Partitioned and inherited source tables: a statement aimed at a partition fires only the
partition's own statement triggers, so every descendant carries the vectorizer's triggers."""

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
