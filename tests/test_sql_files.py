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
IDS = [function[1] for function, _ in FUNCTIONS]


def file_text(function) -> str:
    return (files("pgvz_nb") / "plpgsql" / f"{function[1]}.sql").read_text(encoding="utf-8")


def flat(text: str) -> str:
    return " ".join(text.split())


def prosrc_and_xmin(conn, function):
    return conn.execute(
        "SELECT p.prosrc, p.xmin::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND p.proname = %s AND p.pronargs = 0", list(function)).fetchone()


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
    assert shipped == {f"{name}.sql" for name in IDS}


@pytest.mark.parametrize(("function", "make_body"), FUNCTIONS, ids=IDS)
def test_file_starts_with_its_version_and_is_the_body_unchanged(function, make_body):
    text = file_text(function)
    assert text.split("\n", 1)[0] == f"-- pgvz_nb event function pgvz.{function[1]}, version {q.PLPGSQL_VERSIONS[function]}"
    assert isinstance(make_body(), q.PlpgsqlFile)
    assert q.stored_text(make_body(), None) == text  # no %-unescaping of file text


def test_a_file_of_another_version_is_refused(monkeypatch):
    version = q.PLPGSQL_VERSIONS[q.PARTITION_FUNCTION]
    monkeypatch.setitem(q.PLPGSQL_VERSIONS, q.PARTITION_FUNCTION, version + 1)
    with pytest.raises(RuntimeError, match=rf"follow_ddl\.sql starts .*version {version}'.*version {version + 1}'"):
        q.plpgsql_file.__wrapped__(q.PARTITION_FUNCTION)  # past the cache, which holds the good one


def test_copies_of_sql_py_in_the_files_match_it():
    """The files inline what sql.py still composes elsewhere; they must not drift apart."""
    follow, forget = file_text(q.PARTITION_FUNCTION), file_text(q.DROP_FUNCTION)
    code = flat(q.foreign_code(sql.SQL("c.oid"), sql.SQL("array_remove(ARRAY[v.config->>'owner'], NULL)::name[]"))
                .as_string(None))
    assert flat(follow).count(code) == 2 and flat(forget).count(code) == 1
    for ddl in q._TRIGGER_DDL.values():
        template = sql.SQL(ddl).format(name=sql.SQL("%I"), src=sql.SQL("%I.%I"), fn=sql.SQL("%I.%I"))
        assert sql.Literal(template.as_string(None)).as_string(None) in follow
    for function in q.EVENT_TRIGGERS:
        assert ".".join(q.CATALOG) in file_text(function[0])
    assert f"'{q.PARTITION_EVENT_TRIGGER}'" in follow


@pytest.mark.parametrize(("function", "make_body"), FUNCTIONS, ids=IDS)
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
        before = [prosrc_and_xmin(c, function) for function, _ in FUNCTIONS]
        triggers = c.execute("SELECT evtname, xmin::text FROM pg_event_trigger ORDER BY 1").fetchall()
        Queue.ensure_catalog(c)
        c.commit()
        assert [prosrc_and_xmin(c, function) for function, _ in FUNCTIONS] == before
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
