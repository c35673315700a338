"""Sample data: the ``blog`` table of the PgVectorize article, filled with real, varied posts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.resources import files

from . import sql as q
from .db import Database
from .errors import PgvzError
from .sql import BLOG_DDL_COLUMNS

__all__ = ["BLOG_DDL_COLUMNS", "BLOG_POSTS", "load_blog", "load_python_docs"]


def _blog_posts() -> list[tuple[str, str, str, datetime | None, str]]:
    rows = json.loads((files("pgvz_nb") / "data" / "blog_posts.json").read_text(encoding="utf-8"))
    return [(r["title"], r["author"], r["category"],
             datetime.fromisoformat(r["published_time"]).replace(tzinfo=timezone.utc) if r["published_time"] else None,
             r["contents"]) for r in rows]


#: (title, author, category, published_time or None for a draft, contents), from data/blog_posts.json
BLOG_POSTS: list[tuple[str, str, str, datetime | None, str]] = _blog_posts()


def load_blog(db: Database, table: str = "blog", schema: str = "public", *, replace: bool = False) -> int:
    """Create the article's ``blog`` table (if missing) and insert the sample posts.

    Returns the number of rows inserted. With ``replace=True`` the table is emptied first.
    Unpublished drafts have a NULL ``published_time``, as in the article.
    """
    target = (schema, table)
    with db.connect() as conn:
        conn.execute(q.create_schema(schema))
        conn.execute(q.create_blog(target))
        if replace:
            conn.execute(q.delete_all(target))
        with conn.cursor() as cur:
            cur.executemany(q.insert_blog_post(target), BLOG_POSTS)
    return len(BLOG_POSTS)


def load_python_docs(db: Database, table: str = "python_docs", schema: str = "public", *,
                     replace: bool = False, limit: int | None = None,
                     topics: Sequence[str] | None = None) -> int:
    """A larger real corpus: the 79 topics of CPython's language reference that ship with
    Python itself (``pydoc_data.topics``, about 465k characters; ~640 chunks of 1000/200).

    Table ``(id serial, topic text unique, title text, body text, updated_at timestamptz)``;
    ``limit`` keeps the first n topics, ``topics`` names the ones to load (tutorials and
    tests shrink their work with these).
    """
    from pydoc_data.topics import topics as all_topics

    if topics is not None:
        unknown = sorted(set(topics) - set(all_topics))
        if unknown:
            raise PgvzError(f"no topics {unknown} in pydoc_data.topics; it has {sorted(all_topics)}")
        items = [(t, all_topics[t]) for t in topics]
    else:
        items = sorted(all_topics.items())
    items = items[: limit if limit is not None else None]
    target = (schema, table)
    with db.connect() as conn:
        conn.execute(q.create_schema(schema))
        conn.execute(q.create_python_docs(target))
        if replace:
            conn.execute(q.delete_all(target))
        with conn.cursor() as cur:
            cur.executemany(q.upsert_python_doc(target),
                            [(name, _doc_title(text, name), text) for name, text in items])
    return len(items)


def _doc_title(text: str, name: str) -> str:
    """The first non-empty line of a topic, which is its heading."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return name
