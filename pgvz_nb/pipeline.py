"""The built-in embed-and-write: format, chunk, hash, embed only what changed, write.

It runs inside the claim's transaction (``Queue.process``), so the dequeue, the delete of
a key's old chunks and the binary COPY of its new ones commit together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
import struct
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from datetime import time as clock
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from . import sql as q
from .db import first
from .errors import EmbeddingUnavailable, ServiceRowError, service_failed, service_wait
from .queue import ClaimedRow, Queue, Tally, check_trusted, keys_jsonb
from .uuids import time_from_uuid, uuid_from_time

__all__ = ["Pipeline", "PipelineConfig", "SyncStats", "template_fields"]


def template_fields(template: str) -> list[str]:
    """The ``{names}`` a template uses, in order, without repeats."""
    names = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            base = name.split(".")[0].split("[")[0]
            if base and base not in names:
                names.append(base)
    return names


class _Formatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            return json.dumps(value, default=str, ensure_ascii=False)
        return super().format_field(value, format_spec)


_FORMATTER = _Formatter()


class _Template:
    """A ``str.format`` template parsed once. Plain ``{name}`` / ``{name:spec}`` / ``{name!r}``
    fields render directly (5x faster than string.Formatter's pure-Python vformat, which
    was a quarter of the pipeline's time per row); attribute or index access and nested
    specs go through the general formatter."""

    def __init__(self, template: str):
        self.template = template
        self.parts = [(lit, name, spec or "", conv) for lit, name, spec, conv in _FORMATTER.parse(template)]
        self.simple = all(name is None or (name.isidentifier() and "{" not in spec)
                          for _, name, spec, _ in self.parts)

    def render(self, values: dict[str, Any], chunk: str) -> str:
        if not self.simple:
            return _FORMATTER.format(self.template, **{**values, "chunk": chunk})
        out = []
        for literal, name, spec, conv in self.parts:
            out.append(literal)
            if name is None:
                continue
            value = chunk if name == "chunk" else values[name]
            if conv:
                value = _FORMATTER.convert_field(value, conv)
            out.append(value if type(value) is str and not spec else _FORMATTER.format_field(value, spec))
        return "".join(out)


class _VectorBytes(bytes):
    """A vector already in pgvector's binary form (dims, unused, big-endian float4s)."""


def _vector_bytes(vec: np.ndarray) -> _VectorBytes:
    return _VectorBytes(struct.pack(">HH", vec.shape[0], 0) + vec.astype(">f4").tobytes())


def _vector_bytes_dumper(oid: int) -> type:
    """A binary dumper for one COPY cursor: passes _VectorBytes through, so a batch's vectors
    are encoded with numpy instead of one pgvector.Vector object per row."""
    from pgvector.psycopg.vector import VectorBinaryDumper

    class Dumper(VectorBinaryDumper):
        def dump(self, obj):
            return obj if isinstance(obj, _VectorBytes) else super().dump(obj)

    Dumper.oid = oid
    return Dumper


#: The times a version-1 uuid can hold (60 bits of 100 ns from 1582-10-15).
_UUID_TIMES = (datetime(1582, 10, 15, tzinfo=timezone.utc), datetime(5236, 1, 1, tzinfo=timezone.utc))


def _instant(value: Any) -> datetime | None:
    """A time_column value as an aware datetime: a naive timestamp is local time and a date
    local midnight, as PostgreSQL casts them to timestamptz (and as uuid_from_time reads a
    naive datetime). Without this a date failed every row, and a naive timestamp never
    matched the time in its stored id, so every update gave its chunks new ids.

    None for a time no v1 uuid can hold ('infinity', read as text; a BC date; a year past
    5236): the row is embedded under random ids, found by search but by no start/end range."""
    if value is None or not isinstance(value, (datetime, date)):
        return None
    if not isinstance(value, datetime):
        value = datetime.combine(value, clock())
    try:
        value = value if value.tzinfo is not None else value.astimezone(timezone.utc)
    except (OverflowError, ValueError):  # year 1 or 9999 in a time zone that leaves the range
        return None
    return value if _UUID_TIMES[0] <= value < _UUID_TIMES[1] else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(Decimal(value))  # JSON (and so jsonb) has no NaN or Infinity: 'NaN', 'Infinity'
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, (uuid.UUID, bytes, memoryview)):
        return str(value) if isinstance(value, uuid.UUID) else bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@dataclass
class PipelineConfig:
    """What the pipeline does, as stored in the catalog (``config["pipeline"]``)."""

    template: str
    destination: list[str]  # [schema, table]
    dest_keys: list[str]  # destination columns holding the source key
    metadata_key: str  # metadata entry holding the source key, e.g. "blog_id"
    embedder: dict[str, Any]  # kind, identity, dimensions (+ model, base_url for openai)
    chunk_column: str | None = None
    chunk_size: int = 1000
    chunk_overlap: int = 200
    metadata: list[str] = field(default_factory=list)
    time_column: str | None = None
    where: str | None = None
    batch_size: int = 64
    max_chunks: int = 500  # per source row; more is a RowError (a 1 MB text, say)
    transient_budget: float = 120.0  # seconds sync waits out an unavailable model service, between claims

    def model_id(self) -> str:
        """What made a vector: the embedder's identity and the recipe of the text it was
        given (template and chunking), e.g. ``pgvz_nb.default:all-MiniLM-L6-v2#3f2a9c1b``.
        Each destination row records it (the ``model`` column)."""
        recipe = json.dumps([self.template, self.chunk_column, self.chunk_size, self.chunk_overlap,
                             self.embedder.get("dimensions")])
        return f"{self.embedder['identity']}#{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"

    def source_columns(self) -> list[str]:
        """The source columns the pipeline reads (and so the triggers watch)."""
        cols = [c for c in template_fields(self.template) if c != "chunk"]
        for extra in (self.chunk_column, self.time_column, *self.metadata):
            if extra and extra not in cols:
                cols.append(extra)
        return cols

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PipelineConfig:
        return cls(**data)


@dataclass
class SyncStats(Tally):
    """Counts a sync adds up (``+=``)."""

    rows: int = 0  # keys processed (live, deleted or filtered out)
    chunks: int = 0  # chunks written
    embedded: int = 0  # chunks sent to the model
    unchanged: int = 0  # chunks whose stored vector was reused
    embed_calls: int = 0
    embed_seconds: float = 0.0


@dataclass
class _Chunk:
    seq: int
    text: str
    hash: str
    metadata: dict[str, Any]
    time: datetime | None


#: A service that answered in the last this many seconds is taken to be up.
_UP_FOR = 30.0
_PROBE_TEXT = "pgvz_nb: is the embedding service up?"


class Pipeline:
    """Turns claimed rows into destination rows (see module docs)."""

    def __init__(self, queue: Queue, config: PipelineConfig, embedder: Any):
        self.queue = queue
        self.config = config
        self.embedder = embedder
        self.dest: q.Rel = tuple(config.destination)  # type: ignore[assignment]
        self.identity = config.embedder["identity"]
        self.model_id = config.model_id()
        self._splitter = None
        if config.chunk_column:
            from langchain_text_splitters import RecursiveCharacterTextSplitter

            self._splitter = RecursiveCharacterTextSplitter(
                chunk_size=config.chunk_size, chunk_overlap=config.chunk_overlap
            )
        self._copy_types: list[int] | None = None
        self._vector_dumper: type | None = None  # made with _copy_types: it needs the vector oid
        self._template = _Template(config.template)
        # sync's lanes share one model: one batch is embedded at a time, while the other
        # lane claims, reads or writes
        self._model_lock = threading.Lock()
        self.stop: threading.Event | None = None  # set: the batch being embedded goes back (SIGTERM)
        self._service_up_at = -math.inf  # when the model last answered
        self._outages = 0  # batches sent back in a row because the service was unavailable
        self._refused_until = -math.inf  # the service asked for a pause until then (Retry-After)

    # --- pure parts ----------------------------------------------------------------------

    def chunks(self, key: tuple, values: dict[str, Any]) -> list[_Chunk]:
        """The formatted chunks of one source row, each with its hash and metadata."""
        cfg = self.config
        if self._splitter is not None and cfg.chunk_column is not None:
            text = values.get(cfg.chunk_column)
            pieces = self._splitter.split_text(str(text)) if text not in (None, "") else [""]
        else:
            pieces = [""]
        key_value = key[0] if len(key) == 1 else list(key)
        meta = {c: _jsonable(values.get(c)) for c in cfg.metadata}
        meta[cfg.metadata_key] = _jsonable(key_value)
        when = _instant(values.get(cfg.time_column)) if cfg.time_column else None
        out = []
        if len(pieces) > cfg.max_chunks:
            from .errors import RowError

            raise RowError(
                f"row {key_value!r} splits into {len(pieces)} chunks of {cfg.chunk_size} characters, "
                f"more than max_chunks={cfg.max_chunks} ({len(str(values.get(cfg.chunk_column or '')))} "
                "characters of text); raise max_chunks= or chunk_size=, or leave such rows out "
                "with where="
            )
        for seq, piece in enumerate(pieces):
            formatted = self._template.render(values, piece)
            if not formatted.strip():
                continue  # nothing to embed: a NULL or empty text with an empty template
            digest = hashlib.sha256(f"{self.identity}\x00{formatted}".encode()).hexdigest()
            out.append(_Chunk(seq, formatted, digest, meta, when))
        return out

    # --- the handler ---------------------------------------------------------------------

    def handle(self, conn: psycopg.Connection, rows: list[ClaimedRow], stats: SyncStats,
               reader: psycopg.Connection) -> None:
        """Bring the destination in line with ``rows``: the stored chunks are read on
        ``reader`` (the claim's per-key advisory locks keep every other worker off these
        keys), the model is called, and only then does the claim's transaction on ``conn``
        touch the destination, to delete and COPY: it holds no lock on the source or the
        destination while the model works."""
        # where this vectorizer writes now, its catalog row held (FOR KEY SHARE) until the
        # claim commits: a migration's cutover renames the destinations after taking the row
        # FOR UPDATE, so it waits for this batch, or this batch sees where it moved. First,
        # before the stored chunks are read: a handle opened before a cutover would compare
        # its rows with the other model's table, take a delete the other side has applied for
        # "nothing to do", and lose it
        moved = conn.execute(q.catalog_destination_of(), [self.queue.id]).fetchone()
        if moved is None or moved[0] is None or tuple(moved[0]) != self.dest:
            from .errors import Reconfigured

            raise Reconfigured(
                f"vectorizer {self.queue.name!r} no longer writes {'.'.join(self.dest)} (a migration "
                "was cut over or rolled back); the batch went back to the queue")
        keys_json = self._keys_json([r.key for r in rows])
        existing: dict[tuple, list[tuple]] = {}
        nk = len(self.config.dest_keys)
        # not prepared (here and below): a prepared statement whose result type changed (a
        # table of another vector(n) renamed over the name) fails instead of being planned again
        for rec in reader.execute(
            q.destination_rows(self.dest, self.queue.queue, self.queue.keys, self.config.dest_keys),
            {"keys": keys_json}, prepare=False,
        ):
            existing.setdefault(tuple(rec[:nk]), []).append(rec[nk:])  # (id, seq, hash, metadata)

        wanted: dict[tuple, list[_Chunk]] = {}
        for r in rows:
            live = not r.deleted and r.values.get("pgvz_where", True)
            wanted[r.key] = self.chunks(r.key, r.values) if live else []

        changed = []
        for key, chunks in wanted.items():
            old = sorted(existing.get(key, []), key=lambda e: e[1])
            same = len(old) == len(chunks) and all(
                o[2] == c.hash and o[3] == c.metadata and self._id_fits(o[0], c)
                for o, c in zip(old, chunks)
            )
            if same:
                stats.unchanged += len(chunks)
            else:
                changed.append(key)
        stats.rows += len(rows)
        if not changed:
            return

        # vectors: reuse any stored one with the same hash (same text, same model)
        by_hash: dict[str, uuid.UUID] = {}
        ids_for_reuse: dict[tuple, dict[str, list[uuid.UUID]]] = {}
        for key, olds in existing.items():
            for id_, _seq, h, _meta in olds:
                by_hash.setdefault(h, id_)
                ids_for_reuse.setdefault(key, {}).setdefault(h, []).append(id_)
        needed = {c.hash for k in changed for c in wanted[k]}
        reuse_ids = [by_hash[h] for h in needed if h in by_hash]
        vectors: dict[str, np.ndarray] = {}
        if reuse_ids:
            stored: dict[Any, Any] = dict(reader.execute(q.destination_embeddings_of(self.dest), [reuse_ids],
                                                            prepare=False).fetchall())
            for h in needed:
                if h in by_hash and by_hash[h] in stored:
                    vec = stored[by_hash[h]]
                    vectors[h] = np.asarray(vec.to_numpy() if hasattr(vec, "to_numpy") else vec,
                                            dtype=np.float32)
        texts: dict[str, str] = {}
        for k in changed:
            for c in wanted[k]:
                if c.hash not in vectors:
                    texts.setdefault(c.hash, c.text)
        if texts:
            with self._model_lock:
                t0 = time.perf_counter()
                embedded = self._embed(list(texts.values()))
                stats.embed_seconds += time.perf_counter() - t0
            stats.embed_calls += 1
            stats.embedded += len(texts)
            vectors.update(zip(texts.keys(), embedded))
        stats.unchanged += sum(1 for k in changed for c in wanted[k] if c.hash not in texts)

        changed_json = self._keys_json(changed)
        # the lock first (no other role can add a trigger while it is held), then the check:
        # code someone else put on the destination must not run with this role's privileges
        conn.execute(q.lock_for_writing(self.dest))
        owner = self.queue.config.get("owner") or first(conn.execute(q.role_of_table(), list(self.dest)))[1]
        check_trusted(conn, self.dest, "the destination", owner=False, trusted=[owner])
        conn.execute(
            q.destination_delete(self.dest, self.queue.queue, self.queue.keys, self.config.dest_keys),
            {"keys": changed_json},
        )
        self._write(conn, [(k, wanted[k]) for k in changed], vectors, ids_for_reuse)
        stats.chunks += sum(len(wanted[k]) for k in changed)

    def _id_fits(self, id_: uuid.UUID, chunk: _Chunk) -> bool:
        """A stored id can be kept unless the time it encodes is no longer the row's."""
        if not self.config.time_column or chunk.time is None:
            return True
        return id_.version == 1 and time_from_uuid(id_) == chunk.time

    def _call_model(self, texts: list[str]) -> Any:
        """The embedder's answer for ``texts``. With a ``stop`` event, the call runs in a
        daemon thread and a stop request (SIGTERM) ends the wait within a fraction of a
        second (Stopped: the claim goes back whole), however long the service takes."""
        def call() -> Any:
            if hasattr(self.embedder, "encode"):
                return self.embedder.encode(texts)
            return self.embedder.embed_documents(texts)

        if self.stop is None:
            return call()
        from .errors import Stopped

        done: dict[str, Any] = {}

        def run() -> None:
            try:
                done["value"] = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                done["error"] = exc

        thread = threading.Thread(target=run, name="pgvz_nb model call", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.1)
            if thread.is_alive() and self.stop.is_set():
                raise Stopped("asked to stop while the model was working; the batch went back to the queue")
        if "error" in done:
            raise done["error"]
        return done["value"]

    def _embed(self, texts: list[str]) -> np.ndarray:
        """The model's vectors for ``texts``.

        An error of the service is told apart from an error of these texts: a rate limit
        (429), a timeout or a dropped connection is the service's, and so is a 5xx when a
        probe with a text of pgvz_nb's own fails too: EmbeddingUnavailable, which puts the
        claim back whole, charges no row, and says how long to wait (Retry-After). A 5xx
        while the service answers other texts is these texts' (ServiceRowError): the batch
        is halved until the rows it refuses are isolated and retried with a backoff. No
        waiting happens here, inside the claim: ``sync`` waits between claims. A batch that
        was already waiting for the model (the other lane's) when the service asked for a
        pause goes back the same way, without a call, until the pause is over."""
        pause = self._refused_until - time.monotonic()
        if pause > 0:
            raise EmbeddingUnavailable(
                f"the embedding service asked for a pause {pause:.1f} s more; the batch went back to the "
                "queue, no row was charged", retry_after=pause, counted=True)
        try:
            raw = self._call_model(texts)
        except Exception as exc:
            wait = service_wait(exc, self._outages)  # the pause grows while the service stays down
            if wait is None:
                raise
            if service_failed(exc) and self._service_is_up():
                raise ServiceRowError(
                    f"the embedding service answered {len(texts)} text(s) with {type(exc).__name__}: "
                    f"{exc}, while it answers others; these rows are retried after a backoff") from exc
            self._outages += 1
            self._refused_until = time.monotonic() + wait
            raise EmbeddingUnavailable(
                f"the embedding service is not answering ({type(exc).__name__}: {exc}); the batch "
                f"went back to the queue, no row was charged; next try in {wait:.0f} s",
                retry_after=wait) from exc
        self._service_up_at, self._outages = time.monotonic(), 0
        return self._check_vectors(raw, len(texts))

    def _service_is_up(self) -> bool:
        """Whether the model answered lately, or answers a probe of pgvz_nb's own now."""
        if time.monotonic() - self._service_up_at < _UP_FOR:
            return True
        try:
            self._call_model([_PROBE_TEXT])
        except Exception:  # noqa: BLE001 - whatever it is, the service did not answer
            return False
        self._service_up_at = time.monotonic()
        return True

    def _check_vectors(self, raw: Any, count: int) -> np.ndarray:
        """``raw`` as a (count, dimensions) float32 array, or DimensionMismatch saying what
        came back."""
        from .errors import DimensionMismatch

        dims = self.config.embedder["dimensions"]
        try:
            got = len(raw)
        except TypeError:
            got = None
        if got != count:
            raise DimensionMismatch(
                f"the embedder returned {'no list' if got is None else got} vector(s) for {count} "
                f"text(s) of {'.'.join(self.dest)}; an Embeddings.embed_documents must return one "
                "vector per text, in order")
        try:
            arr = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape != (count, dims):
            sizes = sorted({len(v) for v in raw if hasattr(v, "__len__")})
            raise DimensionMismatch(
                f"the embedder returned vectors of {sizes or 'no'} dimension(s) for "
                f"{'.'.join(self.dest)}, which holds {dims}; use an embedder of {dims} dimensions "
                "or recreate the vectorizer with replace=True")
        return arr

    def _keys_json(self, keys: Sequence[tuple]) -> Jsonb:
        return keys_jsonb([dict(zip(self.queue.keys, k)) for k in keys])

    def _write(self, conn, items, vectors, ids_for_reuse) -> None:
        # looked up at every batch (~0.2 ms): the key's type can change under a running worker
        # (int made bigint, a table created again with a text key), and binary COPY needs it exact
        types = dict(conn.execute(q.column_types(), list(self.dest)).fetchall())
        has_model = "model" in types  # not in a destination made before it, until create() adds it
        copy_types = [types[c] for c in ("id", "metadata", "contents", "embedding", *self.config.dest_keys,
                                         "chunk_seq", "chunk_hash", *(["model"] if has_model else []))]
        if copy_types != self._copy_types:
            self._copy_types = copy_types
            self._vector_dumper = _vector_bytes_dumper(copy_types[3])
        cur = conn.cursor()
        cur.adapters.register_dumper(_VectorBytes, self._vector_dumper)
        encoded = {h: _vector_bytes(v) for h, v in vectors.items()}
        model = (self.model_id,) if has_model else ()
        with cur.copy(q.destination_copy(self.dest, self.config.dest_keys, model=has_model)) as copy:
            copy.set_types(self._copy_types)
            for key, chunks in items:
                spare = {h: list(ids) for h, ids in ids_for_reuse.get(key, {}).items()}
                for c in chunks:
                    id_ = None
                    for candidate in spare.get(c.hash, []):
                        if self._id_fits(candidate, c):
                            id_ = candidate
                            spare[c.hash].remove(candidate)
                            break
                    if id_ is None:
                        id_ = uuid_from_time(c.time) if c.time is not None else uuid.uuid4()
                    copy.write_row((id_, Jsonb(c.metadata), c.text, encoded[c.hash], *key, c.seq, c.hash, *model))
