"""Fixtures: a real PostgreSQL with pgvector (``--dsn`` / PGVZ_DSN, else the embedded server)
and a fresh schema per test, dropped afterwards with everything registered in it."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from psycopg import sql

import pgvz_nb as pgvz
from pgvz_nb.queue import Queue
from pgvz_nb.sql import Name


def pytest_addoption(parser):
    parser.addoption("--dsn", default=None, help="PostgreSQL DSN (default: PGVZ_DSN, else embedded)")


@pytest.fixture(scope="session")
def db(request) -> pgvz.Database:
    return pgvz.connect(request.config.getoption("--dsn") or os.environ.get("PGVZ_DSN"))


@pytest.fixture
def conn(db):
    with db.connect(autocommit=True) as c:
        yield c


def drop_schema(db: pgvz.Database, schema: str) -> None:
    with db.connect() as c:
        for queue in Queue.list_all(c):
            if schema in (queue.source[0], queue.queue[0]):
                c.rollback()
                queue.drop(c)
        c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Name(schema)))


@pytest.fixture
def schema(db):
    name = f"t_{uuid.uuid4().hex[:10]}"
    with db.connect() as c:
        c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    drop_schema(db, name)


def queued(conn: psycopg.Connection, schema: str, queue: str, key: str = "id") -> list:
    """Pending keys of the vectorizer whose queue is schema.queue (inbox included), sorted,
    duplicates kept."""
    found = Queue.find(conn, f"{schema}.{queue}")
    assert found is not None, f"no vectorizer with queue {schema}.{queue}"
    names, rows = found.pending(conn, limit=1_000_000)
    at = names.index(key)
    return sorted(r[at] for r in rows)
