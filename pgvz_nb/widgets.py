"""Notebook panels: set up a vectorizer, watch and drive its sync, explore its search.

Thin views over the library: every button calls one method of the panel (``create()``,
``run_batch()``, ``sync_all()``, ``search()``, ...) that tests and users can call too,
and every panel shows the equivalent Python code. Text from the database is HTML-escaped
before it reaches an HTML widget. Needs ``pip install pgvz_nb[notebook]``.
"""

from __future__ import annotations

import contextlib
import html
import io
import re
import threading
import time
from typing import Any

import ipywidgets as W

from . import sql as q
from .db import Database, column_names, connect, mask_dsn
from .errors import PgvzError
from .vectorizer import Vectorizer

__all__ = ["SearchPanel", "SetupPanel", "SyncPanel", "embedding_map"]

EMBEDDERS = {
    "default: all-MiniLM-L6-v2 (offline, 384-d)": "default",
    "hashing: bag-of-words stand-in (tests only, not semantic)": "hashing",
    "OpenAI: text-embedding-3-small (needs OPENAI_API_KEY)": "openai",
}


def _error_html(exc: BaseException) -> str:
    return f"<div style='color:#b00020'><b>{html.escape(type(exc).__name__)}</b>: {html.escape(str(exc))}</div>"


def _table_html(frame, max_chars: int = 160) -> str:
    """A DataFrame as an escaped HTML table (long texts cut)."""
    if frame is None or len(frame) == 0:
        return "<i>nothing</i>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for rec in frame.itertuples(index=False):
        cells = []
        for v in rec:
            text = str(v)
            if len(text) > max_chars:
                text = text[: max_chars - 1] + "…"
            cells.append(f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='pgvz'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _embedder(kind: str):
    if kind == "default":
        return None
    if kind == "hashing":
        from .embedders import HashingEmbedder

        return HashingEmbedder()
    from langchain_openai import OpenAIEmbeddings

    return OpenAIEmbeddings(model="text-embedding-3-small")


# --- setup ---------------------------------------------------------------------------------


class SetupPanel(W.VBox):
    """Pick a table and columns, preview the text that will be embedded, create the vectorizer."""

    def __init__(self, db: Database | None = None):
        self.db = db
        self.vectorizer: Vectorizer | None = None
        self.source = W.ToggleButtons(options=["embedded", "DSN"], value="embedded", description="Database")
        self.dsn = W.Password(placeholder="postgresql://user:password@host/db", description="DSN")
        self.connect_button = W.Button(description="Connect", icon="plug")
        self.connection = W.HTML()
        self.table = W.Dropdown(description="Table", options=[])
        self.template = W.Textarea(description="Template", layout=W.Layout(width="95%"),
                                   placeholder="Author {author}, title: {title}, contents:{chunk}")
        self.chunk_column = W.Dropdown(description="Chunk column", options=[None])
        self.metadata = W.SelectMultiple(description="Metadata", options=[], rows=5)
        self.time_column = W.Dropdown(description="Time column", options=[None])
        self.where = W.Text(description="Where", placeholder="published_time IS NOT NULL")
        self.embedder = W.Dropdown(description="Embedder", options=list(EMBEDDERS))
        self.preview_out = W.HTML()
        self.create_button = W.Button(description="Create", button_style="primary", icon="check")
        self.result = W.HTML()
        self.code = W.Textarea(description="Code", layout=W.Layout(width="95%", height="170px"))
        self.connect_button.on_click(lambda _: self._guard(self.connect))
        self.create_button.on_click(lambda _: self._guard(self.create))
        self.table.observe(lambda _: self._guard(self.load_columns), names="value")
        for w in (self.template, self.chunk_column, self.metadata, self.time_column, self.where, self.embedder):
            w.observe(lambda _: self._guard(self.refresh), names="value")
        super().__init__([
            W.HBox([self.source, self.dsn, self.connect_button]), self.connection,
            self.table, self.template, W.HBox([self.chunk_column, self.time_column]), self.metadata,
            self.where, self.embedder, W.HTML("<b>Preview (first three rows)</b>"), self.preview_out,
            self.create_button, self.result, self.code,
        ])
        if db is not None:
            self._guard(self.connect)

    def _guard(self, action) -> None:
        try:
            action()
        except (PgvzError, ValueError, KeyError, IndexError) as exc:
            self.result.value = _error_html(exc)

    def connect(self) -> None:
        """Connect (embedded or the DSN typed), then list the database's tables."""
        if self.db is None or self.source.value == "DSN":
            self.db = connect(self.dsn.value if self.source.value == "DSN" and self.dsn.value else None)
        self.connection.value = f"connected: <code>{html.escape(mask_dsn(self.db.dsn))}</code>"
        with self.db.connect() as conn:
            rows = conn.execute(q.list_tables()).fetchall()
        self.table.options = [f"{s}.{t}" for s, t in rows]

    def _db(self) -> Database:
        if self.db is None:
            raise PgvzError("not connected yet: press Connect first")
        return self.db

    def _columns(self) -> list[str]:
        schema, table = self.table.value.split(".", 1)
        with self._db().connect() as conn:
            return [r[0] for r in conn.execute(q.table_columns(), [schema, table]).fetchall()]

    def load_columns(self) -> None:
        if not self.table.value:
            return
        cols = self._columns()
        self.chunk_column.options = [None, *cols]
        self.metadata.options = cols
        self.time_column.options = [None, *cols]
        text_like = next((c for c in cols if c in ("contents", "body", "text", "content")), None)
        self.chunk_column.value = text_like
        if not self.template.value:
            self.template.value = "{chunk}" if text_like else "{" + cols[-1] + "}"
        self.refresh()

    def options(self) -> dict[str, Any]:
        """The Vectorizer arguments the panel describes."""
        return {
            "template": self.template.value or None,
            "chunk_column": self.chunk_column.value,
            "metadata": list(self.metadata.value),
            "time_column": self.time_column.value,
            "where": self.where.value.strip() or None,
        }

    def code_text(self) -> str:
        """The Python that does what Create does (the DSN comes from the environment)."""
        opts = self.options()
        kind = EMBEDDERS[self.embedder.value]
        lines = ["import pgvz_nb as pgvz", ""]
        if kind == "hashing":
            lines.insert(1, "from pgvz_nb.embedders import HashingEmbedder")
        elif kind == "openai":
            lines.insert(1, "from langchain_openai import OpenAIEmbeddings")
        lines.append("db = pgvz.connect()  # PGVZ_DSN / DATABASE_URL, else the embedded server")
        args = [repr(self.table.value)] + [f"{k}={v!r}" for k, v in opts.items() if v not in (None, [])]
        if kind == "hashing":
            args.append("embedder=HashingEmbedder()")
        elif kind == "openai":
            args.append('embedder=OpenAIEmbeddings(model="text-embedding-3-small")')
        lines.append("v = pgvz.Vectorizer(\n    db, " + ",\n    ".join(args) + ",\n).create()")
        lines.append("v.sync()")
        return "\n".join(lines)

    def preview(self, n: int = 3) -> list[str]:
        """The formatted text of the first ``n`` rows' first chunks, as the pipeline makes it."""
        from .pipeline import Pipeline, PipelineConfig

        opts = self.options()
        if not opts["template"]:
            return []
        schema, table = self.table.value.split(".", 1)
        cfg = PipelineConfig(template=opts["template"], destination=["", ""], dest_keys=[],
                             metadata_key="id", embedder={"identity": "preview", "dimensions": 0},
                             chunk_column=opts["chunk_column"], metadata=opts["metadata"],
                             time_column=opts["time_column"])
        pipe = Pipeline(None, cfg, None)  # type: ignore[arg-type]
        with self._db().connect() as conn:
            cur = conn.execute(q.preview_rows((schema, table)), [n])
            names = column_names(cur)
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
        texts = []
        for i, row in enumerate(rows):
            chunks = pipe.chunks((i,), row)
            texts.append(chunks[0].text if chunks else "")
        return texts

    def refresh(self) -> None:
        """Redraw the preview and the code after any change."""
        self.code.value = self.code_text()
        if self.db is None or not self.table.value:
            return
        try:
            texts = self.preview()
        except KeyError as exc:
            self.preview_out.value = _error_html(PgvzError(f"the template names {exc}, which is not a column"))
            return
        self.preview_out.value = "".join(f"<pre style='white-space:pre-wrap'>{html.escape(t)}</pre>" for t in texts)

    def create(self) -> Vectorizer:
        """Create the vectorizer the panel describes (idempotent, like Vectorizer.create)."""
        v = Vectorizer(self._db(), self.table.value, embedder=_embedder(EMBEDDERS[self.embedder.value]),
                       **self.options()).create()
        self.vectorizer = v
        self.result.value = (f"created <b>{html.escape(v.name)}</b>: {html.escape('.'.join(v.source))} → "
                             f"{html.escape('.'.join(v.destination))}; run a SyncPanel or v.sync()")
        return v


# --- sync ----------------------------------------------------------------------------------


class SyncPanel(W.VBox):
    """Live status, Run one batch / Sync all / Stop, progress with rate and ETA, errors with Retry.

    Sync runs in a background thread so the kernel stays responsive; status refreshes
    every ``refresh`` seconds while the panel is open.
    """

    def __init__(self, vectorizer: Vectorizer, refresh: float = 2.0):
        self.v = vectorizer
        self.status_html = W.HTML()
        self.batch_button = W.Button(description="Run one batch", icon="step-forward")
        self.sync_button = W.Button(description="Sync all", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.progress = W.IntProgress(value=0, min=0, max=1, description="Sync")
        self.rate = W.HTML()
        self.errors_html = W.HTML()
        self.retry_button = W.Button(description="Retry failed", icon="redo")
        self.message = W.HTML()
        self.code = W.HTML(f"<pre>v = pgvz.Vectorizer.open(db, {html.escape(repr(vectorizer.name))})\nv.sync()</pre>")
        self.batch_button.on_click(lambda _: self.run_batch())
        self.sync_button.on_click(lambda _: self.sync_all())
        self.stop_button.on_click(lambda _: self.stop())
        self.retry_button.on_click(lambda _: self.retry())
        self._stop = threading.Event()
        self._closed = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_error: BaseException | None = None
        super().__init__([
            self.status_html, W.HBox([self.batch_button, self.sync_button, self.stop_button]),
            W.HBox([self.progress, self.rate]), self.message,
            W.HTML("<b>Failed rows</b>"), self.errors_html, self.retry_button, self.code,
        ])
        self.update()
        if refresh:
            threading.Thread(target=self._auto_refresh, args=(refresh,), daemon=True).start()

    def _auto_refresh(self, every: float) -> None:
        while not self._closed.wait(every):
            if self.thread is None or not self.thread.is_alive():
                try:
                    self.update()
                except Exception:  # noqa: BLE001 - a closed connection while the kernel shuts down
                    return

    def close(self) -> None:
        self._closed.set()
        self._stop.set()
        super().close()

    def update(self) -> None:
        """Redraw the status and errors tables from the database."""
        st = self.v.status()
        cols = ["pending", "claimable", "retrying", "failed", "embedded_rows", "source_rows",
                "coverage_pct", "oldest_pending_age"]
        self.status_html.value = _table_html(st[cols])
        if st["uncovered_partitions"][0]:
            self.status_html.value += (
                "<p style='color:#b00'>Writes aimed directly at these partitions are not queued: "
                f"{html.escape(st['uncovered_partitions'][0])}. Run create() again as their "
                "owner to cover them.</p>")
        self.errors_html.value = _table_html(self.v.errors())

    def run_batch(self) -> int:
        """Process one batch in the foreground; returns rows claimed."""
        result, _ = self.v.process()
        self.message.value = html.escape(f"one batch: {result.claimed} rows ({result.answer})")
        self.update()
        return result.claimed

    def sync_all(self, wait: bool = False) -> threading.Thread:
        """Drain the queue in a background thread (``wait=True`` joins it)."""
        if self.thread is not None and self.thread.is_alive():
            return self.thread
        self._stop.clear()
        st = self.v.status()
        self.progress.max = max(int(st["pending"][0]), 1)
        self.progress.value = 0
        self.sync_button.disabled, self.stop_button.disabled = True, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if wait:
            self.thread.join()
        return self.thread

    def _run(self) -> None:
        t0, done = time.perf_counter(), 0
        try:
            while not self._stop.is_set():
                result, _ = self.v.process()
                if result.claimed == 0:
                    self.message.value = html.escape(f"queue {result.answer}")
                    break
                done += result.claimed
                if done > self.progress.max:
                    self.progress.max = done
                self.progress.value = done
                rate = done / max(time.perf_counter() - t0, 1e-9)
                eta = (self.progress.max - done) / rate if rate else 0
                self.rate.value = f"{done} rows, {rate:.1f} rows/s, ETA {eta:.0f} s"
            else:
                self.message.value = "stopped"
        except Exception as exc:  # noqa: BLE001 - shown in the panel; the thread must not die silently
            self.last_error = exc
            self.message.value = _error_html(exc)
        finally:
            self.sync_button.disabled, self.stop_button.disabled = False, True
            with contextlib.suppress(Exception):  # the status table is a nicety after a sync
                self.update()

    def stop(self) -> None:
        """Stop after the current batch."""
        self._stop.set()

    def retry(self) -> int:
        n = self.v.retry_failed()
        self.message.value = f"{n} failed rows queued again"
        self.update()
        return n


# --- search --------------------------------------------------------------------------------


def highlight(text: str, query: str) -> str:
    """HTML-escaped ``text`` with the query's words (3+ letters) wrapped in <mark>."""
    escaped = html.escape(text)
    words = sorted({w for w in re.findall(r"\w{3,}", query.lower())}, key=len, reverse=True)
    if not words:
        return escaped
    pattern = re.compile("|".join(re.escape(html.escape(w)) for w in words), re.IGNORECASE)
    return pattern.sub(lambda m: f"<mark>{m.group(0)}</mark>", escaped)


class SearchPanel(W.VBox):
    """Query box, k, metadata filters from the data, time range, hybrid toggle; results with
    highlighted terms and the source row; a second query side by side; the code to copy."""

    def __init__(self, vectorizer: Vectorizer, filters: list[str] | None = None, map_points: int = 400):
        self.v = vectorizer
        self.map_points = map_points
        self.query = W.Text(description="Query", placeholder="Blogs about cats", layout=W.Layout(width="60%"))
        self.compare = W.Text(description="Compare", placeholder="(optional) a second query")
        self.k = W.IntSlider(value=5, min=1, max=50, description="k")
        self.hybrid = W.Checkbox(value=False, description="hybrid (full text + vector)")
        keys = filters if filters is not None else list(vectorizer.config.metadata)
        self.filters = {key: W.Dropdown(description=key, value=None,
                                        options=[("(any)", None)] + [(str(v), v) for v in self._values(key)])
                        for key in keys}
        has_time = bool(vectorizer.config.time_column)
        self.start = W.DatePicker(description="From", disabled=not has_time)
        self.end = W.DatePicker(description="Until", disabled=not has_time)
        self.show_map = W.Checkbox(value=False, description="2-D map (PCA)")
        self.button = W.Button(description="Search", button_style="primary", icon="search")
        self.results = W.HTML()
        self.map = W.Image(format="png", layout=W.Layout(display="none"))  # shown once drawn
        self.code = W.Textarea(description="Code", layout=W.Layout(width="95%", height="60px"))
        self.button.on_click(lambda _: self._guard(self.search))
        self.last: list = []
        super().__init__([
            W.HBox([self.query, self.button]), self.compare, W.HBox([self.k, self.hybrid, self.show_map]),
            W.HBox(list(self.filters.values())), W.HBox([self.start, self.end]),
            self.results, self.map, self.code,
        ])

    def _guard(self, action) -> None:
        try:
            action()
        except (PgvzError, ValueError) as exc:
            self.results.value = _error_html(exc)

    def _values(self, key: str, limit: int = 100) -> list[str]:
        """Distinct values of a metadata key in the destination, for its dropdown."""
        with self.v.db.connect() as conn:
            rows = conn.execute(q.metadata_values(self.v.destination), [key, limit]).fetchall()
        return [r[0] for r in rows]

    def search_args(self, query: str) -> dict[str, Any]:
        filt = {k: w.value for k, w in self.filters.items() if w.value is not None}
        args: dict[str, Any] = {"k": self.k.value}
        if filt:
            args["filter"] = filt
        if self.start.value:
            args["start"] = _as_utc(self.start.value)
        if self.end.value:
            args["end"] = _as_utc(self.end.value)
        if self.hybrid.value:
            args["hybrid"] = True
        return args

    def code_text(self) -> str:
        calls = []
        for query in filter(None, [self.query.value, self.compare.value]):
            args = ", ".join([repr(query)] + [f"{k}={v!r}" for k, v in self.search_args(query).items()])
            calls.append(f"v.search({args})")
        return "\n".join(calls)

    def search(self) -> list:
        """Run the query (and the comparison query); returns the result DataFrames."""
        queries = [s for s in (self.query.value.strip(), self.compare.value.strip()) if s]
        if not queries:
            raise PgvzError("type a query first")
        frames = [self.v.search(s, **self.search_args(s)) for s in queries]
        self.last = frames
        columns = [self._results_html(s, f) for s, f in zip(queries, frames)]
        self.results.value = "<div style='display:flex;gap:2em'>" + "".join(
            f"<div style='flex:1'>{c}</div>" for c in columns) + "</div>"
        self.code.value = self.code_text()
        if self.show_map.value:
            self.map.value = embedding_map(self.v, queries[0], frames[0], limit=self.map_points)
            self.map.layout.display = None
        return frames

    def _results_html(self, query: str, frame) -> str:
        if len(frame) == 0:
            return f"<b>{html.escape(query)}</b><br><i>no results</i>"
        sources = self._source_rows(frame)
        rows = []
        for rec, source in zip(frame.to_dict("records"), sources):
            meta = ", ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in rec.items()
                             if k not in ("rank", "distance", "contents", "id", "score"))
            src = "" if source is None else (
                "<details><summary>source row</summary><pre style='white-space:pre-wrap'>"
                + html.escape("\n".join(f"{k}: {v}" for k, v in source.items())) + "</pre></details>")
            rows.append(
                f"<tr class='pgvz-hit'><td>{rec['rank']}</td><td>{rec['distance']:.4f}</td>"
                f"<td><div class='pgvz-contents'>{highlight(str(rec['contents']), query)}</div>"
                f"<small>{meta}</small>{src}</td></tr>")
        return (f"<b>{html.escape(query)}</b><table class='pgvz-results'><thead><tr><th>rank</th>"
                f"<th>distance</th><th>contents</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def _source_rows(self, frame) -> list[dict | None]:
        key_col = self.v.config.metadata_key
        queue, _, _ = self.v._ready()
        if len(queue.keys) != 1 or key_col not in frame.columns:
            return [None] * len(frame)
        key = queue.keys[0]
        with self.v.db.connect() as conn:
            cur = conn.execute(q.source_rows(self.v.source, key), [[str(k) for k in frame[key_col]]])
            names = column_names(cur)
            found = {str(r[names.index(key)]): dict(zip(names, r)) for r in cur.fetchall()}
        return [found.get(str(k)) for k in frame[key_col]]


def _as_utc(day):
    from datetime import datetime, timezone

    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def embedding_map(v: Vectorizer, query: str, hits, limit: int = 400) -> bytes:
    """A PNG of the destination's vectors projected to 2-D by PCA (numpy SVD), with the
    query and its top-k hits marked. Drawn with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with v.db.connect(vector=True) as conn:
        rows = conn.execute(q.sample_vectors(v.destination), [limit]).fetchall()
    if not rows:
        raise PgvzError("the destination holds no vectors yet: sync first")
    ids = [r[0] for r in rows]
    vecs = np.stack([np.asarray(r[1].to_numpy() if hasattr(r[1], "to_numpy") else r[1], dtype=np.float32)
                     for r in rows])
    query_vec = np.asarray(v.embedder.embed_query(query), dtype=np.float32)
    mean = vecs.mean(axis=0)
    _, _, vt = np.linalg.svd(vecs - mean, full_matrices=False)
    axes = vt[:2].T
    points = (vecs - mean) @ axes
    qpoint = (query_vec - mean) @ axes
    hit_ids = set(hits["id"]) if len(hits) else set()
    is_hit = np.array([i in hit_ids for i in ids])
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=96)
    ax.scatter(points[~is_hit, 0], points[~is_hit, 1], s=10, c="#9aa5b1", label="chunks")
    ax.scatter(points[is_hit, 0], points[is_hit, 1], s=40, c="#d62728", label=f"top {len(hit_ids)}")
    ax.scatter([qpoint[0]], [qpoint[1]], s=160, marker="*", c="#1f77b4", label="query")
    ax.set_title(f"{'.'.join(v.destination)}: {len(ids)} chunks, PCA", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
