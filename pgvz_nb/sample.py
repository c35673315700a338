"""Sample data: the ``blog`` table of the PgVectorize article, filled with real, varied posts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

from . import sql as q
from .db import Database
from .errors import PgvzError
from .sql import BLOG_DDL_COLUMNS

__all__ = ["BLOG_DDL_COLUMNS", "BLOG_POSTS", "load_blog", "load_python_docs"]


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=timezone.utc)


# (title, author, category, published_time or None for a draft, contents)
BLOG_POSTS: list[tuple[str, str, str, datetime | None, str]] = [
    ("First Post", "Matvey Arye", "AI", _t("2021-01-01"),
     "some super interesting content about cats."),
    ("Why my cat ignores me until dinner", "Avthar Sewrathan", "Pets", _t("2021-02-14"),
     ("Cats are crepuscular hunters: they are most alert at dawn and dusk, which is exactly when "
      "they start demanding food. My tabby sleeps through the afternoon, then follows me from "
      "room to room at six o'clock. Feeding her small meals from a puzzle feeder keeps her busy "
      "and has stopped the yowling at the kitchen door.")),
    ("Teaching an old dog to walk on a loose leash", "Ana Tavares", "Pets", _t("2021-03-03"),
     ("Leash pulling is rewarded every time the dog gets where it wants to go. Stop the moment "
      "the leash goes tight, wait for slack, then move on. It is boring for the first week, but "
      "my eight-year-old beagle now walks beside me and sniffs on cue instead of dragging me "
      "toward every hedge.")),
    ("Sourdough starter from scratch in seven days", "Lena Fischer", "Cooking", _t("2021-04-10"),
     ("Mix equal weights of whole rye flour and water, keep it warm, and discard half every day "
      "before feeding. On day three it smells like nail polish; that is normal and passes. By "
      "day seven the starter doubles within six hours of feeding and is ready to raise a loaf "
      "with an open, chewy crumb.")),
    ("A week on the Portuguese coast by train", "Ana Tavares", "Travel", _t("2021-06-21"),
     ("From Lisbon the regional line runs up to Porto in under three hours, with stops in "
      "Coimbra and Aveiro. We stayed in small guesthouses, ate grilled sardines every night, and "
      "spent an afternoon in the tiled streets of Aveiro watching the moliceiro boats on the "
      "canals. No car needed.")),
    ("Indexing strategies for time-series tables", "Mike Freedman", "Databases", _t("2021-08-05"),
     ("A B-tree on the timestamp column serves range queries well until the table grows past "
      "memory. Partitioning by time keeps each index small, lets old partitions be dropped "
      "instantly, and gives the planner a chance to prune whole chunks when a query filters on "
      "a recent window.")),
    ("How vector search finds similar documents", "Matvey Arye", "AI", _t("2022-01-12"),
     ("An embedding model turns text into a point in a high-dimensional space where similar "
      "meanings land close together. Searching means finding the nearest points to the query's "
      "embedding, measured by cosine distance. Approximate indexes such as HNSW trade a little "
      "recall for answers in milliseconds over millions of vectors.")),
    ("Growing tomatoes on a city balcony", "Lena Fischer", "Gardening", _t("2022-04-02"),
     ("Cherry tomatoes are forgiving in containers of twenty litres or more. Give them six hours "
      "of sun, water deeply in the morning, and pinch out side shoots on the cordon varieties. A "
      "weekly feed of potash once the first trusses set turned my thin plants into a crop that "
      "lasted until October.")),
    ("The physics of a perfect espresso", "Raj Patel", "Science", _t("2022-05-18"),
     ("Espresso is a pressure-driven extraction: nine bars push water at about ninety-three "
      "degrees through a puck of finely ground coffee. Grind too fine and the flow chokes; too "
      "coarse and the shot runs sour and thin. Weighing the dose and the yield is the single "
      "habit that made my shots repeatable.")),
    ("Marathon training without burning out", "Kim Nguyen", "Sports", _t("2022-09-09"),
     ("Most of my weekly mileage is slow enough to hold a conversation. One workout of intervals "
      "and one long run per week carried me from a half to a full marathon in sixteen weeks. "
      "The rest days mattered as much as the runs; the one injury I had came in the week I "
      "skipped them.")),
    ("Adopting a rescue kitten: the first month", "Avthar Sewrathan", "Pets", _t("2022-11-30"),
     ("Our shelter kitten hid under the sofa for two days. A small room with a litter box, water "
      "and a cardboard hideout helped her settle before she explored the whole flat. Play "
      "sessions with a wand toy before bed meant she stopped pouncing on our feet at four in the "
      "morning.")),
    ("Retrieval-augmented generation in plain words", "Matvey Arye", "AI", _t("2023-03-15"),
     ("A language model answers better when it is handed the right facts. Retrieval-augmented "
      "generation searches your own documents for passages related to the question and puts "
      "them into the prompt. The quality of the answer depends mostly on the quality of that "
      "search, which is why keeping embeddings fresh matters.")),
    ("Keeping embeddings in sync with your tables", "Mike Freedman", "Databases", _t("2023-05-02"),
     ("Embeddings are derived data, like an index. When a row changes, its vectors must change "
      "too, or search returns stale answers. A trigger that records changed keys in a work queue "
      "and a worker that drains it in batches keeps the two in step without touching the "
      "application code.")),
    ("Bread, salt and olive oil: a Catalan breakfast", "Lena Fischer", "Cooking", _t("2023-06-11"),
     ("Pa amb tomaquet is toasted country bread rubbed with a cut garlic clove and a ripe tomato, "
      "drizzled with olive oil and sprinkled with salt. It needs good ingredients and nothing "
      "else. In Barcelona we ate it every morning with a slice of cured ham and a small coffee.")),
    ("Night trains are back in Europe", "Ana Tavares", "Travel", _t("2023-09-27"),
     ("Sleeper services now link Vienna with Paris, Brussels and Amsterdam, and Stockholm with "
      "Berlin. You board after dinner, sleep in a couchette and wake up in another country. It "
      "is slower than flying, but with no airport queues the door-to-door time is often close.")),
    ("Why the sky is blue and sunsets are red", "Raj Patel", "Science", _t("2023-10-19"),
     ("Air molecules scatter short blue wavelengths of sunlight far more than long red ones, so "
      "the sky overhead glows blue. At sunset the light crosses much more atmosphere before it "
      "reaches us, most of the blue is scattered away, and the remaining reds and oranges colour "
      "the clouds.")),
    ("Composting in a small garden", "Kim Nguyen", "Gardening", _t("2024-02-08"),
     ("A compost heap needs a mix of greens, such as kitchen scraps and grass clippings, and "
      "browns, such as dry leaves and cardboard. Turn it every few weeks to let air in. After "
      "about six months the bottom of my bin was dark, crumbly soil that the vegetable beds loved.")),
    ("Choosing a chunk size for embeddings", "Matvey Arye", "AI", _t("2024-04-22"),
     ("Long documents are split into chunks before embedding, because a single vector cannot hold "
      "every detail of a long text. Chunks of a few hundred words with some overlap keep "
      "sentences intact across boundaries. Smaller chunks give precise matches; larger ones give "
      "the model more context.")),
    ("Cycling the Danube from Passau to Vienna", "Kim Nguyen", "Sports", _t("2024-07-14"),
     ("The Danube cycle path is flat, well signposted and mostly car-free. In five easy days we "
      "rode past the vineyards of the Wachau, the abbey at Melk and riverside villages with "
      "guesthouses that welcome cyclists and dry wet gear overnight.")),
    ("Why cats knock things off tables", "Avthar Sewrathan", "Pets", _t("2024-10-03"),
     ("Batting small objects is hunting practice: a cat tests whether the thing moves, and "
      "whether it is prey. It is also a reliable way to get attention. Giving my two cats a "
      "daily play session with moving toys cut the number of broken glasses to almost none.")),
    ("Vacuuming and bloat in PostgreSQL", "Mike Freedman", "Databases", _t("2025-01-20"),
     ("Every UPDATE in PostgreSQL writes a new row version and leaves the old one behind. "
      "Autovacuum reclaims those dead tuples, but a queue table that sees millions of inserts and "
      "deletes a day needs aggressive settings, or its indexes swell and every scan slows down.")),
    ("Draft: notes on fermentation", "Lena Fischer", "Cooking", None,
     ("Lacto-fermented vegetables need only salt, about two percent of their weight, and time. "
      "Cabbage, carrots and radishes all work; keep them under the brine and out of the sun.")),
    ("Draft: the best dog parks in Lisbon", "Ana Tavares", "Pets", None,
     ("Parque Eduardo VII has a fenced dog area near the top of the hill, and Monsanto forest "
      "park has trails where dogs can run off the leash early in the morning.")),
]


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
