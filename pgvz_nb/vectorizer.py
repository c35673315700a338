"""User-facing vectorizers: ``Vectorize``, the callback API of timescale_vector's PgVectorizer.

``Vectorize`` keeps the original's constructor, attributes, ``register()`` and
``process(embed_and_write, batch_size=10, autoregister=True) -> int``, and fixes what
the original gets wrong: its trigger names the queue without a schema (every write to
a table outside ``public`` fails), its queue key is ``int`` (uuid keys fail), its
advisory lock key is the table OID, and an UPDATE that changes nothing re-queues.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from .db import Database, connect
from .errors import CallbackFailed, NotFound, translate
from .queue import ClaimedRow, ProcessResult, Queue, QueueState

__all__ = ["Vectorize", "Row"]


def _create_ident(base: str, suffix: str) -> str:
    """The original's name derivation, kept so default queue names match it."""
    if len(base) + len(suffix) > 62:
        base = base[: 62 - len(suffix)]
    return re.sub(r"[^a-zA-Z0-9_]", "_", f"{base}_{suffix}")


def _with_suffix(base: str, suffix: str) -> str:
    """``base_suffix`` within PostgreSQL's 63 bytes, cutting ``base`` on a character boundary
    (PostgreSQL would cut the suffix off, and with it the difference between names)."""
    room = 63 - len(suffix.encode()) - 1
    return base.encode()[:room].decode(errors="ignore") + "_" + suffix


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


class Vectorize:
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
    ) -> None:
        if isinstance(service_url, Database):
            self._db = service_url
        elif service_url is None:
            self._db = connect()
        else:
            self._db = Database(service_url)
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
        self._queue: Queue | None = None
        self._conn: psycopg.Connection | None = None
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
            self._conn = self._db.connect(vector=True)
        return self._conn

    def register(self) -> None:
        """Install queue, triggers and backfill; a no-op when already registered."""
        if self._queue is not None:
            return
        schema, table = self.schema_name_unquoted, self.table_name_unquoted
        trig = self.trigger_name_unquoted
        conn = self._connect()
        try:
            self._queue = Queue.register(
                conn,
                name=self.name,
                source=(schema, table),
                queue=(schema, self.work_queue_table_name_unquoted),
                inbox=(schema, _create_ident(table, "embedding_inbox")),
                failed=(schema, _create_ident(table, "embedding_failed")),
                function=(schema, self.trigger_name_fn_unquoted),
                triggers={ev: _with_suffix(trig, ev) for ev in ("insert", "update", "delete", "truncate")},
                keys=self._keys,
                watched=self._columns,
                policy={"max_attempts": self._max_attempts},
                extra={"kind": "callback"},
            )
        except psycopg.Error as exc:
            raise translate(exc, f"registering a vectorizer on {schema}.{table}") from exc

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
            result = queue.process(conn, handler, limit=batch_size)
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

    def state(self) -> QueueState:
        """Queue counts: rows, claimable, retrying, failed, oldest, next retry."""
        conn = self._connect()
        with conn.transaction():
            return self._open(True).state(conn)

    def failed(self) -> list[dict[str, Any]]:
        """Rows of the failed table, as dicts."""
        from . import sql as q

        queue = self._open(True)
        conn = self._connect()
        with conn.transaction():
            cur = conn.execute(q.failed_rows(queue.failed, queue.keys))
            names = [d.name for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def retry_failed(self) -> int:
        """Put every failed key back in the queue with fresh attempts; returns how many."""
        return self._open(True).retry_failed(self._connect())

    def unregister(self) -> None:
        """Remove triggers, queue, failed table and catalog entry (not the source table)."""
        queue = self._open(False)
        queue.drop(self._connect())
        self._queue = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

