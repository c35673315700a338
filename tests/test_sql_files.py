"""The event-trigger functions' bodies in pgvz_nb/plpgsql/*.sql: found as package resources,
headed by their version, installed so that pg_proc.prosrc is the file byte for byte (every
``%`` and ``%%`` as written), and not installed again when already in; and the SQL of
sample.py and demo.py, now in sql.py, against hostile names."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest
from psycopg import sql

from pgvz_nb import sql as q
from pgvz_nb.queue import Queue
from pgvz_nb.sample import BLOG_POSTS, load_blog, load_python_docs

FUNCTIONS = [(function, make_body) for function, make_body, *_ in q.EVENT_TRIGGERS]
HELPERS = [(h[0], lambda f=h[0]: q.plpgsql_file(f)) for h in q.HELPER_FUNCTIONS]
IDS = [function[1] for function, _ in FUNCTIONS]
ALL = FUNCTIONS + HELPERS
ALL_IDS = [function[1] for function, _ in ALL]


def file_text(function) -> str:
    return (files("pgvz_nb") / "plpgsql" / f"{function[1]}.sql").read_text(encoding="utf-8")


def flat(text: str) -> str:
    return " ".join(text.split())


def prosrc_and_xmin(conn, function):
    return conn.execute(
        "SELECT p.prosrc, p.xmin::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND p.proname = %s", list(function)).fetchone()


@pytest.fixture
def installed(db):
    with db.connect() as c:
        Queue.ensure_catalog(c)
        c.commit()
        if not c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            pytest.skip("event triggers need a superuser")


def test_every_event_function_has_its_file_and_no_file_is_stray():
    folder = files("pgvz_nb") / "plpgsql"
    shipped = {f.name for f in folder.iterdir() if f.name.endswith(".sql")}
    assert shipped == {f"{name}.sql" for name in ALL_IDS}


@pytest.mark.parametrize(("function", "make_body"), ALL, ids=ALL_IDS)
def test_file_starts_with_its_version_and_is_the_body_unchanged(function, make_body):
    text = file_text(function)
    assert text.split("\n", 1)[0] == f"-- pgvz_nb function pgvz.{function[1]}, version {q.PLPGSQL_VERSIONS[function]}"
    assert isinstance(make_body(), q.PlpgsqlFile)
    assert q.stored_text(make_body(), None) == text  # no %-unescaping of file text


def test_a_file_of_another_version_is_refused(monkeypatch):
    version = q.PLPGSQL_VERSIONS[q.PARTITION_FUNCTION]
    monkeypatch.setitem(q.PLPGSQL_VERSIONS, q.PARTITION_FUNCTION, version + 1)
    with pytest.raises(RuntimeError, match=rf"follow_ddl\.sql starts .*version {version}'.*version {version + 1}'"):
        q.plpgsql_file.__wrapped__(q.PARTITION_FUNCTION)  # past the cache, which holds the good one


def test_copies_of_sql_py_in_the_files_match_it():
    """follow_ddl.sql inlines the trigger DDL sql.py composes elsewhere; they must not drift
    apart. The check of a vectorizer's own tables is in one place: pgvz.unsafe_tables, whose
    pgvz.foreign_code is the text sql.relation_trust composes into its query."""
    follow, forget = file_text(q.PARTITION_FUNCTION), file_text(q.DROP_FUNCTION)
    for ddl in q._TRIGGER_DDL.values():
        template = sql.SQL(ddl).format(name=sql.SQL("%I"), src=sql.SQL("%I.%I"), fn=sql.SQL("%I.%I"))
        assert sql.Literal(template.as_string(None)).as_string(None) in follow
    for function in q.EVENT_TRIGGERS:
        assert ".".join(q.CATALOG) in file_text(function[0])
    assert f"'{q.PARTITION_EVENT_TRIGGER}'" in follow
    call = "pgvz.unsafe_tables(v.queue_schema, v.queue_table, v.config)"
    assert follow.count(call) == 2 and forget.count(call) == 1 and "pg_depend" not in follow + forget
    code = file_text(q.FOREIGN_CODE_FUNCTION)
    assert flat(code.split("\nSELECT", 1)[1]) in flat(q.relation_trust().as_string(None))
    assert "pgvz.foreign_code(" in file_text(q.UNSAFE_TABLES_FUNCTION)


def test_a_helper_dropped_by_hand_never_fails_the_applications_ddl(db, conn, schema, installed):
    """The event functions call pgvz.unsafe_tables per vectorizer, inside the block that turns
    any failure into a WARNING; the next create() puts the helper back."""
    import pgvz_nb as pgvz
    from pgvz_nb.embedders import HashingEmbedder

    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(schema, "doc")))
    pgvz.Vectorizer(db, f"{schema}.doc", chunk_column="body", embedder=HashingEmbedder(8)).create()
    conn.execute("DROP FUNCTION pgvz.unsafe_tables(text, text, jsonb)")
    try:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(sql.Identifier(schema, "x")))
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO doc2").format(sql.Identifier(schema, "doc")))
        assert conn.execute("SELECT to_regclass(%s)", [f"{schema}.doc2"]).fetchone()[0] is not None
    finally:
        with db.connect() as c:
            Queue.ensure_catalog(c)
            c.commit()
    assert conn.execute("SELECT to_regprocedure('pgvz.unsafe_tables(text, text, jsonb)')").fetchone()[0] is not None


@pytest.mark.parametrize(("function", "make_body"), ALL, ids=ALL_IDS)
def test_installed_body_is_the_file(db, installed, function, make_body):
    with db.connect() as c:
        assert prosrc_and_xmin(c, function)[0] == file_text(function)


def test_percent_signs_reach_prosrc_as_written(db, installed, schema):
    text = file_text(q.PARTITION_FUNCTION)
    like = re.search(r"LIKE '[^']*%[^']*'", text).group(0)
    assert like == r"LIKE 'pgvz\_nb:%'"
    with db.connect() as c:
        assert like in prosrc_and_xmin(c, q.PARTITION_FUNCTION)[0]
        # a body with both: a RAISE format's %% (a literal %) and % (an argument)
        body = q.PlpgsqlFile("-- probe\nBEGIN\n  RAISE NOTICE '100%% of %', 'x'; -- %s %(x)s %%%\nEND\n")
        probe = (schema, "pct_probe")
        c.execute(q.create_event_function(probe, q.stored_text(body, c)))
        assert prosrc_and_xmin(c, probe)[0] == body.as_string(None)
        c.rollback()


def test_a_second_install_creates_nothing(db, installed):
    with db.connect() as c:
        before = [prosrc_and_xmin(c, function) for function, _ in ALL]
        triggers = c.execute("SELECT evtname, xmin::text FROM pg_event_trigger ORDER BY 1").fetchall()
        Queue.ensure_catalog(c)
        c.commit()
        assert [prosrc_and_xmin(c, function) for function, _ in ALL] == before
        assert c.execute("SELECT evtname, xmin::text FROM pg_event_trigger ORDER BY 1").fetchall() == triggers


def test_composed_bodies_keep_their_sql_text_percent_signs():
    """Only the % a Name, PctLiteral or UserSQL doubled are undone, not a %% the text holds."""
    body = sql.SQL("RAISE '%% {} {}';").format(q.Name("a%"), q.PctLiteral("b%"))
    assert q.stored_text(body, None) == "RAISE '%% \"a%\" 'b%'';"


HOSTILE = 'Blog "%s" %(x)s ü'


def test_sample_tables_with_hostile_names(db, conn, schema):
    other = f"{schema} %s"
    try:
        assert load_blog(db, HOSTILE, schema=other) == len(BLOG_POSTS)
        assert load_blog(db, HOSTILE, schema=other, replace=True) == len(BLOG_POSTS)
        assert load_python_docs(db, HOSTILE + " docs", schema=other, limit=3) == 3
        assert load_python_docs(db, HOSTILE + " docs", schema=other, limit=3) == 3
        count = sql.SQL("SELECT count(*) FROM {}")
        assert conn.execute(count.format(sql.Identifier(other, HOSTILE))).fetchone()[0] == len(BLOG_POSTS)
        assert conn.execute(count.format(sql.Identifier(other, HOSTILE + " docs"))).fetchone()[0] == 3
    finally:
        conn.execute(q.drop_schema(other))
