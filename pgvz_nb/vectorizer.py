"""User-facing vectorizers: ``Vectorizer`` (the built-in pipeline) and ``Vectorize`` (the
callback API of timescale_vector's PgVectorizer).

``Vectorize`` keeps the original's constructor, attributes, ``register()`` and
``process(embed_and_write, batch_size=10, autoregister=True) -> int``, and fixes what
the original gets wrong: its trigger names the queue without a schema (every write to
a table outside ``public`` fails), its queue key is ``int`` (uuid keys fail), its
advisory lock key is the table OID, and an UPDATE that changes nothing re-queues.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import psycopg

from . import sql as q
from .db import Database, as_database, column_names, first
from .errors import (
    CallbackFailed,
    ConfigConflict,
    DimensionMismatch,
    NotFound,
    PgvzError,
    Reconfigured,
    boundary,
    connection_lost,
    translate,
)
from .queue import (
    ClaimedRow,
    ProcessResult,
    Queue,
    QueueState,
    Tally,
    check_name,
    check_trusted,
    describe_table,
    locked,
    resolve_keys,
)

if TYPE_CHECKING:
    import pandas as pd

    from .pipeline import Pipeline

__all__ = ["Row", "SyncReport", "Vectorize", "Vectorizer", "vectorizers"]

_log = logging.getLogger("pgvz_nb.sync")


def _create_ident(base: str, suffix: str) -> str:
    """The original's name derivation, kept so default queue names match it."""
    if len(base) + len(suffix) > 62:
        base = base[: 62 - len(suffix)]
    return re.sub(r"[^a-zA-Z0-9_]", "_", f"{base}_{suffix}")


def _callback_inbox_name(name: str, table: str) -> str:
    """The inbox of a callback vectorizer, in schema pgvz: the table's name and a tag of the
    vectorizer's (schema-qualified) name, unique and within 63 bytes."""
    return "ci_" + q.cut(table, 40) + "_" + q.name_tag(name)


def _quote_ident(ident: str) -> str:
    # only for the quoted attributes the original exposes; pgvz_nb itself never uses them in SQL
    return '"{}"'.format(ident.replace('"', '""'))


class Row(dict):
    """A claimed row: a dict (``row['title']``) that also indexes by position (``row[0]``),
    as psycopg2's DictRow does in the original. ``locked_id`` comes first."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


class _SideConnection:
    """An autocommit connection beside the one holding a batch's claim, opened on first use
    and shared by sync's lanes: one records the keys a worker is processing in
    pgvz.in_flight (so that a worker that dies leaves a trace, see ``Queue.process``), one
    reads the source rows and the stored chunks (so that the claim, which lasts as long as
    the model takes, holds no lock on them)."""

    def __init__(self, db: Database, settings: dict[str, str], *, vector: bool = False):
        self.db = db
        self.settings = settings
        self.vector = vector
        self.conn: psycopg.Connection | None = None
        self.lock = threading.Lock()

    def get(self) -> psycopg.Connection:
        with self.lock:
            if self.conn is None or self.conn.closed or self.conn.broken:
                self.conn = self.db.connect(autocommit=True, vector=self.vector, worker=True)
                for name, value in self.settings.items():
                    self.conn.execute(q.set_session(), [name, value])
            return self.conn

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None


def _in_flight_connection(db: Database) -> _SideConnection:
    # a record lost in a server crash costs nothing: that crash ended the batch too
    return _SideConnection(db, {"synchronous_commit": "off"})


def _reader_connection(db: Database) -> _SideConnection:
    # row_security off: a read that row-level security would filter fails instead, so rows
    # hidden from this role are never taken for deleted ones (errors.RowSecurityActive)
    return _SideConnection(db, {"row_security": "off"}, vector=True)


class _Connections:
    """The connections a vectorizer keeps: its own (``_conn``, opened on first use), and the
    in-flight and reader side connections."""

    _conn: psycopg.Connection | None
    _in_flight: _SideConnection
    _reader: _SideConnection
    _capturer: _SideConnection
    _capture_lock: threading.Lock
    #: the last error of the WAL capture on this handle (shown by status()), or None
    capture_error: str | None = None

    def _side_connections(self, db: Database) -> None:
        self._in_flight = _in_flight_connection(db)
        self._reader = _reader_connection(db)
        self._capturer = _SideConnection(db, {})
        self._capture_lock = threading.Lock()

    def close(self) -> None:
        """Close its connections (they open again on next use)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._in_flight.close()
        self._reader.close()
        self._capturer.close()

    def _capture(self, db: Database) -> Any:
        """Queue what the WAL holds for the database's ``capture="wal"`` vectorizers (see
        ``capture.capture``): before each claim, so that sync(), process(), the worker, the
        exported script and the SyncPanel all capture. A lane that finds another capturing
        goes on. An error of the capture (this role lacks REPLICATION, say) does not stop the
        drain of what is queued: it is logged, kept in ``capture_error`` and shown by
        status(); another worker with the privilege captures."""
        from . import capture

        if not self._capture_lock.acquire(blocking=False):
            return None
        try:
            result = capture.capture(db, self._capturer.get())
            self.capture_error = None
            return result
        except psycopg.Error as exc:
            translated = translate(exc, "capturing the WAL")
            if connection_lost(translated):
                raise translated from exc  # the worker's reconnect, as for any lost connection
            text = f"{type(exc).__name__}: {str(exc).strip()}"
            if text != self.capture_error:
                _log.warning("the WAL capture failed (%s); what is queued is still drained", text)
            self.capture_error = text
            self._capturer.close()
            return None
        finally:
            self._capture_lock.release()


class Vectorize(_Connections):
    """Drop-in for ``timescale_vector.pgvectorizer.Vectorize``.

    ``service_url`` is a DSN (libpq URL or key=value), a ``Database``, or None for
    ``pgvz_nb.connect()``. ``id_column_name`` may be a list for a composite key; then
    ``locked_id`` is a tuple. ``columns`` (an extension) limits which column changes
    re-queue a row; by default any change of any column does, and a no-op UPDATE does not.
    During the callback, ``vectorizer.connection`` is the connection holding the claim:
    writes made through it commit or roll back together with the dequeue.
    """

    def __init__(
        self,
        service_url: str | Database | None,
        table_name: str,
        schema_name: str = "public",
        id_column_name: str | Sequence[str] = "id",
        work_queue_table_name: str | None = None,
        trigger_name: str = "track_changes_for_embedding",
        trigger_name_fn: str | None = None,
        *,
        columns: Sequence[str] | None = None,
        max_attempts: int = 5,
        retry_backoff: float = 10.0,
        capture: str = "triggers",
    ) -> None:
        self._db = as_database(service_url)
        self.service_url = self._db.dsn
        self.table_name_unquoted = table_name
        self.schema_name_unquoted = schema_name
        self._keys = [id_column_name] if isinstance(id_column_name, str) else list(id_column_name)
        if work_queue_table_name is None:
            work_queue_table_name = _create_ident(table_name, "embedding_work_queue")
        if trigger_name_fn is None:
            trigger_name_fn = _create_ident(table_name, "wq_for_embedding")
        self.work_queue_table_name_unquoted = work_queue_table_name
        self.trigger_name_unquoted = trigger_name
        self.trigger_name_fn_unquoted = trigger_name_fn
        # quoted forms, as the original exposes them
        self.table_name = _quote_ident(table_name)
        self.schema_name = _quote_ident(schema_name)
        self.id_column_name = ", ".join(_quote_ident(k) for k in self._keys)
        self.work_queue_table_name = _quote_ident(work_queue_table_name)
        self.trigger_name = _quote_ident(trigger_name)
        self.trigger_name_fn = _quote_ident(trigger_name_fn)
        self._columns = None if columns is None else list(columns)
        self._max_attempts = max_attempts
        self._backoff = float(retry_backoff)
        if capture not in ("triggers", "wal"):
            raise PgvzError(f"expected capture='triggers' or capture='wal', got {capture!r}")
        self.capture = capture
        self._queue: Queue | None = None
        self._conn: psycopg.Connection | None = None
        self._side_connections(self._db)
        self.connection: psycopg.Connection | None = None

    def __repr__(self) -> str:
        return (
            f"Vectorize({self._db!r}, {self.table_name_unquoted!r}, "
            f"schema_name={self.schema_name_unquoted!r})"
        )

    @property
    def name(self) -> str:
        """The catalog name: the queue's schema-qualified name."""
        return f"{self.schema_name_unquoted}.{self.work_queue_table_name_unquoted}"

    def _connect(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._db.connect(vector=True, worker=True)
        return self._conn

    def register(self) -> None:
        """Install queue, triggers and backfill; a no-op when already registered."""
        if self._queue is not None:
            return
        schema, table = self.schema_name_unquoted, self.table_name_unquoted
        trig = self.trigger_name_unquoted
        conn = self._connect()
        if self.capture == "wal":
            from . import capture

            capture.prepare(self._db, (schema, table))
        try:
            self._queue = Queue.register(
                conn,
                name=self.name,
                source=(schema, table),
                queue=(schema, self.work_queue_table_name_unquoted),
                # the inbox in pgvz, not beside the table: the trigger names it on every write,
                # so it must not move when the application renames its schema
                inbox=("pgvz", _callback_inbox_name(self.name, table)),
                failed=(schema, _create_ident(table, "embedding_failed")),
                function=(schema, self.trigger_name_fn_unquoted),
                triggers={ev: q.fit_name(trig, "_" + ev) for ev in ("insert", "update", "delete", "truncate")},
                keys=self._keys,
                watched=self._columns,
                policy={"max_attempts": self._max_attempts, "backoff_base": self._backoff},
                extra={"kind": "callback"},
                capture=self.capture,
            )
        except psycopg.Error as exc:
            raise translate(exc, f"registering a vectorizer on {schema}.{table}") from exc
        finally:
            self._capture(self._db)  # a slot no WAL vectorizer needs goes (a refused install's)

    def _open(self, autoregister: bool) -> Queue:
        if self._queue is None:
            if autoregister:
                self.register()
            else:
                found = Queue.find(self._connect(), self.name)
                self._connect().rollback()
                if found is None:
                    raise NotFound(
                        f"{self.name} is not registered; call register() first "
                        "or process(..., autoregister=True)"
                    )
                self._queue = found
        assert self._queue is not None
        return self._queue

    def process(
        self,
        embed_and_write_cb: Callable[[list[Row], Vectorize], Any],
        batch_size: int = 10,
        autoregister: bool = True,
    ) -> int:
        """Claim up to ``batch_size`` changed rows and pass them to the callback; returns
        how many were claimed (0: nothing to do now).

        Each row has ``locked_id`` (the key) and every source column (all None for a
        deleted row). If the callback raises, the failing rows are isolated by halving
        the batch; they get ``attempts`` + 1 and a backoff, the rest are committed, and
        ``CallbackFailed`` is raised from the first error.
        """
        queue = self._open(autoregister)
        conn = self._connect()
        self._capture(self._db)

        def handler(rows: list[ClaimedRow]) -> None:
            batch = []
            for r in rows:
                row = Row(locked_id=r.key[0] if len(r.key) == 1 else r.key)
                row.update(r.values)
                batch.append(row)
            self.connection = conn
            try:
                embed_and_write_cb(batch, self)
            finally:
                self.connection = None

        try:
            result = queue.process(conn, handler, limit=batch_size, in_flight=self._in_flight.get(),
                                   reader=self._reader.get())
        except psycopg.Error as exc:
            raise translate(exc, f"processing the queue of {self.name}") from exc
        self.last_result = result
        if result.errors:
            raise self._callback_failed(result) from result.errors[0]
        return result.claimed

    def _callback_failed(self, result: ProcessResult) -> CallbackFailed:
        keys = [k[0] if len(k) == 1 else k for k in result.failed_keys]
        shown = ", ".join(repr(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
        return CallbackFailed(
            f"embed_and_write raised for {len(keys)} of {result.claimed} rows (keys {shown}): "
            f"{type(result.errors[0]).__name__}: {result.errors[0]}; "
            f"the other {result.succeeded} were committed; the failing rows stay queued with "
            f"attempts raised and a backoff, and after {self._max_attempts} attempts move to "
            "the failed table (see failed(), retry_failed())"
        )

    # --- extensions over the original ---------------------------------------------------

    @boundary("reading the queue of {self.name}")
    def state(self) -> QueueState:
        """Queue counts: rows, claimable, retrying, failed, oldest, next retry."""
        conn = self._connect()
        with conn.transaction():
            return self._open(True).state(conn)

    @boundary("reading the failed rows of {self.name}")
    def failed(self) -> list[dict[str, Any]]:
        """Rows of the failed table, as dicts."""
        queue = self._open(True)
        conn = self._connect()
        with conn.transaction():
            cur = conn.execute(q.failed_rows(queue.failed, queue.keys))
            names = column_names(cur)
            return [dict(zip(names, r)) for r in cur.fetchall()]

    @boundary("retrying the failed rows of {self.name}")
    def retry_failed(self) -> int:
        """Put every failed key back in the queue with fresh attempts; returns how many."""
        return self._open(True).retry_failed(self._connect())

    @boundary("unregistering {self.name}")
    def unregister(self) -> None:
        """Remove triggers, queue, failed table and catalog entry (not the source table)."""
        queue = self._open(False)
        queue.drop(self._connect())
        self._queue = None
        self._capture(self._db)  # the slot goes with the last WAL vectorizer




# --- the built-in pipeline ------------------------------------------------------------------


@dataclass
class SyncReport(Tally):
    """What ``Vectorizer.sync()`` did; reports add up (``+=``)."""

    processed: int = 0  # source keys brought up to date (inserted, updated, deleted, filtered)
    embedded: int = 0  # chunks sent to the model
    unchanged: int = 0  # chunks whose stored vector was reused
    failed: int = 0  # keys that failed this time (they stay queued, or moved to failed)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    embed_calls: int = 0
    answer: str = "empty"  # why it stopped: empty, waiting (backoff), busy (other workers)

    def add(self, result: ProcessResult, stats: Any) -> None:
        """Count in one claim's result and its pipeline's ``SyncStats``."""
        self.processed += result.succeeded
        self.failed += len(result.failed_keys)
        self.embedded += stats.embedded
        self.unchanged += stats.unchanged
        self.embed_calls += stats.embed_calls
        self.embed_seconds += stats.embed_seconds

    def __str__(self) -> str:
        return (f"processed {self.processed} rows in {self.seconds:.1f} s: {self.embedded} chunks "
                f"embedded, {self.unchanged} unchanged, {self.failed} failed; queue {self.answer}")


#: PipelineConfig fields that say how a vectorizer runs: they may change at any create()
_OPERATIONAL = ("batch_size", "transient_budget")
#: PipelineConfig fields that say what it produces, given to the constructor as they are
_DESCRIBED = ("template", "chunk_column", "chunk_size", "chunk_overlap", "metadata", "time_column",
              "where", "max_chunks")


def _split_table(table: str, schema: str | None) -> tuple[str, str]:
    if schema is not None:
        return schema, table
    if "." in table:
        s, t = table.split(".", 1)
        return s, t
    return "public", table


def _where_columns(where: str, columns: Sequence[str]) -> list[str]:
    """Columns a ``where`` filter may read: every column whose name appears in it as a word
    or quoted. Watching one too many costs a queue entry; one too few would lose changes."""
    found = []
    for c in columns:
        plain = re.search(rf"(?<![\w$]){re.escape(c)}(?![\w$])", where, flags=re.IGNORECASE)
        quoted = '"' + c.replace('"', '""') + '"' in where
        if plain or quoted:
            found.append(c)
    return found


def next_batch_size(per_row: float | None, claimed: int, seconds: float, target: float,
                    hi: int, lo: int = 1) -> tuple[int, float]:
    """(rows for the next claim, new smoothed seconds per row) after a batch of ``claimed``
    rows took ``seconds``: aim at ``target`` seconds a batch, move halfway towards each new
    measurement, and at most quadruple from one batch to the next."""
    measured = seconds / claimed
    per_row = measured if per_row is None else (per_row + measured) / 2
    rows = int(target / per_row) if per_row > 0 else hi
    return max(lo, min(hi, rows, claimed * 4)), per_row


class _Lanes:
    """What the lanes of one ``sync()`` share: the report, the batches left, the claim size,
    the pause the model's service asked for and how long it has been waited for; one lock."""

    def __init__(self, lanes: int, max_batches: int | None, batch_size: int,
                 stop: threading.Event | None):
        self.lock = threading.Lock()
        self.report = SyncReport()
        self.left = max_batches  # claims still allowed (None: no limit)
        self.active = lanes  # lanes still running
        self.size = batch_size  # rows per claim
        self.per_row: float | None = None  # smoothed seconds per claimed row
        self.waited = 0.0  # seconds waited for the model's service since it last answered
        self.hold = 0.0  # no claim before this time.monotonic(): the service asked for a pause
        self.stop = stop
        self.errors: list[BaseException] = []

    def take_turn(self) -> bool:
        """Whether this lane claims again: not after max_batches, an error in another lane,
        or a stop; first waiting out a pause the service asked for (Retry-After)."""
        with self.lock:
            if self.errors:
                return False
            if self.left is not None:
                if self.left <= 0:
                    self.report.answer = "stopped"
                    return False
                self.left -= 1
        pause = self.hold - time.monotonic()
        stop = self.stop
        if (stop is not None and stop.is_set()) or (
                pause > 0 and (stop.wait if stop is not None else time.sleep)(pause)):
            self.report.answer = "stopped"
            return False
        return True

    def wait_for_service(self, exc: Any, budget: float) -> None:
        """The batch went back because the model's service is unavailable: pause every lane
        for as long as it asks, until ``budget`` seconds in all have gone (then raise)."""
        with self.lock:
            if not exc.counted:  # the rest of a pause counted when it was asked for: not again
                if self.waited + exc.retry_after > budget:
                    raise exc
                self.waited += exc.retry_after
            self.hold = max(self.hold, time.monotonic() + exc.retry_after)
        if not exc.counted:
            _log.warning("%s; waiting %.1f s", exc, exc.retry_after)

    def count(self, result: ProcessResult, stats: Any, seconds: float, batch_seconds: float | None,
              *, hi: int, bar: Any) -> bool:
        """Count in one claim; resize the next; False when this lane is to stop (nothing
        claimable, unless another lane may still put keys back: busy)."""
        with self.lock:
            if result.claimed:
                self.waited = 0.0
                if batch_seconds:
                    self.size, self.per_row = next_batch_size(self.per_row, result.claimed, seconds,
                                                              batch_seconds, hi=hi)
            elif not (result.answer == "busy" and self.active > 1):
                self.report.answer = result.answer
                return False
            self.report.add(result, stats)
            if bar is not None and result.claimed:
                if bar.n + result.claimed > bar.total:
                    bar.total = bar.n + result.claimed
                bar.update(result.claimed)
            return True

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(exc)

    def done(self) -> None:
        with self.lock:
            self.active -= 1


class Vectorizer(_Connections):
    """Keeps ``<table>_embedding`` in sync with ``table`` through the built-in pipeline.

    ``Vectorizer(db, "blog", template=..., chunk_column=...)`` only describes it; ``create()``
    installs it (idempotent), ``sync()`` drains the queue. ``Vectorizer.open(db, name)``
    rebuilds the same one from the catalog in another process.
    """

    def __init__(
        self,
        db: Database,
        table: str,
        *,
        schema: str | None = None,
        template: str | None = None,
        chunk_column: str | None = None,
        chunk_size: int = 1000,
        chunk_overlap: int = 200,
        metadata: Sequence[str] = (),
        time_column: str | None = None,
        where: str | None = None,
        embedder: Any = None,
        destination: str | tuple[str, str] | None = None,
        name: str | None = None,
        batch_size: int | None = None,
        max_attempts: int = 5,
        retry_backoff: float = 10.0,
        max_chunks: int = 500,
        transient_budget: float | None = None,
        capture: str | None = None,
    ) -> None:
        from .pipeline import PipelineConfig

        if capture not in (None, "triggers", "wal"):
            raise PgvzError(f"expected capture='triggers' or capture='wal', got {capture!r}")
        #: how changes reach the queue; None keeps the stored mode at create() ("triggers"
        #: for a new vectorizer: it needs nothing of the server; "wal" needs wal_level =
        #: logical and REPLICATION, and puts nothing on the application's write path)
        self.capture = capture
        self.db = db
        self.source: q.Rel = _split_table(table, schema)
        if template is None:
            if chunk_column is None:
                raise PgvzError(
                    "expected template= (for example 'Author {author}, title: {title}, "
                    "contents:{chunk}') or chunk_column= (then the template is '{chunk}'); got neither"
                )
            template = "{chunk}"
        if "{chunk}" in template and chunk_column is None:
            raise PgvzError(
                f"the template {template!r} uses {{chunk}} but no chunk_column= says which column "
                "to split into chunks; pass chunk_column=, or name the column itself in the template"
            )
        if chunk_overlap >= chunk_size:
            raise PgvzError(f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})")
        if destination is None:
            dest = (self.source[0], q.fit_name(f"{self.source[1]}_embedding", tag_if_cut=True))
        elif isinstance(destination, tuple):  # (schema, table): names that hold a dot
            dest = destination
        else:
            dest = _split_table(destination, None if "." in destination else self.source[0])
            check_name(dest[0], "destination schema")
            check_name(dest[1], "destination table")
        self.name = name or (dest[1] if dest[0] == "public" else f"{dest[0]}.{dest[1]}")
        if embedder is None:
            from .embedders import default_embedder

            embedder = default_embedder()
        self.embedder = embedder
        self._max_attempts = max_attempts
        self._backoff = float(retry_backoff)
        # how it runs, given here; what is not given keeps its stored value (create()), or the default
        operational: dict[str, Any] = {k: v for k, v in (("batch_size", batch_size), ("transient_budget", transient_budget))
                       if v is not None}
        self._operational = set(operational)
        self.config = PipelineConfig(
            template=template, destination=list(dest), dest_keys=[], metadata_key=q.fit_name(f"{self.source[1]}_id", tag_if_cut=True),
            embedder={}, chunk_column=chunk_column, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
            metadata=list(metadata), time_column=time_column, where=where, max_chunks=max_chunks,
            **operational,
        )
        self._queue: Queue | None = None
        self._pipeline: Pipeline | None = None
        self._conn: psycopg.Connection | None = None
        #: mixed into the names create() derives for its tables: a migration's shadow gets new
        #: ones (the names of an earlier shadow may be the live vectorizer's tables since)
        self._tag_salt = ""
        self._stop: threading.Event | None = None
        self._side_connections(self.db)

    def __repr__(self) -> str:
        state = "created" if self._queue is not None else "not created"
        return (f"Vectorizer({self.name!r}, source={'.'.join(self.source)!r}, "
                f"destination={'.'.join(self.config.destination)!r}, {state})")

    @property
    def destination(self) -> q.Rel:
        return tuple(self.config.destination)  # type: ignore[return-value]

    # --- catalog -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, db: Database, name: str, config: dict[str, Any], *,
                    embedder: Any = None) -> Vectorizer:
        """The vectorizer ``config`` describes, as ``to_config()`` gives it, the catalog holds
        it and an exported script embeds it: ``{"source": [schema, table], "pipeline": {...},
        "policy": {"max_attempts": ..., "retry_backoff": ...}}``. Not installed by this:
        ``create()`` installs it, or finds it installed with the same settings. ``embedder``:
        the model, when the configuration's cannot be rebuilt (a custom one)."""
        from .embedders import embedder_from_config
        from .pipeline import PipelineConfig

        stored = config["pipeline"]
        pipe = PipelineConfig.from_json(stored)
        policy = config["policy"]
        self = cls(
            db, config["source"][1], schema=config["source"][0], name=name,
            destination=(pipe.destination[0], pipe.destination[1]),
            embedder=embedder if embedder is not None else embedder_from_config(pipe.embedder),
            max_attempts=int(policy["max_attempts"]), retry_backoff=float(policy["retry_backoff"]),
            capture=config.get("capture"),
            **{k: getattr(pipe, k) for k in _DESCRIBED},
            **{k: stored[k] for k in _OPERATIONAL if k in stored},
        )
        self.config = pipe  # as stored: with the names create() derived (dest_keys, metadata_key)
        return self

    def to_config(self) -> dict[str, Any]:
        """This vectorizer's configuration, for ``from_config`` (JSON-serialisable)."""
        out = {"source": list(self.source), "pipeline": self.config.to_json(),
               "policy": {"max_attempts": self._max_attempts, "retry_backoff": self._backoff}}
        if self.capture is not None:
            out["capture"] = self.capture
        return out

    @classmethod
    @boundary("opening a vectorizer")
    def open(cls, db: Database, name: str, *, embedder: Any = None) -> Vectorizer:
        """The vectorizer called ``name`` as stored in the catalog, with its own embedder."""
        with db.connect() as conn:
            queue = Queue.open(conn, name)
        if queue.config.get("kind") != "pipeline":
            raise PgvzError(
                f"{name!r} is a callback vectorizer (Vectorize); open it with "
                f"pgvz_nb.Vectorize(db, {queue.source[1]!r}, schema_name={queue.source[0]!r})"
            )
        self = cls.from_config(db, name, {
            "source": list(queue.source), "pipeline": queue.config["pipeline"],
            "policy": {"max_attempts": queue.policy["max_attempts"],
                       "retry_backoff": queue.policy["backoff_base"]},
            "capture": queue.capture}, embedder=embedder)
        self._queue = queue
        return self

    def create(self, *, replace: bool = False) -> Vectorizer:
        """Install catalog row, queue, triggers and destination, and queue every existing row.

        Idempotent: with the same settings a second call changes nothing. ``replace=True``
        drops this vectorizer and its destination first and rebuilds both.
        """
        from .embedders import embedder_config

        cfg = self.config
        mode = self.capture

        def install(conn: psycopg.Connection) -> Queue:
            Queue.ensure_catalog(conn)
            columns = describe_table(conn, self.source)
            self._validate(conn, columns)
            keys = resolve_keys(conn, self.source, columns, None)
            cfg.dest_keys = [cfg.metadata_key] if len(keys) == 1 else [
                q.fit_name(f"{self.source[1]}_{k}", tag_if_cut=True) for k in keys]
            cfg.dest_keys = [k + "_key" if k in q.DEST_FIXED else k for k in cfg.dest_keys]
            cfg.embedder = embedder_config(self.embedder)
            existing = Queue.find(conn, self.name)
            if existing is not None and replace:
                existing._uninstall_objects(conn)
                conn.execute(q.catalog_delete(), [existing.id])
                conn.execute(q.drop_table(tuple(existing.config.get("pipeline", {}).get(
                    "destination", cfg.destination))))
                existing = None
            if existing is not None:
                self._check_same(existing)
            self._prepare_destination(conn, existing, keys)
            tag = q.name_tag(self.name + self._tag_salt)
            base = re.sub(r"[^a-z0-9_]", "_", self.name.lower())[:30]
            watched = list(dict.fromkeys(
                cfg.source_columns() + (_where_columns(cfg.where, list(columns)) if cfg.where else [])))
            # an installed one keeps its tables' names: after a migration's cutover they are
            # the names the other vectorizer's name gave them
            names: dict[str, Any] = {
                "queue": existing.queue, "inbox": existing.inbox, "failed": existing.failed,
                "function": existing.function, "triggers": existing.triggers} if existing is not None else {
                "queue": ("pgvz", f"q_{base}_{tag}"), "inbox": ("pgvz", f"i_{base}_{tag}"),
                "failed": ("pgvz", f"f_{base}_{tag}"), "function": ("pgvz", f"t_{base}_{tag}"),
                "triggers": {ev: f"pgvz_{tag}_{ev}" for ev in ("insert", "update", "delete", "truncate")}}
            queue = Queue.install(
                conn,
                name=self.name,
                source=self.source,
                **names,
                keys=keys,
                watched=watched,
                policy={"max_attempts": self._max_attempts, "backoff_base": self._backoff},
                extra={"kind": "pipeline", "pipeline": cfg.to_json()},
                capture=mode or "triggers",
            )
            stored = queue.config["pipeline"]
            given = {k: getattr(cfg, k) for k in self._operational}
            if any(stored.get(k) != v for k, v in given.items()):
                queue.set_extra(conn, pipeline={**stored, **given})
            return queue

        doing = f"creating vectorizer {self.name!r} on {'.'.join(self.source)}"
        try:
            check_name(self.source[0], "schema")  # before any query names them
            check_name(self.source[1], "table")
            if mode is None:  # as stored, or triggers for a new one
                with self.db.connect() as conn:
                    found = Queue.find(conn, self.name)
                mode = found.capture if found is not None and not replace else "triggers"
            if mode == "wal":
                from . import capture

                capture.prepare(self.db, self.source)
            with self.db.connect(vector=True) as conn:
                self._queue = locked(conn, lambda: install(conn), target=self.source, doing=doing)
                self._queue.complete_backfill(conn)
        except psycopg.Error as exc:
            raise translate(exc, doing) from exc
        finally:
            # a switch to triggers: what the slot still holds, then the slot goes; a refused
            # install leaves no slot behind
            self._capture(self.db)
        self._pipeline = None
        self.capture = mode
        return self

    def _validate(self, conn: psycopg.Connection, columns: dict[str, tuple[str, bool]]) -> None:
        from .pipeline import template_fields

        cfg = self.config
        where = ".".join(self.source)
        missing = [f for f in template_fields(cfg.template) if f != "chunk" and f not in columns]
        if missing:
            raise NotFound(
                f"the template names column(s) {missing}, which {where} does not have; "
                f"its columns are {list(columns)}; write {{column}} with one of those"
            )
        for what, cols in (("chunk_column", [cfg.chunk_column] if cfg.chunk_column else []),
                           ("metadata", cfg.metadata),
                           ("time_column", [cfg.time_column] if cfg.time_column else [])):
            bad = [c for c in cols if c not in columns]
            if bad:
                raise NotFound(f"{what} {bad} not found in {where}; its columns are {list(columns)}")
        if cfg.time_column:
            typ = columns[cfg.time_column][0]
            if not (typ.startswith("timestamp") or typ == "date"):
                raise PgvzError(
                    f"time_column {cfg.time_column!r} is {typ}; expected a timestamp with time zone "
                    "(or timestamp, date); time-based ids and time filters need a point in time"
                )
        if cfg.where:
            try:
                with conn.transaction():
                    conn.execute(q.check_where(self.source, q.UserSQL(cfg.where)))
            except psycopg.Error as exc:
                raise PgvzError(
                    f"where={cfg.where!r} is not a valid SQL condition on {where}: "
                    f"{str(exc).strip()}; expected a boolean expression over its columns, "
                    "such as \"published_time IS NOT NULL\""
                ) from None
            self._check_where_immutable(conn)

    def _check_where_immutable(self, conn: psycopg.Connection) -> None:
        """Refuse a ``where`` whose answer can change while the row does not (``now()``, a
        subquery, ``random()``, a timestamptz cast that reads the TimeZone): the filter is
        evaluated when a row changes, so a scheduled post would never go live. PostgreSQL
        says it: a partial index's predicate must be immutable; one is tried on an empty
        temporary copy of the table's columns and rolled back."""
        cfg = self.config
        assert cfg.where is not None
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(q.where_probe(self.source, q.UserSQL(cfg.where)))
        except (psycopg.errors.InvalidObjectDefinition, psycopg.errors.FeatureNotSupported) as exc:
            raise PgvzError(
                f"where={cfg.where!r} can change its answer while the row stays the same "
                f"({str(exc).strip()}); pgvz_nb evaluates it when a row changes, so a row would "
                "not enter or leave the embeddings when time passes or another table changes; "
                "keep the condition on the row's own columns with immutable functions (a column "
                "the application or a scheduled job sets, e.g. is_published), or filter at "
                "search time (filter=, start=/end=)"
            ) from None
        except psycopg.Error:
            pass  # no TEMP privilege, say: the check cannot run, and the filter is taken as it is

    def _check_same(self, existing: Queue) -> None:
        old = existing.config.get("pipeline")
        if existing.config.get("kind") != "pipeline" or old is None:
            raise ConfigConflict(
                f"{self.name!r} is already a callback vectorizer (Vectorize); pick another name="
            )
        new = self.config.to_json()
        if old["embedder"]["dimensions"] != new["embedder"]["dimensions"]:
            raise DimensionMismatch(
                f"{'.'.join(old['destination'])} holds vectors of {old['embedder']['dimensions']} "
                f"dimensions; this embedder makes {new['embedder']['dimensions']}; to change "
                f"the model without downtime, Vectorizer.open(db, {self.name!r}).migrate(embedder=...) "
                "(builds the new vectors beside the old, then cutover()); or create(replace=True) "
                "(drops the destination and re-embeds: search is empty meanwhile)"
            )
        # how it runs (batch size, patience with the model's service) may change freely;
        # what it produces may not
        diff = sorted(k for k in new if k not in _OPERATIONAL and new[k] != old.get(k))
        if diff:
            raise ConfigConflict(
                f"vectorizer {self.name!r} exists with other settings ({', '.join(diff)} differ: "
                f"stored {[old.get(k) for k in diff]}, asked {[new[k] for k in diff]}); "
                "use Vectorizer.open(db, name) to use it as it is; to change what it embeds "
                f"without downtime, Vectorizer.open(db, {self.name!r}).migrate(embedder=..., "
                "template=..., chunk_size=...) builds the new vectors beside the old ones and "
                "cutover() switches; create(replace=True) rebuilds it in place"
            )

    def _prepare_destination(self, conn: psycopg.Connection, existing: Queue | None,
                             keys: list[str]) -> None:
        cfg = self.config
        dest = self.destination
        dims = cfg.embedder["dimensions"]
        for other in Queue.list_all(conn):
            pipe = other.config.get("pipeline")
            if other.name != self.name and pipe and tuple(pipe["destination"]) == dest:
                raise ConfigConflict(
                    f"{'.'.join(dest)} is already the destination of vectorizer {other.name!r}; "
                    "two vectorizers cannot write one table: give this one destination=..."
                )
        found = conn.execute(q.collection_dimensions(), list(dest)).fetchone()
        if found is None:
            if conn.execute(q.find_relation(), list(dest)).fetchone() is not None:
                raise ConfigConflict(
                    f"{'.'.join(dest)} exists but is not an embedding table (no embedding column); "
                    "choose another destination="
                )
            conn.execute(q.create_destination(dest, self.source, keys, cfg.dest_keys, dims))
            return
        if found[0] != dims:
            raise DimensionMismatch(
                f"{'.'.join(dest)} holds vector({found[0]}); this embedder makes {dims} dimensions; "
                "use an embedder of the same size, or create(replace=True) to drop and re-embed, "
                "or give this vectorizer its own destination="
            )
        check_trusted(conn, dest, "the destination", superuser_ok=True)
        types: dict[str, str] = dict(conn.execute(q.column_types(), list(dest)).fetchall())
        if existing is None and not set([*cfg.dest_keys, "chunk_hash"]) <= set(types):
            raise ConfigConflict(
                f"{'.'.join(dest)} exists but was not made by a pgvz_nb Vectorizer (it lacks "
                f"{[c for c in [*cfg.dest_keys, 'chunk_hash'] if c not in types]}); choose another "
                "destination=, or drop that table"
            )
        from .pipeline import PipelineConfig

        if "model" not in types:  # made before destinations recorded their model
            stored = existing.config.get("pipeline") if existing is not None else None
            if stored:
                conn.execute(q.add_model_column(dest, PipelineConfig.from_json(stored).model_id()))
            else:  # a table left by a dropped vectorizer: what made its vectors is unknown
                conn.execute(q.add_model_column(dest, None))
        elif existing is None:
            others = [m for m, _ in conn.execute(q.destination_models(dest)).fetchall()
                      if m is not None and m != cfg.model_id()]
            if others:
                raise ConfigConflict(
                    f"{'.'.join(dest)} holds vectors made by {others[0]!r}, and this vectorizer "
                    f"embeds with {cfg.model_id()!r}: writing into it would mix two models in one "
                    "table (search would compare vectors of both) until every row was re-embedded; "
                    "to change the model of a vectorizer, Vectorizer.open(db, name).migrate("
                    "embedder=...) builds the new vectors beside the old ones; else give this one "
                    "its own destination=, or drop that table"
                )

    # --- running ------------------------------------------------------------------------

    def _ready(self):
        from .pipeline import Pipeline, PipelineConfig

        if self._queue is None:
            raise NotFound(f"vectorizer {self.name!r} is not created yet; call create() first")
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self.db.connect(vector=True, worker=True)
        if self._pipeline is None:
            self.config = PipelineConfig.from_json(self._queue.config["pipeline"])
            self._pipeline = Pipeline(self._queue, self.config, self.embedder)
            self._pipeline.stop = self._stop  # a sync's stop event, for one built during it
        return self._queue, self._pipeline, self._conn

    def process(self, batch_size: int | None = None, *,
                conn: psycopg.Connection | None = None, _followed: bool = False) -> tuple[ProcessResult, Any]:
        """One claim-embed-write round; returns (result, stats). ``conn``: another connection
        to run it on (sync's second lane), else the vectorizer's own."""
        from .pipeline import SyncStats

        queue, pipe, own = self._ready()
        conn = conn or own
        self._capture(self.db)
        total = SyncStats()
        reader = self._reader.get()

        def handler(rows: list[ClaimedRow]) -> None:
            nonlocal total
            part = SyncStats()  # counted only when the handler succeeds on these rows
            pipe.handle(conn, rows, part, reader)
            total += part

        where = q.UserSQL(self.config.where) if self.config.where else None
        try:
            result = queue.process(conn, handler, limit=batch_size or self.config.batch_size,
                                   columns=self.config.source_columns(), where=where,
                                   in_flight=self._in_flight.get(), reader=reader)
            if result.succeeded:
                with conn.transaction():
                    conn.execute(q.catalog_mark_success(), [queue.id])
        except Reconfigured:
            # a migration was cut over (or rolled back) since this handle was opened: the
            # batch went back whole; go on as the vectorizer now called by this name
            if _followed:
                raise
            self._follow()
            return self.process(batch_size, conn=conn, _followed=True)
        except psycopg.Error as exc:
            raise translate(exc, f"syncing {self.name!r}") from exc
        return result, total

    def _follow(self, conn: psycopg.Connection | None = None) -> bool:
        """Take on the catalog row now called ``self.name`` when it is not the one this
        handle was opened with, or its pipeline changed: a migration's cutover or rollback
        gives the name to the other model's vectorizer. True when something changed. ``conn``:
        a connection to read the catalog on (else one of its own). The
        model is rebuilt from the catalog (a custom one cannot be: Reconfigured says what to
        do)."""
        from .embedders import embedder_dimensions, embedder_from_config, embedder_identity

        try:
            if conn is not None:  # the handle's own, idle (not while lanes share it)
                with conn.transaction():
                    fresh = Queue.find(conn, self.name)
            else:
                with self.db.connect() as own:
                    fresh = Queue.find(own, self.name)
        except psycopg.Error as exc:
            raise translate(exc, f"opening {self.name!r} again") from exc
        if fresh is None:
            raise NotFound(f"vectorizer {self.name!r} is gone (dropped); nothing to sync or search")
        old = self._queue
        if old is not None and fresh.id == old.id and fresh.config.get("pipeline") == old.config.get("pipeline"):
            self._queue = fresh  # a migration's markers may have changed
            if fresh.source != self.source:  # renamed or moved, and followed in the catalog
                self.source, self._pipeline = fresh.source, None
                return True
            return False
        stored = fresh.config["pipeline"]["embedder"]
        if (embedder_identity(self.embedder), embedder_dimensions(self.embedder)) == (
                stored["identity"], stored["dimensions"]):
            embedder = self.embedder
        else:
            try:
                embedder = embedder_from_config(stored)
            except PgvzError as exc:
                raise Reconfigured(
                    f"vectorizer {self.name!r} now embeds with {stored['identity']!r} (a migration "
                    "was cut over or rolled back), a model pgvz_nb cannot rebuild by itself; open it "
                    f"again with Vectorizer.open(db, {self.name!r}, embedder=<that model>)") from exc
        now = Vectorizer.open(self.db, self.name, embedder=embedder)
        now.close()
        self._take_state(now)
        return True

    _title: str | None = None

    def _title_column(self) -> str | None:
        """The column that titles a hit: a metadata key, else a template field, named like a
        title (``frames.TITLE_NAMES``: title, name, subject, ...), as search frames pick it;
        else such a text column of the source (read for each search's hits). Asked once."""
        if self._title is not None:
            return self._title or None
        from .frames import TITLE_NAMES, is_text_type
        from .pipeline import template_fields

        def titled(names: list[str]) -> str | None:
            lower: dict[str, str] = {}
            for n in names:
                lower.setdefault(n.lower(), n)
            return next((lower[t] for t in TITLE_NAMES if t in lower), None)

        found = titled(list(self.config.metadata)) or titled(template_fields(self.config.template or ""))
        if found is None:
            try:
                with self.db.connect() as conn:
                    columns = conn.execute(q.table_columns(), list(self.source)).fetchall()
            except psycopg.Error:
                return None
            found = titled([c[0] for c in columns if is_text_type(c[1])])
        self._title = found or ""
        return found

    def _take_state(self, other: Vectorizer) -> None:
        """What this handle embeds and writes, taken from ``other`` (its connections stay)."""
        self.source, self.capture, self.embedder = other.source, other.capture, other.embedder
        self.config, self._queue = other.config, other._queue
        self._max_attempts, self._backoff = other._max_attempts, other._backoff
        self._pipeline, self._title = None, None

    @boundary("syncing {self.name!r}")
    def sync(self, *, progress: bool = True, max_batches: int | None = None,
             lanes: int = 2, batch_seconds: float | None = 2.0,
             stop: threading.Event | None = None) -> SyncReport:
        """Drain the queue; a progress bar shows rows, rate and ETA. Returns a SyncReport.

        With ``lanes=2`` two claims run at once on two connections, and the model is lent to
        one at a time: while one batch is being embedded, the next one is claimed and read,
        and the previous one written, so the model does not wait for the database.

        The first claim takes ``batch_size`` rows; later claims are sized so that a batch
        takes about ``batch_seconds`` (1 to ``max(batch_size, 1000)`` rows): short texts go
        in large batches, so the fixed cost of a claim and its commit stays small beside
        the model, and long chunked texts in small ones, so a batch never holds its rows
        for minutes. ``batch_seconds=None`` keeps every claim at ``batch_size``.

        While the model's service is unavailable (a rate limit, a timeout, server errors
        for every text), each batch goes back to the queue uncharged and sync waits between
        claims, as the service asks (Retry-After), for up to ``transient_budget`` seconds in
        all, then raises EmbeddingUnavailable. ``stop``: an event that, once set, ends the
        sync within a fraction of a second, a batch in the model's hands going back whole
        (answer ``"stopped"``).
        """
        from .errors import EmbeddingUnavailable, Stopped

        self._follow(self._ready()[2])  # a migration's cutover since: the name may mean the other model
        queue, pipe, conn = self._ready()
        self._capture(self.db)  # so that the bar counts what the WAL holds too
        if queue.capture == "wal":  # the capture follows a renamed or moved table in the catalog
            with conn.transaction():
                fresh = Queue.find(conn, self.name)
            if fresh is not None and fresh.source != queue.source:
                self._queue, self.source, self._pipeline = fresh, fresh.source, None
                queue, pipe, conn = self._ready()
        pipe.stop = self._stop = stop
        with conn.transaction():
            if conn.execute(q.find_relation(), list(self.source)).fetchone() is None:
                raise NotFound(
                    f"the source table {'.'.join(self.source)} of vectorizer {self.name!r} is gone "
                    "(dropped, or renamed since this vectorizer was opened: reopen it with "
                    "Vectorizer.open(db, name)); its embeddings are kept: a table created again "
                    "under that name with the same key is followed, or v.drop() removes them")
            pending = queue.state(conn).rows
        lanes = max(1, lanes)
        bar = _progress(pending, self.name) if progress and pending else None
        state = _Lanes(lanes, max_batches, self.config.batch_size, stop)
        t0 = time.perf_counter()

        def lane(lane_conn: psycopg.Connection | None) -> None:
            try:
                while state.take_turn():
                    started = time.perf_counter()
                    try:
                        result, stats = self.process(state.size, conn=lane_conn)
                    except Stopped:
                        state.report.answer = "stopped"
                        return
                    except EmbeddingUnavailable as exc:
                        state.wait_for_service(exc, self.config.transient_budget)
                        continue
                    if not state.count(result, stats, time.perf_counter() - started, batch_seconds,
                                       hi=max(self.config.batch_size, 1000), bar=bar):
                        return
                    if result.claimed == 0:
                        time.sleep(0.05)
            except BaseException as exc:  # noqa: BLE001 - surfaced in the calling thread below
                state.fail(exc)
            finally:
                state.done()

        extra = [self.db.connect(vector=True, worker=True) for _ in range(lanes - 1)]
        threads = [threading.Thread(target=lane, args=(c,), daemon=True) for c in extra]
        try:
            for t in threads:
                t.start()
            lane(None)
            for t in threads:
                t.join()
        finally:
            for c in extra:
                c.close()
            if bar is not None:
                if state.report.failed:  # not a green bar when rows failed (they are in errors())
                    bar.colour = _FAILED_COLOUR
                bar.close()
        if state.errors:
            raise state.errors[0]
        state.report.seconds = time.perf_counter() - t0
        self.last_report = state.report
        return state.report

    # --- views -------------------------------------------------------------------------

    def status(self, *, full: bool = False) -> pd.DataFrame:
        """One row: queue counts, embedded chunks and source coverage, oldest pending age.

        Its display shows the columns that matter (name, pending, failed, embedded rows,
        coverage, oldest pending age, last success; uncovered partitions when there are
        some; the capture and its slot for a WAL vectorizer); the frame holds all 22 columns, and
        ``full=True`` displays them all."""
        import pandas as pd

        from . import capture
        from .frames import frame as view

        queue, _, conn = self._ready()
        try:
            with conn.transaction():
                st = queue.state(conn)
                chunks = first(conn.execute(q.count_rows(self.destination)))[0]
                covered = first(conn.execute(q.count_distinct(self.destination, self.config.dest_keys)))[0]
                where = q.UserSQL(self.config.where) if self.config.where else None
                source_rows = first(conn.execute(q.count_where(self.source, where)))[0]
                last_success = first(conn.execute(q.catalog_last_success(), [queue.id]))[0]
                uncovered = queue.uncovered(conn)
                wal_status, lag, behind = capture.slot_status(conn) if queue.capture == "wal" else (None,) * 3
                kept = conn.execute(q.wal_follow_get(), [queue.id]).fetchone() if queue.capture == "wal" and \
                    conn.execute(q.find_relation(), list(q.WAL_FOLLOW)).fetchone() else None
                follow_error = kept[1] if kept else None
                has_model = "model" in dict(conn.execute(q.column_types(), list(self.destination)).fetchall())
                models = [m for m, _ in conn.execute(q.destination_models(self.destination)).fetchall()
                          ] if has_model else []
        except psycopg.Error as exc:
            raise translate(exc, f"reading the status of {self.name!r}") from exc
        now = datetime.now(timezone.utc)
        frame = view([{
            "name": self.name, "source": ".".join(self.source),
            "destination": ".".join(self.destination),
            "pending": st.rows, "claimable": st.claimable, "retrying": st.retrying, "failed": st.failed,
            "embedded_chunks": chunks, "embedded_rows": covered, "source_rows": source_rows,
            "coverage_pct": round(100.0 * covered / source_rows, 1) if source_rows else 100.0,
            "oldest_pending_age": pd.Timedelta(now - st.oldest) if st.oldest else pd.NaT,
            "next_retry": pd.Timestamp(st.next_retry) if st.next_retry else pd.NaT,
            "last_success": pd.Timestamp(last_success) if last_success else pd.NaT,
            # partitions (or inheritance children) whose direct writes are not queued yet
            "uncovered_partitions": ", ".join(".".join(r) for r in uncovered),
            # how changes reach the queue; for "wal": the slot's state ('reserved', 'extended',
            # 'unreserved', 'lost'; None: no slot yet), the WAL it holds back (what counts
            # against max_slot_wal_keep_size) and the WAL not captured yet, in bytes
            "capture": queue.capture, "wal_status": wal_status, "slot_lag_bytes": lag,
            "capture_lag_bytes": behind,
            # the capture's error, else what it could not follow of a DDL (a view on the destination)
            "capture_error": self.capture_error or follow_error,
            # what makes this vectorizer's vectors, and the models the destination holds
            # vectors of (more than one: search compares vectors of different models)
            "model": self.config.model_id(), "models_in_destination": len(models),
            "migration": self._migration_state(),
        }])
        if len(models) > 1:
            warnings.warn(
                f"{'.'.join(self.destination)} holds vectors of {len(models)} models "
                f"({', '.join(str(m) for m in models)}): search compares vectors that are not "
                f"comparable; re-embed with create(replace=True), or build a clean one with "
                f"migrate(embedder=...)", UserWarning, stacklevel=2)
        frame.attrs["models"] = [str(m) for m in models]  # the ids themselves (a migration's status shows them)
        # proper dtypes even when a value is missing: tz-aware timestamps, timedelta ages
        frame["oldest_pending_age"] = pd.Series([frame["oldest_pending_age"][0]], dtype="timedelta64[ns]")
        for col in ("next_retry", "last_success"):
            frame[col] = pd.Series([frame[col][0]], dtype="datetime64[ns, UTC]")
        if full:
            return frame.show_columns(None)
        compact = ["name", "pending", "failed", "embedded_rows", "coverage_pct", "oldest_pending_age",
                   "last_success"] + (["uncovered_partitions"] if uncovered else []) + (
                   ["capture", "wal_status", "slot_lag_bytes"] if queue.capture == "wal" else []) + (
                   ["capture_error"] if frame["capture_error"][0] else []) + (
                   ["models_in_destination"] if len(models) > 1 else []) + (
                   ["migration"] if frame["migration"][0] else [])
        return frame.show_columns(compact, "status(full=True) displays them all")

    def _migration_state(self) -> str | None:
        queue = self._queue
        info = queue.config.get("migration") if queue is not None else None
        if not info or queue is None:
            return None
        live = info["live"] == queue.id
        return f"{info['state']} ({'live; other side' if live else 'not live; live side'}: " \
               f"{info['other_name'] if live else info['live_name']})"

    # --- migration ------------------------------------------------------------------------

    @boundary("starting a migration of {self.name!r}")
    def migrate(self, *, embedder: Any = None, template: str | None = None,
                chunk_column: str | None = None, chunk_size: int | None = None,
                chunk_overlap: int | None = None, metadata: Sequence[str] | None = None) -> Any:
        """Build this vectorizer's vectors again with another model (or template, chunking,
        metadata) beside the live ones, which keep serving: returns a Migration (``m.sync()``,
        ``m.compare(queries)``, ``m.cutover()``, ``m.rollback()``, ``m.finish()``). What is not
        given stays as it is. Called again with the same settings, it returns the migration in
        progress."""
        from .migration import Migration

        return Migration.start(self, embedder=embedder, template=template, chunk_column=chunk_column,
                               chunk_size=chunk_size, chunk_overlap=chunk_overlap, metadata=metadata)

    @property
    def migration(self) -> Any:
        """The migration in progress (a Migration), or None."""
        from .migration import Migration

        return Migration.find(self)

    @boundary("reading the queue of {self.name!r}")
    def queue(self, limit: int = 1000) -> pd.DataFrame:
        """Pending keys, oldest first (inbox included), with attempts, next retry and last error."""
        import pandas as pd

        queue, _, conn = self._ready()
        from .frames import Frame, typed

        with conn.transaction():
            names, rows = queue.pending(conn, limit)
        return typed(Frame(pd.DataFrame.from_records(rows, columns=names)))

    @boundary("reading the failed rows of {self.name!r}")
    def errors(self) -> pd.DataFrame:
        """Keys that used up their attempts, with the last error."""
        queue, _, conn = self._ready()
        with conn.transaction():
            cur = conn.execute(q.failed_rows(queue.failed, queue.keys))
            from .frames import from_cursor

            return from_cursor(cur)

    def set_embedder(self, embedder: Any) -> Vectorizer:
        """Embed with ``embedder`` from the next batch on (a fixed or reconfigured instance of
        the same model, say); returns self.

        It must be the model the stored vectors come from (same identity and size): a
        different one would mix two models' vectors in one table; for that, create a
        vectorizer with it and ``create(replace=True)``, or give it its own destination."""
        from .embedders import embedder_config

        stored = self._queue.config["pipeline"]["embedder"] if self._queue is not None else self.config.embedder
        if stored:
            new = embedder_config(embedder)
            if new["dimensions"] != stored["dimensions"]:
                raise DimensionMismatch(
                    f"{self.name!r} holds vectors of {stored['dimensions']} dimensions, this embedder "
                    f"makes {new['dimensions']}; use one of {stored['dimensions']} dimensions, or "
                    "re-embed everything with create(replace=True) on a Vectorizer given it")
            if new["identity"] != stored["identity"]:
                raise ConfigConflict(
                    f"{self.name!r} embeds with {stored['identity']!r}, this embedder is "
                    f"{new['identity']!r}; its vectors would not be comparable with the stored ones; "
                    "re-embed everything with create(replace=True) on a Vectorizer given it, or "
                    "give it its own destination= and name=")
        self.embedder = embedder
        self._pipeline = None  # the next batch builds one with it
        return self

    @boundary("retrying the failed rows of {self.name!r}")
    def retry_failed(self) -> int:
        """Put every failed key back in the queue with fresh attempts."""
        queue, _, conn = self._ready()
        return queue.retry_failed(conn)

    @boundary("reconciling {self.name!r}")
    def reconcile(self) -> dict[str, int]:
        """Queue what no trigger could have seen, and return how many keys of each kind:
        ``gone``, destination keys whose source row no longer exists (a partition dropped
        without an event trigger to see it, writes made with triggers disabled, e.g. under
        ``session_replication_role = replica``), and ``missing``, source rows (passing
        ``where``) with no embeddings that are not queued. Scans both tables; the next sync
        brings the destination in line."""
        queue, _, conn = self._ready()
        where = q.UserSQL(self.config.where) if self.config.where else None
        args = (queue.queue, self.destination, self.source, queue.keys, self.config.dest_keys)
        with conn.transaction():
            gone = conn.execute(q.reconcile_gone(*args)).rowcount
            missing = conn.execute(q.reconcile_missing(*args, where)).rowcount
        return {"gone": gone, "missing": missing}

    @boundary("searching {self.name!r}")
    def search(self, query: str, k: int = 5, *, filter: dict[str, Any] | None = None,
               start: datetime | None = None, end: datetime | None = None,
               hybrid: bool = False) -> pd.DataFrame:
        """Nearest chunks to ``query`` as a DataFrame: rank, distance (score with
        ``hybrid=True``), title, text, one column per metadata key, id, contents.

        ``text`` is the chunk's own text, cut out of the stored ``contents`` (the formatted
        template) by rendering the template's other fields from the hits' source rows (one
        read by key), else by matching its fixed text (``frames.chunk_text``); ``title`` is a
        metadata key or template field called title (name, subject, ...), else the table
        and key ("blog 3"). ``contents``, the text as embedded, is in the frame but not in
        its display."""
        from .pipeline import template_fields
        from .search import prepare_search, search_frame

        queue, _, conn = self._ready()
        fields = [f for f in template_fields(self.config.template) if f != "chunk"]
        seen: list[dict[str, Any] | None] = []  # the hits' source values, for the title below

        def source_values(rows: list[tuple]) -> list[dict[str, Any] | None]:
            # the template's fields of each hit's source row, to cut the chunk out exactly
            # (and a title column the frame would not see); a role that may not read the
            # source, or a row gone since, falls back to matching
            title = self._title_column()
            try:
                keys = [(r[2] or {})[self.config.metadata_key] for r in rows]  # a list: a composite key
                found = [ClaimedRow(tuple(k) if isinstance(k, list) else (k,), 0, datetime.now(timezone.utc))
                         for k in keys]
                queue.read(self._reader.get(), found, list(dict.fromkeys([*fields, *([title] if title else [])])))
            except (psycopg.Error, PgvzError, KeyError, TypeError):
                return [None] * len(rows)
            seen[:] = [None if c.deleted or c.error else c.values for c in found]
            return seen

        if (start or end) and not self.config.time_column:
            raise PgvzError("start/end filter on time, but this vectorizer has no time_column; "
                            "create it with time_column= to get time-based ids")
        prepare_search(conn)  # before the transaction: once for the session
        for _ in range(3):
            vector = self.embedder.embed_query(query)
            try:
                with conn.transaction():
                    frame = search_frame(conn, self.destination, vector, query, k,
                                         filter=filter, start=start, end=end, hybrid=hybrid,
                                         template=self.config.template, key=self.config.metadata_key,
                                         label=self.source[1],
                                         source_values=source_values if fields or self._title_column() else None)
                    # asked after the read, in its transaction: the read's lock on the destination
                    # keeps a cutover from committing until this transaction ends, so if the name
                    # still means this vectorizer now, the rows read are of this model's table
                    now = conn.execute(q.catalog_id_of(), [self.name]).fetchone()
            except psycopg.Error:
                # the table that has the name now may hold vectors of another size ("different
                # vector dimensions"): a cutover came first; anything else is raised
                with conn.transaction():
                    now = conn.execute(q.catalog_id_of(), [self.name]).fetchone()
                if now is not None and now[0] == queue.id:
                    raise
                frame = None
            if frame is not None and now is not None and now[0] == queue.id:
                title = self._title_column()
                if title and seen and "title" in frame.columns and title not in self.config.metadata \
                        and title not in fields:
                    # a title column of the source that is neither metadata nor in the template
                    frame["title"] = [(vals or {}).get(title) or old for vals, old in zip(seen, frame["title"])]
                return frame
            self._follow()  # a cutover or rollback came first: search the model that has the name
            queue, _, conn = self._ready()
            fields = [f for f in template_fields(self.config.template) if f != "chunk"]
        raise PgvzError(f"vectorizer {self.name!r} kept changing during the search (three cutovers "
                        "or rollbacks in a row); search again")

    def export_script(self, path: str) -> str:
        """Write a standalone sync script (``--once`` / ``--watch``) for this vectorizer; returns
        the path. It embeds the configuration and reads the DSN from the environment."""
        from .export import write_script

        return str(write_script(self.name, self.to_config(), path))

    @boundary("granting a worker role for {self.name!r}")
    def grant_worker(self, role: str) -> None:
        """Grant ``role`` exactly what a worker needs to sync this vectorizer (run as the owner):
        read the catalog and the source, work the queue tables, write the destination."""
        queue, _, conn = self._ready()
        with conn.transaction():
            follow = conn.execute(q.find_relation(), list(q.WAL_FOLLOW)).fetchone() is not None
            conn.execute(q.grant_worker(role, self.source, [queue.queue, queue.inbox, queue.failed],
                                        self.destination, follow))

    @boundary("creating indexes for {self.name!r}")
    def create_index(self, *, hybrid: bool = False) -> None:
        """An HNSW index for cosine search, a btree on the time in the ids when there is a
        ``time_column`` (start/end filters), and with ``hybrid`` a full-text GIN index."""
        _, _, conn = self._ready()
        with conn.transaction():
            conn.execute(q.create_hnsw_index(self.destination))
            if self.config.time_column:
                conn.execute(q.create_time_index(self.destination))
            if hybrid:
                conn.execute(q.create_fts_index(self.destination))

    def drop(self, *, keep_destination: bool = False, _alone: bool = False) -> None:
        """Remove triggers, queue, catalog row and (unless kept) the destination table; and
        a migration in progress, with the other model's vectorizer and its table (dropping the
        side of a migration that is not live ends the migration, as ``finish()``)."""
        queue, _, conn = self._ready()
        found = None if _alone else self.migration
        if found is not None:
            found.discard_other()  # this one too, when it is the side that is not live
            if found.other is self:
                return
            queue, _, conn = self._ready()
        try:
            queue.drop(conn, then=None if keep_destination else lambda: conn.execute(q.drop_table(self.destination)))
        except psycopg.Error as exc:
            raise translate(exc, f"dropping vectorizer {self.name!r}") from exc
        self._capture(self.db)  # the slot goes with the last WAL vectorizer
        self.close()
        self._queue = None



#: the progress bar's colour when a sync left failed rows (orange, as the SyncPanel's)
_FAILED_COLOUR = "#f0ad4e"


def _progress(total: int, name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tqdm.auto warns when ipywidgets is missing
        from tqdm.auto import tqdm
    return tqdm(total=total, desc=f"sync {name}", unit="row", dynamic_ncols=True)


@boundary("listing the vectorizers")
def vectorizers(db: Database) -> pd.DataFrame:
    """Every vectorizer in the database, one row each."""
    from .frames import Frame

    with db.connect() as conn:
        rows = Queue.list_all(conn)
    return Frame([{
        "name": v.name, "kind": v.config.get("kind", "callback"), "source": ".".join(v.source),
        "destination": ".".join(v.config["pipeline"]["destination"]) if "pipeline" in v.config else None,
        "embedder": v.config["pipeline"]["embedder"]["identity"] if "pipeline" in v.config else None,
        "dimensions": v.config["pipeline"]["embedder"]["dimensions"] if "pipeline" in v.config else None,
        "created_at": v.created_at,
        # a migration in progress (see migrate()): its state, on both of its vectorizers
        "migration": (v.config.get("migration") or {}).get("state"),
    } for v in rows], columns=["name", "kind", "source", "destination", "embedder", "dimensions",
                               "created_at", "migration"])
