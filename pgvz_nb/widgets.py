"""Notebook panels: set up a vectorizer, watch and drive its sync, explore its search.

Thin views over the library: every button calls one method of the panel (``create()``,
``run_batch()``, ``sync_all()``, ``search()``, ...) that tests and users can call too,
and every panel shows the equivalent Python code. Text from the database is HTML-escaped
before it reaches an HTML widget. Needs ``pip install pgvz_nb[notebook]``.
"""

from __future__ import annotations

import contextlib
import functools
import html
import io
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as W

from . import sql as q
from .db import Database, column_names, connect, mask_dsn
from .errors import PgvzError
from .frames import is_text_type
from .vectorizer import Vectorizer

__all__ = ["EmbeddingMap", "MigrationPanel", "SearchPanel", "SetupPanel", "SyncPanel", "embedding_map", "highlight"]

EMBEDDERS = {
    "default: all-MiniLM-L6-v2 (offline, 384-d)": "default",
    "hashing: bag-of-words stand-in (tests only, not semantic)": "hashing",
    "OpenAI: text-embedding-3-small (needs OPENAI_API_KEY)": "openai",
}


def _error_html(exc: BaseException) -> str:
    """An exception as the panel shows it: its message, and what to do when it is not ours."""
    import traceback

    # a private class (migration's _Behind) by the public one it is a kind of
    name = next(c.__name__ for c in type(exc).__mro__ if not c.__name__.startswith("_"))
    msg = (f"<div class='pgvz-error' style='color:#b00020;white-space:pre-wrap'><b>"
           f"{html.escape(name)}</b>: {html.escape(str(exc) or repr(exc))}")
    if not isinstance(exc, PgvzError):
        # pgvz_nb's own errors say what to do; anything else is unexpected: show where
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        msg += ("<br><small>Unexpected: check the inputs above, or report it with the "
                "traceback.</small><details><summary>traceback</summary><pre>"
                f"{html.escape(tb)}</pre></details>")
    return msg + "</div>"


def _guarded(action: Callable[[], Any], out: W.HTML) -> Any:
    """Run a handler; any exception lands in ``out`` (a button swallows it otherwise, and
    JupyterLab shows it only in its log console)."""
    try:
        return action()
    except Exception as exc:  # noqa: BLE001 - every handler error belongs in the panel
        out.value = _error_html(exc)
        return None


class _Fallback:
    """Panels display as the widget, plus a text/html and text/plain summary: exported HTML
    and a notebook reopened without saved widget state show that instead of nothing."""

    def summary(self) -> str:
        return type(self).__name__

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        data = dict(super()._repr_mimebundle_(**kwargs) or {})  # type: ignore[misc]
        text = self.summary()
        data["text/plain"] = f"{type(self).__name__}: {text} (run the cell for the live panel)"
        data["text/html"] = (f"<div class='pgvz-fallback'><b>{html.escape(type(self).__name__)}</b>: "
                             f"{html.escape(text)}<br><small>a live panel: run the cell (or save "
                             "widget state)</small></div>")
        return data


class _Refreshing:
    """A panel whose status redraws itself every few seconds from a thread (``update``), while
    ``_may_refresh()`` (not during its own sync, which redraws it), until it is closed or
    ``_refresh_over()``; an error stops the loop, said in the panel's message."""

    _closed: threading.Event
    message: Any

    def update(self) -> None:
        raise NotImplementedError

    def _may_refresh(self) -> bool:
        return True

    def _refresh_over(self) -> bool:
        return False

    def _auto_refresh(self, every: float) -> None:
        while not self._closed.wait(every):
            if self._refresh_over():
                return
            if not self._may_refresh():
                continue
            try:
                self.update()
            except Exception as exc:  # noqa: BLE001 - a dropped vectorizer, a closed connection
                with contextlib.suppress(Exception):
                    self.message.value = (_error_html(exc) + "<small>The status stopped "
                                          "refreshing; press a button to try again.</small>")
                return


def _table_html(frame, columns: list[str] | None = None, max_chars: int = 160) -> str:
    """A DataFrame's ``columns`` as an escaped HTML table, displayed as the frames display
    themselves ("6 s ago", "—" for missing, long texts cut)."""
    from .frames import readable, table_html

    if frame is None or len(frame) == 0:
        return "<i>nothing</i>"
    return table_html(readable(frame, columns, width=max_chars))


def _embedder(kind: str):
    if kind == "default":
        return None
    if kind == "hashing":
        from .embedders import HashingEmbedder

        return HashingEmbedder()
    from langchain_openai import OpenAIEmbeddings

    return OpenAIEmbeddings(model="text-embedding-3-small")


# --- setup ---------------------------------------------------------------------------------

_WIDE = {"description_width": "initial"}  # labels such as "Chunk column" are not cut
_TEXT_NAMES = ("contents", "content", "body", "text")  # preferred as the chunk column


class SetupPanel(_Fallback, W.VBox):
    """Pick a table and columns, preview the text that will be embedded, create the vectorizer.

    Create stays disabled until a table is chosen and the template is complete; the
    tables pgvz_nb itself writes (the ``*_embedding`` destinations) are not offered."""

    def __init__(self, db: Database | None = None):
        self.db = db
        self._given = db  # what "embedded" connects to again after a DSN was tried
        self.vectorizer: Vectorizer | None = None
        self._on_create: list[Callable[[Vectorizer], None]] = []
        self._types: dict[str, str] = {}
        self._key: list[str] = []
        # a database given by DSN (PGVZ_DSN, say) is not the embedded server: say so
        first = "embedded" if db is None or db.embedded else "this database"
        self.source = W.ToggleButtons(options=[(first, "embedded"), ("DSN", "DSN")], value="embedded",
                                      description="Database")
        self.dsn = W.Password(placeholder="postgresql://user:password@host/db", description="DSN",
                              layout=W.Layout(display="none"))
        self.connect_button = W.Button(description="Connect", icon="plug")
        self.connection = W.HTML()
        self.table = W.Dropdown(description="Table", options=[("(connect first)", None)], style=_WIDE)
        self.template = W.Textarea(description="Template", layout=W.Layout(width="95%"), style=_WIDE,
                                   placeholder="choose a table: the placeholder then shows its columns")
        self.template_hint = W.HTML()
        self.chunk_column = W.Dropdown(description="Chunk column", options=[("(none)", None)], style=_WIDE)
        self.metadata = W.SelectMultiple(description="Metadata", options=[], rows=5, style=_WIDE)
        self.metadata_hint = W.HTML("<small>Ctrl-click (Cmd-click on a Mac) to pick several; the "
                                    "metadata keys become search filters</small>")
        self.time_column = W.Dropdown(description="Time column", options=[("(none)", None)], style=_WIDE)
        self.where = W.Text(description="Where", placeholder="published_time IS NOT NULL", style=_WIDE)
        self.embedder = W.Dropdown(description="Embedder", options=list(EMBEDDERS), style=_WIDE,
                                   layout=W.Layout(width="60%"))
        self.preview_out = W.HTML()
        self.create_button = W.Button(description="Create", button_style="primary", icon="check",
                                      disabled=True, tooltip="choose a table first")
        self.create_hint = W.HTML()  # why Create is disabled: a disabled button cannot say it
        self.result = W.HTML()
        self.code = W.Textarea(description="Code", layout=W.Layout(width="95%", height="170px"))
        self.connect_button.on_click(lambda _: _guarded(self.connect, self.connection))
        self.create_button.on_click(lambda _: _guarded(self.create, self.result))
        self.source.observe(lambda _: self._show_dsn(), names="value")
        self.table.observe(lambda _: _guarded(self.load_columns, self.result), names="value")
        for w in (self.template, self.chunk_column, self.metadata, self.time_column, self.where, self.embedder):
            w.observe(lambda _: _guarded(self.refresh, self.result), names="value")
        super().__init__([
            W.HBox([self.source, self.dsn, self.connect_button]), self.connection,
            self.table, self.template, self.template_hint, W.HBox([self.chunk_column, self.time_column]),
            W.HBox([self.metadata, self.metadata_hint]), self.where, self.embedder,
            W.HTML("<b>Preview (the first three rows, chunk by chunk)</b>"), self.preview_out,
            W.HBox([self.create_button, self.create_hint]), self.result, self.code,
        ])
        self.add_class("pgvz-setup")
        if db is not None:
            _guarded(self.connect, self.connection)

    def summary(self) -> str:
        if self.vectorizer is not None:
            return f"created {self.vectorizer.name} on {self.table.value}"
        return f"table {self.table.value or '(none chosen)'}"

    def _show_dsn(self) -> None:
        self.dsn.layout.display = None if self.source.value == "DSN" else "none"

    def connect(self) -> None:
        """Connect (embedded or the DSN typed), then list the tables a vectorizer could use."""
        from .queue import Queue

        if self.source.value == "DSN":
            if not self.dsn.value:
                raise PgvzError("type a DSN (postgresql://user:password@host/db) first, or pick "
                                f"{self.source.options[0][0]}")
            self.db = connect(self.dsn.value)
        else:
            self.db = self._given if self._given is not None else connect(None)
            self._given = self.db
        self.connection.value = f"connected: <code>{html.escape(mask_dsn(self.db.dsn))}</code>"
        with self.db.connect() as conn:
            rows = conn.execute(q.list_tables()).fetchall()
            ours = {tuple(v.config["pipeline"]["destination"]) for v in Queue.list_all(conn)
                    if "pipeline" in v.config}
        tables = [f"{s}.{t}" for s, t in rows if (s, t) not in ours]
        self.table.options = [("(choose a table)", None), *((t, t) for t in tables)]
        self.table.index = 0  # not value=None: that can leave the label blank
        if not tables:
            self.result.value = _error_html(PgvzError(
                "this database has no table a vectorizer could follow yet; create one (or "
                "pgvz.sample.load_blog(db)), then press Connect again"))
        self.refresh()

    def _db(self) -> Database:
        if self.db is None:
            raise PgvzError("not connected yet: press Connect first")
        return self.db

    def _split(self) -> tuple[str, str]:
        if not self.table.value:
            raise PgvzError("choose a table first (the Table dropdown)")
        schema, table = self.table.value.split(".", 1)
        return schema, table

    def load_columns(self) -> None:
        """Offer the chosen table's columns; guess the chunk column among its text columns."""
        self.template.value = ""
        if not self.table.value:
            self._types, self._key = {}, []
            self.refresh()
            return
        schema, table = self._split()
        with self._db().connect() as conn:
            self._types = {r[0]: r[1] for r in conn.execute(q.table_columns(), [schema, table]).fetchall()}
            keys = conn.execute(q.unique_keys(), [schema, table]).fetchall()
        self._key = list(keys[0][1]) if keys else []
        cols = list(self._types)
        texts = [c for c in cols if is_text_type(self._types[c])]
        self.chunk_column.options = [("(none)", None), *((c, c) for c in texts)]
        self.metadata.options = cols
        self.time_column.options = [("(none)", None), *((c, c) for c in cols if "time" in self._types[c]
                                                         or "date" in self._types[c])]
        self.time_column.index = 0
        chunk = next((c for c in texts if c.lower() in _TEXT_NAMES), texts[-1] if texts else None)
        self.chunk_column.index = texts.index(chunk) + 1 if chunk else 0
        others = [c for c in texts if c != chunk][:2]
        example = ", ".join(f"{c}: {{{c}}}" for c in others)
        if chunk:
            example = f"{example}, contents: {{chunk}}" if example else "{chunk}"
            self.template.placeholder = example
            self.template_hint.value = (f"<small>Empty: only the chunks of <code>{html.escape(chunk)}"
                                        "</code>. Name columns as {column}; {chunk} is the piece of the "
                                        "chunk column.</small>")
        else:
            self.template.placeholder = "{" + "}, {".join(cols[:2]) + "}" if cols else ""
            self.template_hint.value = ("<small style='color:#b00020'>This table has no text column "
                                        "(text, varchar): write a template naming the columns to "
                                        "embed, e.g. <code>" + html.escape(self.template.placeholder)
                                        + "</code>.</small>")
        self.refresh()

    def options(self) -> dict[str, Any]:
        """The Vectorizer arguments the panel describes."""
        template = self.template.value.strip() or None
        if template is None and self.chunk_column.value:
            template = "{chunk}"
        return {
            "template": template,
            "chunk_column": self.chunk_column.value,
            "metadata": list(self.metadata.value),
            "time_column": self.time_column.value,
            "where": self.where.value.strip() or None,
        }

    def problem(self) -> str | None:
        """Why Create would fail now, or None."""
        if self.db is None:
            return "connect first"
        if not self.table.value:
            return "choose a table first"
        opts = self.options()
        if not opts["template"]:
            return "write a template (this table has no text column to chunk)"
        if "{chunk}" in opts["template"] and not opts["chunk_column"]:
            return "the template uses {chunk}: pick a chunk column"
        return None

    def code_text(self) -> str:
        """The Python that does what Create does (the DSN comes from the environment); until
        Create can work, a comment saying what is missing."""
        why = self.problem()
        if why is not None:
            return f"# {why}: the code that creates the vectorizer appears here"
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

    def preview_chunks(self, n: int = 3, per_row: int = 3) -> list[tuple[str, int, int, str]]:
        """(row key, chunk number from 1, chunks in the row, text) of the first ``n`` rows'
        first ``per_row`` chunks, formatted as the pipeline will."""
        from .pipeline import Pipeline, PipelineConfig

        opts = self.options()
        if not opts["template"]:
            return []
        cfg = PipelineConfig(template=opts["template"], destination=["", ""], dest_keys=[],
                             metadata_key="id", embedder={"identity": "preview", "dimensions": 0},
                             chunk_column=opts["chunk_column"], metadata=opts["metadata"],
                             time_column=opts["time_column"])
        pipe = Pipeline(None, cfg, None)  # type: ignore[arg-type]
        with self._db().connect() as conn:
            cur = conn.execute(q.preview_rows(self._split()), [n])
            names = column_names(cur)
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
        out = []
        for i, row in enumerate(rows):
            key = tuple(row[k] for k in self._key) if self._key else (i + 1,)
            label = ", ".join(f"{k}={v}" for k, v in zip(self._key, key)) if self._key else f"row {i + 1}"
            chunks = pipe.chunks(key, row)
            for j, chunk in enumerate(chunks[:per_row]):
                out.append((label, j + 1, len(chunks), chunk.text))
        return out

    def preview(self, n: int = 3) -> list[str]:
        """The formatted text of the first ``n`` rows' first chunks."""
        return [t for _, j, _, t in self.preview_chunks(n, per_row=1)]

    def refresh(self) -> None:
        """Redraw the preview and the code, and enable Create only when it can work."""
        self.code.value = self.code_text()
        why = self.problem()
        self.create_button.disabled = why is not None
        self.create_button.tooltip = why or "create the vectorizer (idempotent)"
        self.create_hint.value = f"<i style='color:#b45f06'>{html.escape(why)}</i>" if why else ""
        if self.db is None or not self.table.value:
            self.preview_out.value = ""
            return
        try:
            chunks = self.preview_chunks()
        except KeyError as exc:
            self.preview_out.value = _error_html(PgvzError(f"the template names {exc}, which is not a column"))
            return
        if not chunks:
            self.preview_out.value = f"<i>{html.escape(why or 'the table is empty')}</i>"
            return
        self.preview_out.value = "".join(
            f"<div class='pgvz-chunk' style='border-left:3px solid #9aa5b1;margin:4px 0;padding-left:6px'>"
            f"<small><b>{html.escape(label)}</b> · chunk {j} of {n}</small>"
            f"<pre style='white-space:pre-wrap;margin:2px 0'>{html.escape(t)}</pre></div>"
            for label, j, n, t in chunks)

    def create(self) -> Vectorizer:
        """Create the vectorizer the panel describes (idempotent, like Vectorizer.create)."""
        why = self.problem()
        if why is not None:
            raise PgvzError(f"cannot create yet: {why}")
        v = Vectorizer(self._db(), self.table.value, embedder=_embedder(EMBEDDERS[self.embedder.value]),
                       **self.options()).create()
        self.vectorizer = v
        self.result.value = (f"created <b>{html.escape(v.name)}</b>: {html.escape('.'.join(v.source))} → "
                             f"{html.escape('.'.join(v.destination))}; run <code>SyncPanel(setup)</code> "
                             "or <code>v = setup.vectorizer; v.sync()</code>")
        for listener in self._on_create:
            _guarded(functools.partial(listener, v), self.result)
        return v


# --- sync ----------------------------------------------------------------------------------


class _Counted:
    """An embedder that hands its texts to ``inner`` about a second's worth at a time and
    counts them, so the panel can report progress while a large batch is in the model's hands."""

    def __init__(self, inner: Any, seconds: float = 1.0):
        self.inner = inner
        self.seconds = seconds
        self.piece = 4  # texts a call, until the first call is timed
        self.texts = 0  # texts embedded so far
        self.calls: list[int] = []  # texts the pipeline handed over in each call, in order
        if hasattr(inner, "encode"):
            self.encode = self._encode

    def _pieces(self, texts: list[str], call: Callable[[list[str]], Any]) -> list[Any]:
        self.calls.append(len(texts))
        out = []
        i = 0
        while i < len(texts):
            part = texts[i:i + self.piece]
            t0 = time.perf_counter()
            out.append(call(part))
            per_text = (time.perf_counter() - t0) / len(part)
            self.piece = max(1, min(256, int(self.seconds / per_text) if per_text > 0 else 256))
            self.texts += len(part)
            i += len(part)
        return out

    def _encode(self, texts: list[str]) -> Any:
        import numpy as np

        parts = self._pieces(texts, self.inner.encode)
        return np.concatenate(parts) if parts else self.inner.encode(texts)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [v for part in self._pieces(texts, self.inner.embed_documents) for v in part]

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


#: lanes of the panel's sync(), spelled out: the first claim's estimate counts on them
_LANES = 2

_STATUS_COLUMNS = ["pending", "claimable", "retrying", "failed", "embedded_rows", "source_rows",
                   "coverage_pct", "oldest_pending_age"]


class SyncPanel(_Refreshing, _Fallback, W.VBox):
    """Live status, Run one batch / Sync all / Stop, progress with rate and ETA, errors with Retry.

    Sync all runs ``Vectorizer.sync()`` (its batches sized to take about ``batch_seconds``)
    in a background thread on a second handle of the vectorizer, so the kernel stays
    responsive; the bar, the rate and the status table move every ``poll`` seconds while it
    runs, and every ``refresh`` seconds otherwise. Give it the vectorizer, or the SetupPanel
    (it then waits for Create)."""

    def __init__(self, vectorizer: Vectorizer | SetupPanel, refresh: float = 2.0, *,
                 batch_seconds: float = 1.0, poll: float = 0.5):
        setup = vectorizer if isinstance(vectorizer, SetupPanel) else None
        v = setup.vectorizer if setup is not None else vectorizer
        if setup is None and not isinstance(v, Vectorizer):
            raise PgvzError(
                f"expected a Vectorizer (or the SetupPanel itself), got {type(vectorizer).__name__}"
                + ("; setup.vectorizer is None until Create is pressed: pass the panel, "
                   "SyncPanel(setup), and it waits for Create" if vectorizer is None else ""))
        self.v: Vectorizer | None = v
        self.batch_seconds = batch_seconds
        self.poll = poll
        self.status_html = W.HTML()
        self.batch_button = W.Button(description="Run one batch", icon="step-forward",
                                     layout=W.Layout(width="auto"))  # its label is not cut
        self.sync_button = W.Button(description="Sync all", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.progress = W.IntProgress(value=0, min=0, max=1, description="Sync")
        self.progress.add_class("pgvz-progress")  # a stable name for browser tests
        self.rate = W.HTML()
        self.errors_html = W.HTML()
        self.retry_button = W.Button(description="Retry failed", icon="redo", layout=W.Layout(width="auto"))
        self.message = W.HTML()
        self.code = W.HTML()
        self.batch_button.on_click(lambda _: _guarded(self.run_batch, self.message))
        self.sync_button.on_click(lambda _: _guarded(self.sync_all, self.message))
        self.stop_button.on_click(lambda _: _guarded(self.stop, self.message))
        self.retry_button.on_click(lambda _: _guarded(self.retry, self.message))
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._runner: Vectorizer | None = None
        self._watch: Vectorizer | None = None
        self._lock = threading.Lock()
        self._counter: _Counted | None = None
        self._base = 0  # rows done by earlier runs of this panel that were stopped (resume)
        self._resume = False
        self._first_rows = 0  # rows of the smallest claim sync()'s first round can make (see _tick)
        self.thread: threading.Thread | None = None
        self.last_error: BaseException | None = None
        self.last_report: Any = None
        super().__init__([
            self.status_html, W.HBox([self.batch_button, self.sync_button, self.stop_button]),
            W.HBox([self.progress, self.rate]), self.message,
            W.HTML("<b>Failed rows</b>"), self.errors_html, self.retry_button, self.code,
        ])
        self.add_class("pgvz-sync")
        if self.v is None:
            self._buttons(False)
            self.message.value = "<i>waiting for Create in the SetupPanel…</i>"
            assert setup is not None
            setup._on_create.append(self.attach)
        else:
            self.attach(self.v)
        if refresh:
            threading.Thread(target=self._auto_refresh, args=(refresh,), daemon=True).start()

    def summary(self) -> str:
        if self.v is None:
            return "waiting for a vectorizer"
        return f"{self.v.name}: {html.unescape(re.sub('<[^>]+>', ' ', self.message.value)).strip() or 'idle'}"

    def attach(self, v: Vectorizer) -> None:
        """Follow ``v`` (called by the SetupPanel's Create)."""
        for handle in (self._runner, self._watch):
            if handle is not None:
                handle.close()
        self._runner = self._watch = None
        self.v = v
        self._buttons(True)
        self.message.value = ""
        self.code.value = f"<pre>v = pgvz.Vectorizer.open(db, {html.escape(repr(v.name))})\nv.sync()</pre>"
        _guarded(self.update, self.message)

    def _buttons(self, enabled: bool) -> None:
        for b in (self.batch_button, self.sync_button, self.retry_button):
            b.disabled = not enabled

    def _vec(self) -> Vectorizer:
        if self.v is None:
            raise PgvzError("no vectorizer yet: press Create in the SetupPanel first")
        return self.v

    def _may_refresh(self) -> bool:
        return self.v is not None and (self.thread is None or not self.thread.is_alive())

    def close(self) -> None:
        if hasattr(self, "_closed"):  # not when __init__ refused its argument
            self._closed.set()
            self._stop.set()
            if self.thread is not None:
                self.thread.join(5)
            for handle in (self._runner, self._watch):
                if handle is not None:
                    handle.close()
        super().close()

    def _show_status(self, st) -> None:
        wal = st["capture"][0] == "wal"
        error = (self._runner.capture_error if self._runner is not None else None) or st["capture_error"][0]
        self.status_html.value = _table_html(st, _STATUS_COLUMNS + (["wal_status", "slot_lag_bytes"] if wal else []))
        if wal and (st["wal_status"][0] in (None, "unreserved", "lost") or error):
            # a slot that is gone, about to be, or that this role cannot read: changes stop arriving
            self.status_html.value += (
                "<p style='color:#b00'>The WAL capture is stalled: "
                + html.escape(error or f"the slot is {st['wal_status'][0] or 'missing'}")
                + ". A worker whose role has REPLICATION captures; a lost slot is made again at the "
                "next sync, and every row queued (unchanged ones cost no model call).</p>")
        if st["uncovered_partitions"][0]:
            self.status_html.value += (
                "<p style='color:#b00'>Writes aimed directly at these partitions are not queued: "
                f"{html.escape(st['uncovered_partitions'][0])}. Run create() again as their "
                "owner to cover them.</p>")

    def update(self) -> None:
        """Redraw the status and errors tables from the database."""
        st, errors = self._read(errors=True)
        self._show_status(st)
        self.errors_html.value = _table_html(errors)

    def run_batch(self) -> int:
        """Process one batch in the foreground; returns rows claimed."""
        result, _ = self._vec().process()
        self.message.value = html.escape(f"one batch: {result.claimed} rows ({result.answer})")
        self.update()
        return result.claimed

    def _read(self, errors: bool = False) -> tuple[Any, Any]:
        """(status, failed rows or None), read on the panel's own handle of the vectorizer:
        its refresh threads must not share a connection with the caller's ``v``."""
        v = self._vec()
        with self._lock:
            if self._watch is None:
                self._watch = Vectorizer.open(v.db, v.name, embedder=v.embedder)
            return self._watch.status(), (self._watch.errors() if errors else None)

    def _get_runner(self) -> Vectorizer:
        # a second handle, with its own connections: the panel reads the status on the
        # first while sync() works on this one
        v = self._vec()
        if self._runner is not None and (self._counter is None or self._counter.inner is not v.embedder):
            self._runner.close()  # v.embedder was replaced (a fixed model): sync with the new one
            self._runner = None
        if self._runner is None:
            self._counter = _Counted(v.embedder)
            self._runner = Vectorizer.open(v.db, v.name, embedder=self._counter)
        return self._runner

    def sync_all(self, wait: bool = False) -> threading.Thread:
        """Drain the queue in a background thread (``wait=True`` joins it). After a Stop, the
        bar goes on counting from where it stopped."""
        if self.thread is not None and self.thread.is_alive():
            return self.thread
        try:
            runner = self._get_runner()
            st, _ = self._read()
        except Exception:
            self.progress.bar_style = "danger"
            raise
        self._stop.clear()
        pending = int(st["pending"][0])
        # rows waiting out a retry delay are pending but no claim takes them now
        self._first_rows = self._first_claim_rows(int(st["claimable"][0]), runner.config.batch_size)
        if not self._resume:
            self._base = 0
        self.progress.max = max(self._base + pending, 1)
        self.progress.value = self._base
        self.progress.bar_style = "info"
        self.message.value = f"syncing {pending} rows…"
        self.sync_button.disabled, self.stop_button.disabled = True, False
        self.stop_button.description = "Stop"
        self.thread = threading.Thread(target=self._run, args=(runner, pending, int(st["failed"][0])),
                                       daemon=True)
        self.thread.start()
        if wait:
            self.thread.join()
        return self.thread

    @staticmethod
    def _first_claim_rows(claimable: int, batch_size: int) -> int:
        """The fewest rows a claim of sync()'s first round can hold: the first call to the
        model may be any lane's, and the last lane's claim takes what the others left."""
        claims = [min(batch_size, claimable - i * batch_size) for i in range(_LANES)]
        return min(c for c in claims if c > 0) if claimable > 0 else 0

    def _tick(self, start_pending: int, t0: float, mark: tuple[int, int], *, estimate: bool = True) -> None:
        """Move the bar, the rate and the status table to what the database holds now; with
        ``estimate``, the bar also counts the rows of a batch still in the model's hands
        (from the chunks embedded so far), never up to the end before they are written.
        ``mark``: the counter's (texts, calls) when this run started."""
        st, _ = self._read()
        pending = int(st["pending"][0])
        done = max(start_pending - pending, 0)
        counter = self._counter
        texts = (counter.texts if counter else 0) - mark[0]
        shown = done
        if estimate and pending:
            first = counter.calls[mark[1]] if counter is not None and len(counter.calls) > mark[1] else 0
            if not done and first:
                # the first claim: nothing written yet to learn chunks per row from (or only
                # other rows'), so count the first call's share of its own claim's rows
                estimated = min(texts, first) * self._first_rows // first
            else:
                rows = int(st["embedded_rows"][0])
                per_row = max(int(st["embedded_chunks"][0]) / rows, 1.0) if rows else 1.0
                estimated = int(texts / per_row)
            shown = max(done, min(estimated, done + pending - 1))
        self.progress.max = max(self._base + done + pending, 1)
        self.progress.value = max(self._base + shown, self.progress.value if estimate else 0)
        elapsed = max(time.perf_counter() - t0, 1e-9)
        rate = done / elapsed
        if rate:
            speed = f"{rate:.1f} rows/s, ETA {pending / rate:.0f} s" if pending else f"{rate:.1f} rows/s"
        elif texts:  # the first batch is still with the model: no row written to time yet
            speed = f"{texts / elapsed:.1f} chunks/s, the first batch not written yet"
        else:
            speed = "waiting for the model's first answer"
        self.rate.value = (f"{self._base + done} of {self.progress.max} rows written, {texts} chunks "
                           f"embedded, {speed}")
        self._show_status(st)

    def _run(self, runner: Vectorizer, start_pending: int, failed_before: int) -> None:
        t0 = time.perf_counter()
        mark = (self._counter.texts, len(self._counter.calls)) if self._counter else (0, 0)
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["report"] = runner.sync(progress=False, stop=self._stop, lanes=_LANES,
                                                batch_seconds=self.batch_seconds)
            except BaseException as exc:  # noqa: BLE001 - shown in the panel below
                outcome["error"] = exc

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(self.poll)
                with contextlib.suppress(Exception):  # a poll that fails is retried at the next
                    self._tick(start_pending, t0, mark)
            self._finish(outcome, start_pending, failed_before, t0, mark)
        except Exception as exc:  # noqa: BLE001 - the thread must not die silently
            self.last_error = exc
            self.message.value = _error_html(exc)
            self.progress.bar_style = "danger"
        finally:
            self.sync_button.disabled, self.stop_button.disabled = False, True
            self.stop_button.description = "Stop"
            with contextlib.suppress(Exception):  # the errors table is a nicety after a sync
                self.errors_html.value = _table_html(self._read(errors=True)[1])

    def _finish(self, outcome: dict[str, Any], start_pending: int, failed_before: int, t0: float,
                mark: tuple[int, int]) -> None:
        self._tick(start_pending, t0, mark, estimate=False)
        st, _ = self._read()
        report = outcome.get("report")
        self.last_report = report
        if "error" in outcome:
            self.last_error = outcome["error"]
            self.progress.bar_style = "danger"
            self._resume, self._base = True, self.progress.value
            self.message.value = (_error_html(outcome["error"])
                                  + "<small>Fix the cause, then Sync all resumes.</small>")
            return
        if report is not None and report.answer == "stopped":
            self._resume, self._base = True, self.progress.value
            self.progress.bar_style = "warning"
            self.message.value = html.escape(
                f"stopped: {self.progress.value} of {self.progress.max} rows done; Sync all resumes")
            return
        self._resume, self._base = False, 0
        failed_run = max(int(st["failed"][0]) - failed_before, report.failed if report is not None else 0, 0)
        failed, retrying = int(st["failed"][0]), int(st["retrying"][0])
        if failed or retrying:
            # failed rows are not done: the bar does not count them, and it is not green
            self.progress.value = max(self.progress.value - failed_run, 0)
            self.progress.bar_style = "warning"
            self.message.value = (
                f"<span style='color:#b45f06'><b>{failed} failed</b>, {retrying} waiting to be "
                f"retried; {html.escape(str(report))}. See Failed rows below: fix the cause, then "
                "Retry failed.</span>")
        else:
            self.progress.value = self.progress.max
            self.progress.bar_style = "success"
            self.message.value = html.escape(str(report))

    def stop(self) -> None:
        """Stop after the current batch (a batch in the model's hands goes back whole)."""
        self._stop.set()
        if self.thread is not None and self.thread.is_alive():
            self.stop_button.disabled = True
            self.stop_button.description = "Stopping…"
            self.message.value = "stopping after this batch…"

    def retry(self) -> int:
        n = self._vec().retry_failed()
        self.message.value = f"{n} failed rows queued again"
        self.update()
        return n


# --- search --------------------------------------------------------------------------------

# words not worth marking: they are in every text ("the" would light up half the page)
_STOPWORDS = frozenset([
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "how",
    "i", "in", "is", "it", "its", "my", "of", "on", "or", "our", "so", "that", "the", "their",
    "them", "they", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who",
    "why", "will", "with", "you", "your", "about", "into", "than", "then", "there", "these",
    "those", "do", "does", "did", "can", "not", "no"
])


_TIME_VALUE = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d")  # a timestamp as jsonb metadata holds it


def highlight(text: str, query: str) -> str:
    """HTML-escaped ``text`` with the query's whole words (not stopwords) wrapped in <mark>."""
    words = sorted({w for w in re.findall(r"\w+", query.lower()) if w not in _STOPWORDS and len(w) > 1},
                   key=len, reverse=True)
    if not words:
        return html.escape(text)
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)
    out, pos = [], 0
    for m in pattern.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        out.append(f"<mark>{html.escape(m.group(0))}</mark>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


class SearchPanel(_Fallback, W.VBox):
    """Query box (Enter searches), k, metadata filters from the data, time range, hybrid
    toggle; results with highlighted words and the source row; a second query side by side;
    an interactive 2-D map; the code to copy. Changing k, a filter or the range searches again."""

    def __init__(self, vectorizer: Vectorizer, filters: list[str] | None = None, map_points: int = 400):
        if not isinstance(vectorizer, Vectorizer):
            raise PgvzError(f"expected a Vectorizer, got {type(vectorizer).__name__}"
                            + ("; setup.vectorizer is None until Create is pressed" if vectorizer is None else ""))
        self.v = vectorizer
        self.map_points = map_points
        self.query = W.Text(description="Query", placeholder="Blogs about cats", continuous_update=False,
                            layout=W.Layout(width="60%"))
        self.compare = W.Text(description="Compare", placeholder="(optional) a second query",
                              continuous_update=False)
        self.k = W.IntSlider(value=5, min=1, max=50, description="k", continuous_update=False)
        self.hybrid = W.Checkbox(value=False, description="hybrid (full text + vector)")
        time_col = vectorizer.config.time_column
        keys = filters if filters is not None else list(vectorizer.config.metadata)
        # a time column is filtered with From/Until, not by one exact timestamp
        values = {k: self._values(k) for k in keys if k != time_col}
        if filters is None:  # nor, unless asked for, any other key that holds times
            values = {k: vals for k, vals in values.items()
                      if not (vals and all(isinstance(x, str) and _TIME_VALUE.match(x) for x in vals))}
        self.filters = {key: W.Dropdown(description=key, style=_WIDE, index=0,
                                        options=[("(any)", None)] + [(str(v), v) for v in vals])
                        for key, vals in values.items()}
        self.title_column = vectorizer._title_column()
        self.start = W.DatePicker(description="From", disabled=not time_col)
        self.end = W.DatePicker(description="Until", disabled=not time_col)
        self.show_map = W.Checkbox(value=True, description="2-D map (PCA)")
        self.button = W.Button(description="Search", button_style="primary", icon="search")
        self.results = W.HTML()
        self.map = W.VBox(layout=W.Layout(display="none"))  # shown once drawn
        self.map_data: EmbeddingMap | None = None
        self.code = W.Textarea(description="Code", layout=W.Layout(width="95%", height="60px"))
        self.button.on_click(lambda _: self._guard(self.search))
        self.last: list = []
        for w in (self.query, self.compare, self.k, self.hybrid, self.start, self.end, self.show_map,
                  *self.filters.values()):
            w.observe(lambda _: self._rerun(), names="value")
        super().__init__([
            W.HBox([self.query, self.button]), self.compare, W.HBox([self.k, self.hybrid, self.show_map]),
            W.HBox(list(self.filters.values())), W.HBox([self.start, self.end]),
            self.results, self.map, self.code,
        ])
        self.add_class("pgvz-search")

    def summary(self) -> str:
        if not self.last:
            return f"search {self.v.name}"
        hits = "; ".join(f"{r['rank']}. {str(r.get('text') or r['contents'])[:80]}"
                         for r in self.last[0].to_dict("records"))
        return f"{self.query.value!r}: {hits}"

    def _guard(self, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - every handler error belongs in the panel
            self.results.value = _error_html(exc)

    def _rerun(self) -> None:
        """Enter in a query box, or a change of k, a filter or the range: search again."""
        if self.query.value.strip() or self.compare.value.strip():
            self._guard(self.search)

    def _values(self, key: str, limit: int = 100) -> list[Any]:
        """Distinct values of a metadata key in the destination, for its dropdown; not a JSON
        null, which would read as "(any)"."""
        with self.v.db.connect() as conn:
            rows = conn.execute(q.metadata_values(self.v.destination), [key, limit]).fetchall()
        return [r[0] for r in rows if r[0] is not None]

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
            raise PgvzError("type a query first (Enter searches)")
        frames = [self.v.search(s, **self.search_args(s)) for s in queries]
        self.last = frames
        columns = [self._results_html(s, f) for s, f in zip(queries, frames)]
        self.results.value = "<div style='display:flex;gap:2em'>" + "".join(
            f"<div style='flex:1'>{c}</div>" for c in columns) + "</div>"
        self.code.value = self.code_text()
        if self.show_map.value:
            self.draw_map()
        else:
            self.map.layout.display = "none"
        return frames

    def draw_map(self) -> EmbeddingMap:
        """The map of the first query: its neighbourhood and every hit, interactive when
        jupyter-scatter is installed, else a PNG."""
        args = self.search_args(self.query.value)
        m = embedding_map(self.v, self.query.value.strip() or self.compare.value.strip(), self.last[0],
                          limit=self.map_points, filter=args.get("filter"), start=args.get("start"),
                          end=args.get("end"))
        self.map_data = m
        caption = W.HTML(f"<small>{html.escape(m.caption())}; hover a point for its text</small>")
        try:
            view: W.Widget = m.widget()
        except ImportError:
            view = W.Image(value=m.png(), format="png")
        self.map.children = [caption, view]
        self.map.layout.display = None
        return m

    def _results_html(self, query: str, frame) -> str:
        if len(frame) == 0:
            return f"<b>{html.escape(query)}</b><br><i>no results</i>"
        sources = self._source_rows(frame)
        scored = "score" in frame.columns
        col = self.title_column
        rows = []
        for rec, source in zip(frame.to_dict("records"), sources):
            meta = ", ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in rec.items()
                             if k not in ("rank", "distance", "contents", "id", "score", "title", "text", col))
            # the chunk's own text when the frame has it (not the template's prefix), as embedded else
            body = rec.get("text") or rec["contents"]
            # the row's own title (a metadata key, else its source row's column) before the
            # frame's, which is the table and key ("tickets 3") when neither holds one
            found = rec.get(col) if col in rec else (source or {}).get(col) if col else None
            text = found if found not in (None, "") else rec.get("title")
            title = f"<b class='pgvz-title'>{html.escape(str(text))}</b><br>" if text not in (None, "") else ""
            src = "" if source is None else (
                "<details><summary>source row</summary><pre style='white-space:pre-wrap'>"
                + html.escape("\n".join(f"{k}: {v}" for k, v in source.items())) + "</pre></details>")
            score = f"<td>{rec['score']:.4f}</td>" if scored else ""
            rows.append(
                f"<tr class='pgvz-hit' style='vertical-align:top'><td>{rec['rank']}</td>{score}"
                f"<td>{rec['distance']:.4f}</td><td>{title}<div class='pgvz-contents' style='white-space:pre-wrap'>"
                f"{highlight(str(body), query)}</div>"
                f"<small>{meta}</small>{src}</td></tr>")
        head = "<th>rank</th>" + ("<th title='fused rank score (ordering)'>score</th>" if scored else "")
        note = ("<br><small>hybrid: ranked by the fused score (vector + full text), "
                "not by distance alone</small>" if scored else "")
        return (f"<b>{html.escape(query)}</b>{note}<style>.pgvz-results td, .pgvz-results th "
                "{padding:2px 8px;text-align:left}</style>"
                f"<table class='pgvz-results'><thead><tr>{head}<th>distance</th><th>contents</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def _source_rows(self, frame) -> list[dict | None]:
        key_col = self.v.config.metadata_key
        if key_col not in frame.columns:
            return [None] * len(frame)
        found = _source_rows(self.v, list(frame[key_col]))
        return [found.get(str(k)) for k in frame[key_col]]


def _source_rows(v: Vectorizer, keys: list[Any]) -> dict[str, dict[str, Any]]:
    """The source rows whose key is one of ``keys`` (metadata key values), by ``str(key)``;
    none for a composite key."""
    queue, _, _ = v._ready()
    if len(queue.keys) != 1 or not keys:
        return {}
    key = queue.keys[0]
    with v.db.connect() as conn:
        cur = conn.execute(q.source_rows(v.source, key), [sorted({str(k) for k in keys if k is not None})])
        names = column_names(cur)
        return {str(r[names.index(key)]): dict(zip(names, r)) for r in cur.fetchall()}


def _as_utc(day):
    from datetime import datetime, timezone

    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


# --- the map -------------------------------------------------------------------------------

_KIND_COLOURS = {"chunk": "#9aa5b1", "hit": "#d62728", "query": "#1f77b4"}


class EmbeddingMap:
    """Points of a 2-D PCA projection: ``points`` has x, y, kind (chunk, hit, query), id,
    label and text. Displays as a jupyter-scatter widget (hover shows the text) with a PNG
    fallback for exported HTML."""

    def __init__(self, points, title: str):
        self.points = points
        self.title = title

    def caption(self) -> str:
        kinds = self.points["kind"].value_counts()
        return (f"{self.title}: {int(kinds.get('chunk', 0)) + int(kinds.get('hit', 0))} chunks, "
                f"the {int(kinds.get('hit', 0))} hits in red, the query in blue (PCA)")

    def widget(self) -> Any:
        """An interactive jupyter-scatter plot (ImportError without jupyter-scatter)."""
        import jscatter

        return jscatter.Scatter(
            data=self.points, x="x", y="y", color_by="kind", color_map=_KIND_COLOURS,
            size_by="kind", size_map={"chunk": 7, "hit": 14, "query": 18}, legend=True,  # 5 px: hard to hover
            tooltip=True, tooltip_properties=["kind", "label", "text"], height=380,
        ).show()

    def png(self) -> bytes:
        """The same map as a static PNG (matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pts = self.points
        fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
        for kind, size, marker in (("chunk", 10, "o"), ("hit", 40, "o"), ("query", 160, "*")):
            part = pts[pts["kind"] == kind]
            ax.scatter(part["x"], part["y"], s=size, c=_KIND_COLOURS[kind], marker=marker,
                       label=f"{kind} ({len(part)})")
        ax.set_title(self.title, fontsize=10)
        ax.legend(loc="best", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        plt.close(fig)
        return buf.getvalue()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        import base64

        data: dict[str, Any] = {"text/plain": self.caption(),
                                "image/png": base64.b64encode(self.png()).decode()}
        with contextlib.suppress(ImportError):
            view = self.widget()._repr_mimebundle_(**kwargs)
            view = view[0] if isinstance(view, tuple) else view  # anywidget: (data, metadata)
            data.update({k: v for k, v in view.items() if k != "text/plain"})
        return data


def _array(vec) -> Any:
    import numpy as np

    return np.asarray(vec.to_numpy() if hasattr(vec, "to_numpy") else vec, dtype=np.float32)


def embedding_map(v: Vectorizer, query: str, hits, limit: int = 400, *, filter: dict[str, Any] | None = None,
                  start: Any = None, end: Any = None) -> EmbeddingMap:
    """The ``limit`` chunks nearest ``query`` (within ``filter``/``start``/``end``) and every
    row of ``hits`` (a search's DataFrame), projected to 2-D by PCA with the query."""
    import numpy as np
    import pandas as pd

    from .search import search_rows

    qvec = v.embedder.embed_query(query)
    key = v.config.metadata_key
    with v.db.connect(vector=True) as conn:
        rows = search_rows(conn, v.destination, qvec, query, max(limit, 1), filter=filter,
                           start=start, end=end, vectors=True)
        found = {str(r[3]) for r in rows}
        for rec in (hits.to_dict("records") if len(hits) else []):
            if str(rec["id"]) in found or key not in rec:
                continue
            # a hit outside the vector neighbourhood (hybrid: a full-text match): fetch it
            # through its row's chunks
            more = search_rows(conn, v.destination, qvec, query, v.config.max_chunks,
                               filter={key: rec[key]}, vectors=True)
            rows.extend(r for r in more if str(r[3]) == str(rec["id"]))
            found.add(str(rec["id"]))
    if not rows:
        raise PgvzError("the destination holds no vectors yet: sync first")
    vecs = np.stack([_array(r[4]) for r in rows])
    qv = np.asarray(qvec, dtype=np.float32)
    mean = vecs.mean(axis=0)
    _, _, vt = np.linalg.svd(vecs - mean, full_matrices=False)
    axes = np.zeros((vecs.shape[1], 2), dtype=np.float32)
    axes[:, :min(2, len(vt))] = vt[:2].T
    xy = np.vstack([(vecs - mean) @ axes, ((qv - mean) @ axes)[None, :]])
    hit_ids = {str(i) for i in hits["id"]} if len(hits) else set()
    col = v._title_column()
    titles: dict[str, Any] = {}
    if col is not None and col not in v.config.metadata:  # in the source row only
        titles = {k: row.get(col) for k, row in _source_rows(v, [(r[2] or {}).get(key) for r in rows]).items()}
    labels, texts, kinds, ids = [], [], [], []
    for r in rows:
        meta = r[2] or {}
        title = meta.get(col) if col in meta else titles.get(str(meta.get(key)))
        row_id = f"{key}={meta.get(key)}"
        labels.append(row_id if title in (None, "") else f"{title} ({row_id})")
        text = str(r[1])
        texts.append(text if len(text) <= 240 else text[:239] + "…")
        kinds.append("hit" if str(r[3]) in hit_ids else "chunk")
        ids.append(str(r[3]))
    points = pd.DataFrame({
        "x": xy[:, 0], "y": xy[:, 1],
        "kind": pd.Categorical([*kinds, "query"], categories=list(_KIND_COLOURS)),
        "id": [*ids, ""], "label": [*labels, "query"], "text": [*texts, query],
    })
    return EmbeddingMap(points, f"{'.'.join(v.destination)}: {query!r}")


# --- migration -----------------------------------------------------------------------------

# source_rows is in the line beside the bar, and models_in_destination a warning when mixed:
# the table fits a notebook's width
_MIGRATION_COLUMNS = ["role", "model", "destination", "pending", "failed", "embedded_rows", "done_pct", "eta"]


def _boxed(table: str) -> str:
    """A wide table that scrolls sideways instead of being cut, with text-sized lines (an
    HTML widget's lines are as tall as a button)."""
    return f"<div style='overflow-x:auto;line-height:1.4'>{table}</div>"


class MigrationPanel(_Refreshing, _Fallback, W.VBox):
    """A model change in progress (``v.migrate(...)``): the shadow's progress and both sides'
    status, Sync / Stop, the old and new models' hits side by side for your queries, Cutover,
    Rollback and Finish.

    Sync runs ``m.sync()`` in a background thread on handles of its own, as SyncPanel does;
    the bar (the side that is not live: its rows embedded, in %) and the table move every
    ``poll`` seconds while it runs, and every ``refresh`` seconds otherwise (a ``pgvz worker``
    drains the shadow too). Cutover and Rollback call ``m.cutover(wait=wait)``: a shadow with
    at most ``drain`` pending rows is drained first, a larger one needs Sync. Finish asks to be
    pressed twice: it drops a table. Give it the Migration ``v.migrate()`` returned (it holds
    your model objects), or a Vectorizer with a migration in progress (the shadow's model is
    then rebuilt from the catalog, as ``v.migration`` does)."""

    def __init__(self, migration: Any, refresh: float = 2.0, *, k: int = 5, wait: float = 30.0,
                 drain: int = 500, poll: float = 0.5, batch_seconds: float = 1.0):
        from .migration import Migration

        m = migration
        if isinstance(migration, Vectorizer):
            m = migration.migration
            if m is None:
                raise PgvzError(f"{migration.name!r} has no migration in progress; start one with "
                                "m = v.migrate(embedder=..., template=...), then MigrationPanel(m)")
        if not isinstance(m, Migration):
            raise PgvzError(f"expected a Migration (m = v.migrate(embedder=...)) or a Vectorizer with a "
                            f"migration in progress, got {type(migration).__name__}")
        self.m = m
        self.wait, self.drain, self.poll, self.batch_seconds = wait, drain, poll, batch_seconds
        self.header = W.HTML()
        self.status_html = W.HTML()
        self.progress = W.IntProgress(value=0, min=0, max=100, description="Shadow", style=_WIDE)
        self.progress.add_class("pgvz-progress")
        self.rate = W.HTML()
        self.sync_button = W.Button(description="Sync", button_style="primary", icon="play",
                                    tooltip="build the shadow and follow every change (m.sync())")
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.message = W.HTML()
        self.queries = W.Textarea(description="Queries", placeholder="one query a line, e.g.\nBlogs about cats",
                                  layout=W.Layout(width="60%", height="90px"), style=_WIDE)
        self.k = W.BoundedIntText(value=k, min=1, max=50, description="k", layout=W.Layout(width="120px"))
        self.compare_button = W.Button(description="Compare", icon="columns", disabled=True,
                                       tooltip="type a query first (one a line)")
        self.compare_html = W.HTML()
        self.cutover_button = W.Button(description="Cutover", button_style="success", icon="exchange")
        self.rollback_button = W.Button(description="Rollback", button_style="warning", icon="undo")
        self.finish_button = W.Button(description="Finish", button_style="danger", icon="trash")
        self.switch_hint = W.HTML()
        self.result = W.HTML()
        self.code = W.HTML()
        self.sync_button.on_click(lambda _: _guarded(self.sync, self.message))
        self.stop_button.on_click(lambda _: _guarded(self.stop, self.message))
        self.compare_button.on_click(lambda _: _guarded(self.compare, self.compare_html))
        self.cutover_button.on_click(lambda _: _guarded(self.cutover, self.result))
        self.rollback_button.on_click(lambda _: _guarded(self.rollback, self.result))
        self.finish_button.on_click(lambda _: _guarded(self.finish, self.result))
        self.queries.observe(lambda _: self._buttons(), names="value")
        self.k.observe(lambda _: self._show_code(), names="value")
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._runner: Any = None  # a Migration on handles of its own, for the sync thread
        self._watch: Any = None   # another, for the status reads of the refresh threads
        self._st: Any = None      # the last status read
        self._armed = False       # Finish pressed once
        self.finished = False
        self._syncing = False
        self.thread: threading.Thread | None = None
        self.last_report: Any = None
        self.last_compare: Any = None
        super().__init__([
            self.header, self.status_html, W.HBox([self.progress, self.rate]),
            W.HBox([self.sync_button, self.stop_button]), self.message,
            W.HTML("<b>Compare the models</b> <small>(the old model's top hits beside the new one's; "
                   "highlighted: in one list only)</small>"),
            W.HBox([self.queries, W.VBox([self.k, self.compare_button])]), self.compare_html,
            W.HTML("<b>Switch</b>"), W.HBox([self.cutover_button, self.rollback_button, self.finish_button]),
            self.switch_hint, self.result, self.code,
        ])
        self.add_class("pgvz-migration")
        _guarded(self.update, self.message)
        if refresh:
            threading.Thread(target=self._auto_refresh, args=(refresh,), daemon=True).start()

    # --- reading ------------------------------------------------------------------------

    def summary(self) -> str:
        if self.finished:
            return f"{self.m.live.name}: migration finished, {self.m.live.config.model_id()} live"
        st = self._st
        shadow = f"; {st['role'][1]} side {st['done_pct'][1]:.0f}% embedded" if st is not None else ""
        return f"{self.m.live.name}: {self.state}{shadow} ({self._models()})"

    @property
    def state(self) -> str:
        return "finished" if self.finished else self.m.state

    def _models(self) -> str:
        old, new = ((self.m.other, self.m.live) if self.m.state == "cut over" else (self.m.live, self.m.other))
        return f"{old.config.model_id()} → {new.config.model_id()}"

    def _busy(self) -> bool:
        return self._syncing

    def _handles(self, live: Vectorizer, other: Vectorizer) -> Any:
        from .migration import Migration

        return Migration(Vectorizer.open(live.db, live.name, embedder=live.embedder),
                         Vectorizer.open(other.db, other.name, embedder=other.embedder))

    def _drop_handles(self) -> None:
        """After a switch the user's handles swapped models; the panel's own follow them."""
        with self._lock:
            for handle in (self._runner, self._watch):
                if handle is not None:
                    handle.live.close()
                    handle.other.close()
            self._runner = self._watch = None

    def _status(self) -> Any:
        with self._lock:
            if self._watch is None:
                self._watch = self._handles(self.m.live, self.m.other)
            return self._watch.status()

    def update(self) -> None:
        """Redraw the header, the status table, the bar and the buttons from the database."""
        from .errors import NotFound

        if self.finished:
            return
        try:
            st = self._status()
        except NotFound:  # finished or dropped elsewhere
            self._over("the migration is over (finished or dropped in another session)")
            raise
        self._st = st
        state = str(st["state"][0])
        colour = {"building": "#1f77b4", "cut over": "#2e7d32", "rolled back": "#b45f06"}.get(state, "#555")
        self.header.value = (f"<b>Migration of {html.escape(self.m.live.name)}</b>: "
                             f"{html.escape(self._models())} · <b style='color:{colour}'>{html.escape(state)}</b>")
        self.status_html.value = _boxed(_table_html(st, _MIGRATION_COLUMNS))
        mixed = [str(r) for r, models in zip(st["role"], st["models_in_destination"]) if "," in str(models)]
        if mixed:
            self.status_html.value += ("<p style='color:#b00020'>The " + html.escape(" and ".join(mixed))
                                       + " destination holds vectors of more than one model: sync it.</p>")
        done = float(st["done_pct"][1])
        self.progress.value = int(done) if done < 100 else 100
        self.progress.description = "New model" if state != "cut over" else "Old model"
        if not self._busy():
            self.rate.value = html.escape(
                f"{int(st['embedded_rows'][1])} of {int(st['source_rows'][1])} rows embedded by the "
                f"{st['role'][1]} side, {int(st['pending'][1])} pending")
        self._buttons()
        self._show_code()

    def _may_refresh(self) -> bool:
        return not self._busy()

    def _refresh_over(self) -> bool:
        return self.finished

    def _buttons(self) -> None:
        """Enable what can work now; say why the switch buttons cannot."""
        st, busy, state = self._st, self._busy(), self.state
        over = self.finished
        self.sync_button.disabled = over or busy
        self.stop_button.disabled = not busy
        self.compare_button.disabled = over or not self._query_list()
        self.compare_button.tooltip = ("compare the models' top k for each query" if self._query_list()
                                       else "type a query first (one a line)")
        why = None
        if over:
            why = "the migration is finished"
        elif busy:
            why = "a sync is running: wait for it, or Stop"
        elif st is not None:
            pending, failed, role = int(st["pending"][1]), int(st["failed"][1]), str(st["role"][1])
            if failed:
                why = (f"the {role} side has {failed} failed rows: see m.other.errors(), fix the cause, then "
                       "m.other.retry_failed() and Sync")
            elif pending > self.drain:
                why = f"the {role} side has {pending} pending rows: Sync first"
        forward = state in ("building", "rolled back")
        self.cutover_button.disabled = why is not None or not forward
        self.rollback_button.disabled = why is not None or state != "cut over"
        self.finish_button.disabled = over or busy or state == "building"
        drops = "the old vectors" if state == "cut over" else "the new vectors (abandoning the migration)"
        self.finish_button.tooltip = f"drop {drops}" if state != "building" else "cut over first"
        if self._armed and not self.finish_button.disabled:
            self.finish_button.description = "Really drop?"
        else:
            self._armed = False
            self.finish_button.description = "Finish"
        if over:
            self.switch_hint.value = ""
        elif why is not None:
            self.switch_hint.value = f"<i style='color:#b45f06'>{html.escape(why)}</i>"
        elif state == "building":
            self.switch_hint.value = ("<small>Cutover makes the new vectors live in one transaction; Finish "
                                      "(drop the old ones) comes after it. To abandon instead: "
                                      "<code>m.finish(discard=True)</code>.</small>")
        else:
            self.switch_hint.value = f"<small>Finish drops {html.escape(drops)}.</small>"

    def _query_list(self) -> list[str]:
        return [line.strip() for line in self.queries.value.splitlines() if line.strip()]

    def _show_code(self) -> None:
        queries = self._query_list()[:3]
        lines = [f"m = pgvz.Vectorizer.open(db, {self.m.live.name!r}).migration", "m.status()",
                 "m.sync()"]
        if queries:
            lines.append(f"m.compare({queries!r}, k={self.k.value})")
        lines.append(f"m.cutover(wait={self.wait:g})  # then m.rollback(), or m.finish()")
        self.code.value = "<pre>" + html.escape("\n".join(lines)) + "</pre>"

    def _over(self, why: str) -> None:
        self.finished = True
        self._closed.set()
        self.progress.bar_style = ""
        self.result.value = html.escape(why)
        self._buttons()

    # --- sync ---------------------------------------------------------------------------

    def sync(self, wait: bool = False) -> threading.Thread:
        """``m.sync()`` in a background thread (``wait=True`` joins it): the side that is not
        live first, then the live one."""
        if self._busy() and self.thread is not None:
            return self.thread
        if self.finished:
            raise PgvzError("the migration is finished: nothing to sync (use the SyncPanel of the vectorizer)")
        with self._lock:
            if self._runner is None:
                self._runner = self._handles(self.m.live, self.m.other)
            runner = self._runner
        st = self._status()
        self._st = st
        self._stop.clear()
        self.progress.bar_style = "info"
        self.message.value = html.escape(f"syncing: {int(st['pending'][1])} rows pending on the "
                                         f"{st['role'][1]} side…")
        thread = threading.Thread(target=self._run, args=(runner, int(st["pending"][1])), daemon=True)
        self.thread, self._syncing = thread, True
        self._buttons()
        thread.start()
        if wait:
            thread.join()
        return thread

    def _tick(self, start_pending: int, t0: float) -> None:
        st = self._status()
        self._st = st
        self.status_html.value = _boxed(_table_html(st, _MIGRATION_COLUMNS))
        done = float(st["done_pct"][1])
        self.progress.value = int(done) if done < 100 else 100
        pending = int(st["pending"][1])
        written = max(start_pending - pending, 0)
        rate = written / max(time.perf_counter() - t0, 1e-9)
        eta = f", ETA {pending / rate:.0f} s" if rate and pending else ""
        self.rate.value = html.escape(f"{written} of {start_pending} rows written, {rate:.1f} rows/s{eta}")

    def _run(self, runner: Any, start_pending: int) -> None:
        t0 = time.perf_counter()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["report"] = runner.sync(progress=False, stop=self._stop, batch_seconds=self.batch_seconds)
            except BaseException as exc:  # noqa: BLE001 - shown in the panel below
                outcome["error"] = exc

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(self.poll)
                with contextlib.suppress(Exception):  # a poll that fails is retried at the next
                    self._tick(start_pending, t0)
            self._tick(start_pending, t0)
            with self._lock:  # the status table's ETA: from the rate of this sync
                if self._watch is not None:
                    self._watch._rates.update(runner._rates)
            report = self.last_report = outcome.get("report")
            st = self._st
            if "error" in outcome:
                self.progress.bar_style = "danger"
                self.message.value = _error_html(outcome["error"]) + "<small>Fix the cause, then Sync resumes.</small>"
            elif report is not None and report.answer == "stopped":
                self.progress.bar_style = "warning"
                self.message.value = html.escape(f"stopped: {report}; Sync resumes")
            elif int(st["failed"][1]):
                self.progress.bar_style = "warning"
                self.message.value = (f"<span style='color:#b45f06'><b>{int(st['failed'][1])} failed</b> on the "
                                      f"{html.escape(str(st['role'][1]))} side; {html.escape(str(report))}. "
                                      "See m.other.errors(): fix the cause, then m.other.retry_failed() and "
                                      "Sync.</span>")
            else:
                self.progress.bar_style = "success"
                self.message.value = html.escape(str(report))
        except Exception as exc:  # noqa: BLE001 - the thread must not die silently
            self.progress.bar_style = "danger"
            self.message.value = _error_html(exc)
        finally:
            self._syncing = False
            with contextlib.suppress(Exception):
                self.update()
            self._buttons()

    def stop(self) -> None:
        """Stop after the current batch (a batch in the model's hands goes back whole)."""
        self._stop.set()
        if self._busy():
            self.stop_button.disabled = True
            self.message.value = "stopping after this batch…"

    # --- compare ------------------------------------------------------------------------

    def compare(self) -> Any:
        """``m.compare(queries, k)`` for the queries typed, shown side by side; returns the frame."""
        queries = self._query_list()
        if not queries:
            raise PgvzError("type a query first (one a line) in the Queries box")
        k = int(self.k.value)
        found = self.m.compare(queries, k=k)
        self.last_compare = found
        self.compare_html.value = self._compare_table(found, k)
        self._show_code()
        return found

    def _compare_table(self, found: Any, k: int) -> str:
        col = f"overlap_at_{k}"
        note = ""
        if self._st is not None and float(self._st["done_pct"][1]) < 100:
            note = (f"<small style='color:#b45f06'>The {html.escape(str(self._st['role'][1]))} side is "
                    f"{float(self._st['done_pct'][1]):.0f}% built: its hits come from the rows embedded "
                    "so far.</small>")
        rows = []
        for rec in found.to_dict("records"):
            old, new = [str(t) for t in rec["old_top"]], [str(t) for t in rec["new_top"]]

            def items(titles: list[str], other: list[str]) -> str:
                if not titles:
                    return "<i>no hits</i>"
                return "<ol style='margin:0;padding-left:1.4em'>" + "".join(
                    f"<li>{html.escape(t)}</li>" if t in other else
                    f"<li class='pgvz-only' style='background:#fff3c4'>{html.escape(t)}</li>"
                    for t in titles) + "</ol>"

            overlap = float(rec[col])
            rows.append(f"<tr class='pgvz-compare-row' style='vertical-align:top'><td><b>{html.escape(str(rec['query']))}"
                        f"</b></td><td>{overlap:.0%}<br><small>{round(overlap * k)} of {k}</small></td>"
                        f"<td>{items(old, new)}</td><td>{items(new, old)}</td></tr>")
        first = found.to_dict("records")[0] if len(found) else {}
        return _boxed(
            f"{note}<style>.pgvz-compare td, .pgvz-compare th {{padding:4px 10px;text-align:left}}</style>"
            "<table class='pgvz-compare'><thead><tr><th>query</th>"
            f"<th>overlap@{k}</th><th>old: {html.escape(str(first.get('old_model', '')))}</th>"
            f"<th>new: {html.escape(str(first.get('new_model', '')))}</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")

    # --- switching ----------------------------------------------------------------------

    def _switch(self, action: Callable[[], Any], what: str) -> None:
        if self._busy():
            raise PgvzError("a sync is running: wait for it (or press Stop), then switch")
        try:
            action()
        finally:
            self._drop_handles()
            self._armed = False
            with contextlib.suppress(Exception):
                self.update()
        live = self.m.live
        lock = f"; the switch held its lock for {self.m.lock_ms:.0f} ms" if self.m.lock_ms is not None else ""
        self.result.value = "<div style='line-height:1.4'>" + html.escape(
            f"{what}: readers of {'.'.join(live.destination)} now read the vectors of "
            f"{live.config.model_id()}{lock}") + "</div>"

    def cutover(self) -> None:
        """``m.cutover(wait=...)``: the new vectors live, in one transaction; shows the lock time."""
        self._switch(lambda: self.m.cutover(wait=self.wait), "cut over")

    def rollback(self) -> None:
        """``m.rollback(wait=...)``: the old vectors live again (they were kept in sync)."""
        self._switch(lambda: self.m.rollback(wait=self.wait), "rolled back")

    def finish(self) -> None:
        """``m.finish()``, on the second press: drops the side that is not live."""
        if self.state == "building":
            raise PgvzError("not cut over yet: Finish would drop the new vectors; press Cutover first "
                            "(to abandon the migration: m.finish(discard=True))")
        if self._busy():
            raise PgvzError("a sync is running: wait for it (or press Stop), then Finish")
        if not self._armed:
            self._armed = True
            self._buttons()
            drops = ".".join(self.m.other.destination)
            self.result.value = (f"Finish drops <b>{html.escape(drops)}</b> ({html.escape(self.m.other.config.model_id())})"
                                 " and its queue: press it again to confirm")
            return
        dropped, model = ".".join(self.m.other.destination), self.m.other.config.model_id()
        self._drop_handles()
        self.m.finish()
        self._over("")
        live = self.m.live
        self.header.value = (f"<b>Migration of {html.escape(live.name)}</b>: <b>finished</b>, "
                             f"{html.escape(live.config.model_id())} live")
        self.status_html.value = _boxed(_table_html(live.status(), ["name", "pending", "failed", "embedded_rows",
                                                                    "coverage_pct"]))
        self.result.value = "<div style='line-height:1.4'>" + html.escape(
            f"finished: {dropped} ({model}) dropped; {'.'.join(live.destination)} holds the vectors of "
            f"{live.config.model_id()}") + "</div>"

    def close(self) -> None:
        if hasattr(self, "_closed"):  # not when __init__ refused its argument
            self._closed.set()
            self._stop.set()
            if self.thread is not None:
                self.thread.join(5)
            self._drop_handles()
        super().close()
