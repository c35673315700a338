"""The work queue: catalog, queue and failed tables, triggers, claim / fail / retry, status.

This module holds the logic; the statements themselves live in ``sql``. One ``Queue`` is
one registered vectorizer: a catalog row, a queue table, a failed table, one trigger
function and four statement-level triggers on the source table.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from . import sql as q
from .db import column_names, first
from .errors import (
    ConfigConflict,
    LockUnavailable,
    NoPrimaryKey,
    NotATable,
    NotFound,
    RowError,
    UntrustedObject,
    blame,
    rolled_back,
)

__all__ = ["DEFAULT_POLICY", "ClaimedRow", "ProcessResult", "Queue", "QueueState", "locked"]

Rel = q.Rel

#: The layout of a vectorizer's catalog config, inbox/queue/failed tables and trigger, stored
#: in its catalog row. A pgvz_nb that changes the layout raises this and upgrades older rows;
#: an older pgvz_nb refuses a newer layout instead of misreading it.
LAYOUT_VERSION = 1

DEFAULT_POLICY = {"max_attempts": 5, "backoff_base": 10.0, "backoff_max": 3600.0}
_ERROR_TEXT_LIMIT = 4000


@dataclass
class ClaimedRow:
    """One claimed key: its attempts so far, when it was first queued, and the source row."""

    key: tuple
    attempts: int
    queued_at: datetime
    values: dict[str, Any] = field(default_factory=dict)  # the source columns; all None when gone
    deleted: bool = False
    error: BaseException | None = None  # the row could not be read (a value Python cannot hold)


@dataclass
class QueueState:
    """Counts behind a claim that came back empty, and the answer they give."""

    rows: int
    claimable: int
    retrying: int
    failed: int
    oldest: datetime | None
    next_retry: datetime | None

    @property
    def answer(self) -> str:
        """'empty' (nothing queued), 'waiting' (all in backoff) or 'busy' (held by other workers)."""
        if self.rows == 0:
            return "empty"
        if self.claimable == 0:
            return "waiting"
        return "busy"


class Tally:
    """A dataclass of counts that adds up field by field: numbers add, lists join; any other
    field keeps the left side's value. ``a += b`` adds ``b`` into ``a``."""

    def __iadd__(self, other: Any) -> Any:
        for f in fields(self):  # type: ignore[arg-type]
            mine = getattr(self, f.name)
            if isinstance(mine, (int, float, list)) and not isinstance(mine, bool):
                setattr(self, f.name, mine + getattr(other, f.name))
        return self

    def __add__(self, other: Any) -> Any:
        total = copy.copy(self)
        for f in fields(self):  # type: ignore[arg-type]
            if isinstance(getattr(self, f.name), list):
                setattr(total, f.name, list(getattr(self, f.name)))
        total += other
        return total


@dataclass
class ProcessResult(Tally):
    """What one claim-and-process round did."""

    claimed: int = 0
    succeeded: int = 0
    failed_keys: list[tuple] = field(default_factory=list)
    moved_to_failed: int = 0
    errors: list[BaseException] = field(default_factory=list)
    state: QueueState | None = None  # set when nothing was claimed
    #: keys of the claim whose last worker died holding them: the claim was rolled back, and
    #: process() claims each of them alone (see Queue.process)
    take_alone: list[tuple] = field(default_factory=list)

    def __iadd__(self, other: Any) -> Any:
        super().__iadd__(other)
        self.state = None if self.claimed else other.state
        return self

    @property
    def answer(self) -> str:
        """'processed', or why nothing was: 'empty', 'waiting', 'busy'."""
        return "processed" if self.claimed else (self.state.answer if self.state else "empty")


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[: _ERROR_TEXT_LIMIT - 3] + "..."


def keys_jsonb(records: list[dict[str, Any]]) -> Jsonb:
    """Key records as jsonb for ``jsonb_populate_recordset(NULL::queue, ...)``: every value in
    the text form PostgreSQL's input functions read back (uuid, timestamps, numeric, bytea)."""
    return Jsonb(records, dumps=lambda o: json.dumps(o, default=_json_default))


log = logging.getLogger("pgvz_nb.queue")

_KEY_ESCAPES = str.maketrans({"\\": "\\\\", "\x1e": "\\x1e", "\x1f": "\\x1f"})


def _json_default(value: Any) -> str:
    # uuid, datetime, Decimal, date: their str() is what PostgreSQL's input functions read
    if isinstance(value, (bytes, memoryview)):
        return "\\x" + bytes(value).hex()
    return str(value)


def _key_text(value: Any) -> str:
    """One key column's text in pgvz.in_flight: the same for every worker that reads the
    key, whatever its session's TimeZone (a timestamptz comes back in it: taken to UTC)."""
    if isinstance(value, str):
        return value.translate(_KEY_ESCAPES)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(timezone.utc).isoformat()
    return _json_default(value)


#: How long one attempt of pgvz_nb's own DDL (triggers on the application's table) may wait
#: for a lock: the application's statements queue behind a waiting lock request, so it is
#: kept short and retried, rather than made long.
LOCK_TIMEOUT = "100ms"
#: How long, in all, an install keeps retrying before it gives up and says who holds the lock.
LOCK_WAIT = 30.0


class _Busy(Exception):
    """The install lock is held by another install right now."""


def locked(conn: psycopg.Connection, body: Callable[[], Any], *, target: Rel, doing: str,
           wait: float | None = None, install: bool = True) -> Any:
    """``body()`` in a transaction that holds the install lock and waits at most LOCK_TIMEOUT
    for any lock: retried (with a growing, jittered pause) until ``wait`` seconds have gone,
    then LockUnavailable, naming the sessions that hold ``target``. So the application's
    statements never queue for longer than LOCK_TIMEOUT behind pgvz_nb's DDL (CREATE
    TRIGGER takes a lock that conflicts with every writer), and an install never waits for
    another one to finish. ``install=False``: without the install lock (a backfill, which
    only reads the source and writes its own queue)."""
    wait = LOCK_WAIT if wait is None else wait
    deadline = time.monotonic() + wait
    pause = 0.05
    while True:
        try:
            with conn.transaction():
                conn.execute(q.set_local(), ["lock_timeout", LOCK_TIMEOUT])
                if install and not first(conn.execute(q.try_install_lock()))[0]:
                    raise _Busy()
                return body()
        except (psycopg.errors.LockNotAvailable, _Busy) as exc:
            if time.monotonic() + pause > deadline:
                holders = conn.execute(q.lock_holders(), {"schema": target[0], "table": target[1]}).fetchall()
                who = "; ".join(f"pid {pid} ({app or 'no application_name'}, {state}, transaction open "
                                f"{age}): {query!r}" for pid, app, state, age, query in holders)
                conn.rollback()
                raise LockUnavailable(
                    f"while {doing}: could not get the locks it needs on {'.'.join(target)} within "
                    f"{wait:.0f} s without making the application wait (each try waits at most "
                    f"{LOCK_TIMEOUT}); " + (f"held by {who}" if who else "another install was running")
                    + "; run it again when those transactions have ended"
                ) from (exc if isinstance(exc, psycopg.Error) else None)
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 1.0)


@dataclass
class _Run:
    """What one process() call does with each claim it makes."""

    handler: Callable[[list[ClaimedRow]], None]
    limit: int
    columns: Sequence[str] | None
    where: Any
    isolate_failures: bool
    reader: psycopg.Connection
    in_flight: _InFlight | None


#: a batch of claimed rows and the error that stopped it
Failure = tuple[list[ClaimedRow], BaseException]


class _InFlight:
    """The record, in pgvz.in_flight, of the keys a worker is processing (see Queue.process).

    Written through its own autocommit connection, so that it outlives a worker that dies
    (killed, out of memory, a crash in native code) while the claim rolls back; the claim's
    transaction deletes it when the batch ends, whatever its outcome."""

    def __init__(self, queue: Queue, conn: psycopg.Connection):
        self.queue = queue
        self.conn = conn
        self.batch: int | None = None  # the record of the keys being processed now
        self.keys = ""  # the claim's keys, as in_flight holds them
        self.deaths: dict[int, int] = {}  # 1-based row of the claim -> workers that died with it

    def check(self, claim_conn: psycopg.Connection, rows: list[ClaimedRow]) -> dict[int, int]:
        """How many workers died holding each key of ``rows`` (row number -> deaths)."""
        self.batch, self.keys = None, _key_texts(rows)
        self.deaths = dict(claim_conn.execute(q.in_flight_deaths(), {"keys": self.keys, "vid": self.queue.id}).fetchall())
        return self.deaths

    def mark(self, all_rows: list[ClaimedRow], rows: list[ClaimedRow]) -> None:
        """Record ``rows`` (of the claim ``all_rows``) as being processed, committed at once."""
        held = self.keys if len(rows) == len(all_rows) else _key_texts(rows)
        self.batch = first(self.conn.execute(q.in_flight_mark(), {"keys": held, "vid": self.queue.id}))[0]

    def put_back(self) -> None:
        """The batch goes back on purpose (an error, a stop): not a dead worker's trace."""
        if self.batch is not None:
            self.conn.execute(q.in_flight_clear(), {"batch": self.batch})

    def finish(self, claim_conn: psycopg.Connection) -> None:
        """In the claim's transaction: the batch's record goes, and with the keys' outcome now
        recorded, so does the record of the batches that died with them."""
        if self.batch is not None:
            claim_conn.execute(q.in_flight_clear(), {"batch": self.batch})
        if self.deaths:
            claim_conn.execute(q.in_flight_forget(), {"keys": self.keys, "vid": self.queue.id})


def _key_texts(rows: list[ClaimedRow]) -> str:
    """The rows' keys as one string for pgvz.in_flight: per key, each column's ``_key_text``
    (backslash and the two separators escaped in text) joined by chr(31), and the keys
    joined by chr(30). One string parameter, not an array: a text[] of 1000 keys costs
    ~2 ms to adapt, this ~0.3 ms."""
    if rows and all(len(r.key) == 1 and type(r.key[0]) is int for r in rows):
        return "\x1e".join([str(r.key[0]) for r in rows])
    return "\x1e".join("\x1f".join(_key_text(v) for v in r.key) for r in rows)


class Queue:
    """A registered vectorizer's queue machinery (see module docs)."""

    _in_flight_table: bool | None = None

    def __init__(self, row: Sequence[Any]):
        self.id, self.name, src_schema, src_table, q_schema, q_table, config, self.created_at = row
        self.source: Rel = (src_schema, src_table)
        self.queue: Rel = (q_schema, q_table)
        self.config: dict[str, Any] = config
        self.keys: list[str] = config["keys"]
        self.watched: list[str] | None = config.get("watched")
        self.inbox: Rel = (config["inbox"][0], config["inbox"][1])
        self.failed: Rel = (config["failed"][0], config["failed"][1])
        self.function: Rel = (config["function"][0], config["function"][1])
        self.triggers: dict[str, str] = config["triggers"]
        #: how changes reach the queue: "triggers", or "wal" (logical decoding, see capture)
        self.capture: str = config.get("capture", "triggers")
        self.policy: dict[str, float] = {**DEFAULT_POLICY, **config.get("policy", {})}

    def __repr__(self) -> str:
        return f"Queue(id={self.id}, name={self.name!r}, source={'.'.join(self.source)!r})"

    # --- registration ------------------------------------------------------------------

    @classmethod
    def ensure_catalog(cls, conn: psycopg.Connection) -> None:
        """Create the pgvz schema and catalog if missing (caller holds the install lock).

        A schema pgvz made by someone else first (any role with CREATE on the database may)
        is refused, as are catalog tables owned or instrumented by another role: their
        owner could run code as whoever installs or syncs (see ``check_trusted``)."""
        found = conn.execute(q.schema_trust(), [q.CATALOG[0]]).fetchone()
        if found is not None and not (found[1] or found[2]):
            raise UntrustedObject(
                f"schema {q.CATALOG[0]} exists and is owned by role {found[0]}, neither you nor a "
                "superuser: its owner could replace pgvz_nb's tables with its own, and pgvz_nb "
                f"would write into them; drop that schema, or give it to a trusted role "
                f"(ALTER SCHEMA {q.CATALOG[0]} OWNER TO ...) after checking what it holds"
            )
        for rel in (q.CATALOG, q.IN_FLIGHT, q.WAL_PROGRESS, q.WAL_FOLLOW):
            check_trusted(conn, rel, "pgvz_nb's table", superuser_ok=True)
        if first(conn.execute(q.catalog_exists(), [".".join(q.CATALOG)]))[0]:
            no_column, no_in_flight, no_policy = first(conn.execute(
                q.catalog_missing_parts(),
                {"catalog": ".".join(q.CATALOG), "in_flight": ".".join(q.IN_FLIGHT)}))
            if no_column:
                conn.execute(q.upgrade_catalog())
            if no_in_flight:
                conn.execute(q.create_in_flight())
            if no_in_flight or no_policy:
                conn.execute(q.in_flight_policy())
        else:
            conn.execute(q.create_catalog_schema())
            conn.execute(q.create_catalog())
            conn.execute(q.create_in_flight())
            conn.execute(q.in_flight_policy())
        if conn.execute(q.find_relation(), list(q.WAL_PROGRESS)).fetchone() is None:
            conn.execute(q.create_wal_progress())
        if conn.execute(q.find_relation(), list(q.WAL_FOLLOW)).fetchone() is None:
            conn.execute(q.create_wal_follow())
        cls._ensure_event_triggers(conn)

    @staticmethod
    def _ensure_event_triggers(conn: psycopg.Connection) -> None:
        """The event triggers that follow partitions created, attached, detached or dropped
        later (see sql.partition_function_body and sql.drop_function_body), with this
        pgvz_nb's bodies. Only a superuser may create event triggers: for anyone else,
        re-running create() covers new partitions."""
        if not first(conn.execute(q.is_superuser()))[0]:
            return
        for function, params, types, returns in q.HELPER_FUNCTIONS:
            body = q.stored_text(q.plpgsql_file(function), conn)
            signature = f"{function[0]}.{function[1]}({types})"
            if first(conn.execute(q.helper_function_source(), {"signature": signature}))[0] != body:
                conn.execute(q.create_helper_function(function, params, returns, body))
        for function, make_body, name, event, tags in q.EVENT_TRIGGERS:
            found, installed, installed_tags = first(conn.execute(q.event_function_source(), {
                "fschema": function[0], "fname": function[1], "evt": name}))
            body = q.stored_text(make_body(), conn)
            if found != body:
                conn.execute(q.create_event_function(function, body))
            if installed and installed_tags != (sorted(tags) if tags else None):
                conn.execute(q.drop_event_trigger(name))  # an older pgvz_nb's, on other commands
                installed = False
            if not installed:
                conn.execute(q.create_event_trigger(name, event, tags, function))

    @classmethod
    def open(cls, conn: psycopg.Connection, name: str) -> Queue:
        """The registered queue called ``name``; NotFound if there is none."""
        found = cls.find(conn, name)
        if found is None:
            raise NotFound(
                f"no vectorizer named {name!r} in this database; "
                "list them with pgvz_nb.vectorizers(db), or create it first"
            )
        return found

    @classmethod
    def find(cls, conn: psycopg.Connection, name: str) -> Queue | None:
        if not first(conn.execute(q.catalog_exists(), [".".join(q.CATALOG)]))[0]:
            return None
        row = conn.execute(q.catalog_get(), [name]).fetchone()
        if not row:
            return None
        found = cls(row)
        layout = found.config.get("layout", 1)
        if layout > LAYOUT_VERSION:
            raise ConfigConflict(
                f"vectorizer {name!r} was created by a newer pgvz_nb (layout {layout}; this one "
                f"reads up to {LAYOUT_VERSION}); upgrade pgvz_nb where this runs"
            )
        return found

    @classmethod
    def list_all(cls, conn: psycopg.Connection) -> list[Queue]:
        if not first(conn.execute(q.catalog_exists(), [".".join(q.CATALOG)]))[0]:
            return []
        return [cls(r) for r in conn.execute(q.catalog_list()).fetchall()]

    @classmethod
    def register(cls, conn: psycopg.Connection, **kw: Any) -> Queue:
        """Install (or find installed) the queue for ``source``; idempotent. See ``install``;
        this one runs it in a ``locked`` transaction of its own, then queues the rows."""
        queue = locked(conn, lambda: cls.install(conn, **kw), target=kw["source"],
                       doing=f"registering a vectorizer on {'.'.join(kw['source'])}")
        queue.complete_backfill(conn)
        return queue

    @classmethod
    def install(
        cls,
        conn: psycopg.Connection,
        *,
        name: str,
        source: Rel,
        queue: Rel,
        inbox: Rel,
        failed: Rel,
        function: Rel,
        triggers: dict[str, str],
        keys: Sequence[str] | None = None,
        watched: Sequence[str] | None = None,
        policy: dict[str, float] | None = None,
        extra: dict[str, Any] | None = None,
        capture: str = "triggers",
    ) -> Queue:
        """Install (or find installed) the queue for ``source`` in the caller's ``locked``
        transaction; idempotent. ``capture="wal"``: no function and no triggers; the source
        joins the publication of the WAL capture instead (the caller made the slot first),
        and an installed vectorizer switches mode here (``switch_capture``).

        The catalog row, tables, function and triggers are created here; the existing rows
        are queued by ``complete_backfill`` in the next transaction. Not in this one: CREATE
        TRIGGER locks out the table's writers until commit, and queueing a large table's
        rows takes seconds. No row is missed: every write committed before the triggers
        was committed before this transaction got its lock, so the backfill's later
        snapshot sees it; a write in between is queued twice, and claimed once. Until the
        backfill has run, the catalog row says so (``config["backfill"]``), and the next
        create(), register() or process() runs it.
        """
        cls.ensure_catalog(conn)
        columns = describe_table(conn, source)
        key_cols = resolve_keys(conn, source, columns, keys)
        watched_cols = None if watched is None else list(dict.fromkeys(watched))
        if watched_cols is not None:
            missing = [c for c in watched_cols if c not in columns]
            if missing:
                raise NotFound(
                    f"column(s) {missing} not found in {'.'.join(source)}; "
                    f"its columns are {list(columns)}"
                )
        foreign = conn.execute(q.untrusted_key_types(), {"schema": source[0], "table": source[1],
                                                          "keys": key_cols}).fetchall()
        if foreign:
            raise UntrustedObject(
                f"key column(s) {[f'{c} ({t}, owned by {o})' for c, t, o in foreign]} of "
                f"{'.'.join(source)} have a type that belongs to another role: its domain checks "
                "and casts would run on every write with the privileges of the vectorizer's "
                "trigger (yours); create the vectorizer as that role, or key it on a built-in type"
            )
        me, source_owner = first(conn.execute(q.role_of_table(), list(source)))
        clash = [k for k in key_cols if k in q.QUEUE_COLUMNS or k in q.FAILED_COLUMNS]
        if clash:
            raise ConfigConflict(
                f"key column(s) {clash} of {'.'.join(source)} share a name with the queue's "
                f"bookkeeping columns {q.QUEUE_COLUMNS + q.FAILED_COLUMNS}; rename the column "
                "or key the vectorizer on another unique column"
            )
        config = {
            "keys": key_cols,
            "watched": watched_cols,
            "inbox": list(inbox),
            "failed": list(failed),
            "function": list(function),
            "triggers": dict(triggers),
            "policy": {**DEFAULT_POLICY, **(policy or {})},
            "layout": LAYOUT_VERSION,
            # whose tables these are, and whose the source: the event triggers, which run as
            # a superuser, act only on tables these roles (or superusers) own
            "owner": me,
            "source_owner": source_owner,
            "capture": capture,
            # the source's oid now: a WAL vectorizer follows a rename by it (capture.targets)
            "source_oid": first(conn.execute(q.relation_oid(), list(source)))[0],
            **(extra or {}),
        }
        new_config = {**config, "backfill": [list(source)]}
        existing = cls.find(conn, name)
        if existing is not None:
            same = (
                existing.source == source
                and existing.queue == queue
                and existing.keys == key_cols
                and existing.watched == watched_cols
            )
            if not same:
                raise ConfigConflict(
                    f"vectorizer {name!r} exists with source {'.'.join(existing.source)}, "
                    f"keys {existing.keys}, watched columns {existing.watched}; asked for "
                    f"{'.'.join(source)}, keys {key_cols}, watched {watched_cols}; "
                    "drop it first or choose another name"
                )
            if existing.installed(conn):
                if existing.policy != config["policy"]:  # not structural: just update it
                    existing.set_extra(conn, policy=config["policy"])
                    existing.policy = dict(config["policy"])
                if "owner" not in existing.config and existing._owns_function(conn):
                    existing.set_extra(conn, owner=me, source_owner=source_owner)  # installs before these
                if existing.capture != capture:
                    existing.switch_capture(conn, capture)
                existing._refresh_trigger_body(conn)
                covered = existing.cover_descendants(conn)
                if covered:
                    pending = existing.config.get("backfill", []) + [list(r) for r in covered]
                    existing.set_extra(conn, backfill=pending)
                return existing
            existing._uninstall_objects(conn)  # half-dropped by hand: rebuild it whole
            conn.execute(q.catalog_delete(), [existing.id])
        cls._check_names_free(conn, source, (queue, inbox, failed), triggers)
        vid, created = first(conn.execute(q.catalog_insert(), [name, *source, *queue, Jsonb(new_config)]))
        self = cls((vid, name, *source, *queue, new_config, created))
        conn.execute(q.create_queue(queue, source, key_cols))
        conn.execute(q.create_inbox(inbox, source, key_cols))
        conn.execute(q.create_failed(failed, source, key_cols))
        if capture == "wal":
            self._join_publication(conn)
        else:
            self._install_triggers(conn)
        return self

    def _install_triggers(self, conn: psycopg.Connection) -> None:
        conn.execute(q.create_trigger_function(self.function, self._trigger_body(conn)))
        conn.execute(q.create_triggers(self.source, self.function, self.triggers))
        self.cover_descendants(conn)  # the source's backfill reads their rows

    def _join_publication(self, conn: psycopg.Connection) -> None:
        from . import capture

        capture.check_identity(conn, self.source, self.keys)
        capture.ensure(conn, self.source, self.keys)
        # the partitions it has now: those attached or detached later are followed from these
        oid = first(conn.execute(q.relation_oid(), list(self.source)))[0]
        conn.execute(q.wal_follow_set_partitions(), [self.id, Jsonb(capture.partition_state(conn, oid))])

    def _remove_triggers(self, conn: psycopg.Connection) -> None:
        if conn.execute(q.find_relation(), list(self.source)).fetchone() is not None:
            conn.execute(q.drop_triggers(self.source, list(self.triggers.values())))
        # and on partitions, children, and tables detached from the source since
        for schema, table, name in conn.execute(q.triggers_running(), list(self.function)).fetchall():
            conn.execute(q.drop_triggers((schema, table), [name]))
        conn.execute(q.drop_function(self.function))

    def _leave_publication(self, conn: psycopg.Connection) -> None:
        from . import capture

        others = [v for v in capture.wal_vectorizers(conn) if v.id != self.id]
        capture.forget(conn, self.source, still_used=any(v.source == self.source for v in others))

    def switch_capture(self, conn: psycopg.Connection, to: str) -> None:
        """Change how changes reach the queue, in the caller's ``locked`` transaction, with
        writes going on and none lost. To WAL: the table joins the publication and the
        triggers go, in one transaction (DROP TRIGGER waits for the writers that ran them,
        and later writers wait for the commit, after which their changes are decoded). To
        triggers: the triggers come and the table leaves the publication, in one transaction;
        the changes committed before it are still in the slot, and the capture queues them
        for every vectorizer on the table, WAL or not (``capture.targets``). The slot goes when
        no WAL vectorizer is left and the capture has read up to then (``capture.capture``)."""
        if to == "wal":
            self._join_publication(conn)
            self._remove_triggers(conn)
            self.set_extra(conn, source_oid=first(conn.execute(q.relation_oid(), list(self.source)))[0])
        else:
            from . import capture

            capture.follow_now(conn, self)  # what the capture had still to follow of the DDL
            self._install_triggers(conn)
            self._leave_publication(conn)
        self.set_extra(conn, capture=to)
        self.capture = to

    @staticmethod
    def _check_names_free(conn, source: Rel, tables: tuple[Rel, ...], triggers: dict[str, str]) -> None:
        for rel in tables:
            if conn.execute(q.find_relation(), list(rel)).fetchone() is not None:
                owner = conn.execute(q.catalog_get_by_queue(), list(rel)).fetchone()
                who = f"vectorizer {owner[1]!r}" if owner else "something other than pgvz_nb"
                raise ConfigConflict(
                    f"{'.'.join(rel)} already exists (made by {who}); pass another queue name "
                    "(work_queue_table_name=...), or drop the old table if it is a leftover "
                    "(an old timescale_vector PgVectorizer queue, say)"
                )
        taken = {r[0] for r in conn.execute(q.trigger_names_on(), list(source)).fetchall()}
        clash = sorted(taken & set(triggers.values()))
        if clash:
            raise ConfigConflict(
                f"trigger(s) {clash} already exist on {'.'.join(source)}; pass another trigger_name, "
                "or drop the old trigger if it is a leftover (timescale_vector's "
                "track_changes_for_embedding, say)"
            )

    def _owns_function(self, conn: psycopg.Connection) -> bool:
        found = conn.execute(q.trigger_function_source(), list(self.function)).fetchone()
        return bool(found and found[1])

    def _refresh_trigger_body(self, conn: psycopg.Connection) -> None:
        """Give an installed trigger function the body this pgvz_nb writes (fixes and
        speed-ups in it reach existing vectorizers at their next create()/register()). Only
        its owner may replace it; for anyone else the old body stays, as it works."""
        found = conn.execute(q.trigger_function_source(), list(self.function)).fetchone()
        body = self._trigger_body(conn)
        if found is not None and found[1] and found[0] != body:
            conn.execute(q.create_trigger_function(self.function, body))

    def _trigger_body(self, conn: psycopg.Connection) -> str:
        """The trigger function's body for this queue as this pgvz_nb writes it, in the form
        pg_proc.prosrc holds it."""
        return q.stored_text(q.trigger_body(self.inbox, self.keys, self.watched, notify_payload=self.id), conn)

    def _descendants(self, conn: psycopg.Connection) -> list[tuple[Rel, set[str], bool]]:
        """(partition or child, our triggers on it, may we add triggers) at any depth."""
        rows = conn.execute(q.descendants(), {
            "schema": self.source[0], "table": self.source[1], "fschema": self.function[0],
            "fname": self.function[1], "triggers": list(self.triggers.values())}).fetchall()
        return [((r[0], r[1]), set(r[2]), r[3]) for r in rows]

    def cover_descendants(self, conn: psycopg.Connection) -> list[Rel]:
        """Put the triggers on every partition and inheritance child that lacks them (a
        statement aimed at a partition fires only the partition's statement triggers).
        Returns those covered now, whose rows are to be queued: one may have been attached
        with rows, or written to while uncovered. Those the current role may not add
        triggers to stay uncovered (``uncovered``)."""
        covered = []
        for rel, present, may in self._descendants(conn):
            missing = [e for e, name in self.triggers.items() if name not in present]
            if missing and may:
                conn.execute(q.create_triggers(rel, self.function, self.triggers, missing))
                covered.append(rel)
        return covered

    def complete_backfill(self, conn: psycopg.Connection, *, pending: bool = False) -> int:
        """Queue the rows of the tables an install left to back-fill (``install``), or a
        partition attached since, in a transaction of its own; returns the keys queued. Runs
        once: the list is taken out of the catalog row in the same transaction. ``pending``:
        the catalog says there is such a list (else this Queue's config is asked)."""
        def body() -> int:
            row = conn.execute(q.catalog_take_backfill(), [self.id]).fetchone()
            done = 0
            for schema, table in (row[0] if row else []):
                if conn.execute(q.find_relation(), [schema, table]).fetchone() is not None:
                    done += conn.execute(q.backfill(self.queue, (schema, table), self.keys)).rowcount
            return done

        if not (pending or self.config.get("backfill")):
            return 0
        done = locked(conn, body, target=self.source, doing=f"queueing the rows of {'.'.join(self.source)}",
                      install=False)
        self.config.pop("backfill", None)
        return done

    def uncovered(self, conn: psycopg.Connection) -> list[Rel]:
        """Partitions and inheritance children of the source without all of the triggers:
        changes aimed at them directly are not queued until create()/register() runs again."""
        names = set(self.triggers.values())
        return [rel for rel, present, _ in self._descendants(conn) if present != names]

    def installed(self, conn: psycopg.Connection) -> bool:
        """True if the queue, inbox, failed table and all four triggers (WAL capture: the
        table's place in the publication) are in place."""
        for rel in (self.queue, self.inbox, self.failed):
            if conn.execute(q.find_relation(), list(rel)).fetchone() is None:
                return False
        if self.capture == "wal":
            return bool(first(conn.execute(q.publication_has_table(), {
                "pub": q.PUBLICATION, "schema": self.source[0], "table": self.source[1]}))[0])
        taken = {r[0] for r in conn.execute(q.trigger_names_on(), list(self.source)).fetchall()}
        return set(self.triggers.values()) <= taken

    def _uninstall_objects(self, conn: psycopg.Connection) -> None:
        self._remove_triggers(conn)
        if self.capture == "wal":
            self._leave_publication(conn)
        for rel in (self.queue, self.inbox, self.failed):
            conn.execute(q.drop_table(rel))

    def drop(self, conn: psycopg.Connection, then: Callable[[], Any] | None = None) -> None:
        """Remove triggers, function, queue, failed table and catalog row (not the source),
        and run ``then()`` in the same transaction; ``locked``: DROP TRIGGER takes a lock
        that every reader and writer of the table would queue behind."""
        def body() -> None:
            self._uninstall_objects(conn)
            conn.execute(q.catalog_delete(), [self.id])
            if then is not None:
                then()

        locked(conn, body, target=self.source, doing=f"dropping vectorizer {self.name!r}")

    def set_extra(self, conn: psycopg.Connection, **extra: Any) -> None:
        """Store extra configuration (the pipeline's) in the catalog row."""
        self.config.update(extra)
        conn.execute(q.catalog_set_config(), [Jsonb(self.config), self.id])

    # --- claim and process -------------------------------------------------------------

    def expand(self, conn: psycopg.Connection, limit: int = 1000) -> int:
        """Move keys from the inbox to the queue (its own transaction); returns keys moved."""
        with conn.transaction():
            return conn.execute(
                q.expand_inbox(self.inbox, self.queue, self.keys), {"limit": int(limit)}
            ).rowcount

    def claim(self, conn: psycopg.Connection, limit: int, only: list[tuple] | None = None) -> list[ClaimedRow]:
        """Claim up to ``limit`` queue rows in the caller's open transaction (``only``: just
        these keys); one ClaimedRow per key, its source row not read yet (``read``). The
        claim lasts until that transaction ends: commit dequeues, rollback puts them back."""
        params: dict[str, Any] = {"limit": int(limit), "vid": self.id}
        if only is not None:
            params["only"] = keys_jsonb([dict(zip(self.keys, k)) for k in only])
        cur = conn.execute(q.claim(self.queue, self.failed, self.keys, only is not None), params)
        nk = len(self.keys)
        return [ClaimedRow(tuple(rec[:nk]), rec[nk], rec[nk + 1]) for rec in cur.fetchall()]

    def read(self, reader: psycopg.Connection, rows: list[ClaimedRow], columns: Sequence[str] | None = None,
             where: Any = None) -> None:
        """Fill in the claimed rows' source values (``deleted`` for a row that is gone), with a
        statement of its own on ``reader`` (an autocommit connection): the source is locked
        for the length of this read, not for the claim's (which waits for the model).

        The reader runs with ``row_security = off``, so a source whose row-level security
        would hide rows from this role raises an error instead of making them look deleted.
        A value Python cannot hold is read as its text (see ``db``); should reading still
        fail, each row is read alone and a row that cannot be read gets ``error`` set."""
        if columns is not None:  # the keys, as the callback API always gave them
            columns = list(self.keys) + [c for c in columns if c not in self.keys]
        query = q.read_rows(self.queue, self.source, self.keys, columns, where)
        try:
            cur = reader.execute(query, {"keys": keys_jsonb([dict(zip(self.keys, r.key)) for r in rows])})
            recs = cur.fetchall()
        except psycopg.Error as exc:
            if blame(exc) != "row":
                raise
            # a row's doing (a value Python cannot hold; a where= whose function raises for
            # this row): each row read alone, so one cannot stop the others
            if len(rows) == 1:
                rows[0].error = RowError(
                    f"the source row {rows[0].key!r} cannot be read ({str(exc).strip()}): a value "
                    "Python cannot hold, or where= failing on it; change the row, or the filter")
                return
            for r in rows:
                self.read(reader, [r], columns, where)
            return
        names = column_names(cur)[2:]
        first_of: dict[int, tuple] = {}
        for rec in recs:  # an inheritance child may repeat a parent's key: the first row wins
            first_of.setdefault(rec[0], rec)
        for i, r in enumerate(rows, 1):
            rec = first_of[i]
            r.deleted = bool(rec[1])
            r.values = dict(zip(names, rec[2:]))

    def process(
        self,
        conn: psycopg.Connection,
        handler: Callable[[list[ClaimedRow]], None],
        *,
        reader: psycopg.Connection,
        limit: int = 10,
        columns: Sequence[str] | None = None,
        where: Any = None,
        isolate_failures: bool = True,
        in_flight: psycopg.Connection | None = None,
    ) -> ProcessResult:
        """Claim a batch, read its rows, run ``handler`` on it, record failures; the claim,
        the handler's writes and the failures are one transaction on ``conn``; the rows
        are read on ``reader`` (see ``read``).

        The handler runs inside a savepoint. If it raises an error that is the row's doing
        (``errors.blame``), the batch is split in halves and retried until the failing keys
        are isolated; those get attempts + 1 and a backoff (or move to the failed table),
        and the rest commit as done. An error that is the server's doing (a timeout, a
        shutdown, a missing table, the embedding service down, a stop request) puts the
        whole claim back, charges no row, and is raised.

        ``in_flight``: a second connection, in autocommit mode. Before the handler runs,
        the batch's keys are recorded in ``pgvz.in_flight`` through it (committed at once);
        the batch's transaction deletes them. A worker process that dies mid-batch
        (killed, out of memory, a crash in native code) rolls its claim back but leaves
        that record: a claim that finds one of its keys there puts the batch back and
        takes that key alone, so it cannot take innocent rows down with it, and after
        ``max_attempts`` such deaths moves it to the failed table instead of handing it
        to yet another worker to die on.
        """
        track = in_flight is not None and self._has_in_flight(conn)
        with conn.transaction():  # rows to queue: an install stopped half-way, a partition attached
            pending = first(conn.execute(q.catalog_backfill_pending(), [self.id]))[0]
        if pending:  # (a local: sync's lanes share this Queue)
            try:
                self.complete_backfill(conn, pending=True)
            except psycopg.errors.InsufficientPrivilege:
                log.warning("the rows of %s are not all queued yet (an install stopped half-way) and "
                            "this role may not queue them: run create()/register() again as the "
                            "vectorizer's owner", ".".join(self.source))
        self.expand(conn)
        run = _Run(handler, limit, columns, where, isolate_failures, reader,
                   _InFlight(self, in_flight) if track and in_flight is not None else None)
        result = self._claim_again_if_rolled_back(conn, run, None)
        if not result.take_alone:
            return result
        # each key whose last worker died, alone: one claim per such key found would put the
        # whole batch back each time (500 keys of a killed batch: 7.4 s to drain 2,000 rows)
        total = ProcessResult()
        for key in result.take_alone:
            total += self._claim_again_if_rolled_back(conn, run, [key])
        return total

    ROLLED_BACK_TRIES = 4

    def _claim_again_if_rolled_back(self, conn: psycopg.Connection, run: _Run,
                                    only: list[tuple] | None) -> ProcessResult:
        """_claim, run again (up to ROLLED_BACK_TRIES times in all, after 0.05, 0.1, 0.2 s)
        when the server rolls its transaction back: a deadlock with another session or a
        serialization failure is nobody's fault and passes; the whole claim went back, so
        no row got an attempt and nothing was lost."""
        for i in range(self.ROLLED_BACK_TRIES):
            try:
                return self._claim(conn, run, only)
            except Exception as exc:
                if not rolled_back(exc) or i == self.ROLLED_BACK_TRIES - 1:
                    raise
                log.warning("the server rolled a batch of %s back (%s); claiming again",
                            self.name, str(exc).strip().splitlines()[0])
                time.sleep(0.05 * 2**i)
        raise AssertionError("unreachable")

    def _has_in_flight(self, conn: psycopg.Connection) -> bool:
        """Catalogs made before pgvz.in_flight existed get it at the next create()."""
        if self._in_flight_table is None:
            with conn.transaction():
                found = first(conn.execute(q.catalog_exists(), [".".join(q.IN_FLIGHT)]))[0]
            self._in_flight_table = bool(found)
        return self._in_flight_table

    def _claim(self, conn: psycopg.Connection, run: _Run, only: list[tuple] | None) -> ProcessResult:
        """One claim, in one transaction: claim, read, handle, record what failed."""
        result = ProcessResult()
        with conn.transaction() as tx:
            rows = self.claim(conn, run.limit, only)
            result.claimed = len(rows)
            if not rows:
                result.state = self.state(conn)
                return result
            flight = run.in_flight
            set_aside: list[Failure] = []  # rows not given to the handler (not its errors)
            to_run = rows
            if flight is not None:
                deaths = flight.check(conn, rows)
                if deaths and only is None and len(rows) > 1:
                    result = ProcessResult(take_alone=[rows[i - 1].key for i in sorted(deaths)])
                    raise psycopg.Rollback(tx)  # the claim goes back; process() takes them alone
                to_run, set_aside = self._set_aside_the_deadly(rows, deaths)
                if to_run:
                    flight.mark(rows, to_run)
            failures: list[Failure] = []
            try:
                if to_run:
                    self.read(run.reader, to_run, run.columns, run.where)
                    set_aside += [([r], r.error) for r in to_run if r.error is not None]
                    failures = self._handle(conn, run, [r for r in to_run if r.error is None])
            except BaseException:
                if flight is not None:
                    flight.put_back()
                raise
            if failures or set_aside:
                result.moved_to_failed = self.record_failures(conn, failures + set_aside)
                result.failed_keys = [r.key for batch, _ in failures + set_aside for r in batch]
                result.errors = [exc for _, exc in failures]
            if flight is not None:
                flight.finish(conn)
            result.succeeded = result.claimed - len(result.failed_keys)
        return result

    def _set_aside_the_deadly(self, rows: list[ClaimedRow], deaths: dict[int, int]
                              ) -> tuple[list[ClaimedRow], list[Failure]]:
        """(rows to process, rows set aside): a row whose workers died ``max_attempts`` times
        goes to the failed table instead of to yet another worker to die on."""
        top = int(self.policy["max_attempts"])
        keep = [r for i, r in enumerate(rows, 1) if deaths.get(i, 0) < top]
        aside: list[Failure] = [([r], RowError(
            f"a worker process died while processing this row, {deaths[i]} times in a row "
            "(killed, out of memory, or a crash in native code such as the model); it was set "
            "aside so the rest of the queue keeps moving: look at the row, then retry_failed()"))
            for i, r in enumerate(rows, 1) if deaths.get(i, 0) >= top]
        return keep, aside

    def _handle(self, conn: psycopg.Connection, run: _Run, rows: list[ClaimedRow]) -> list[Failure]:
        """The handler on ``rows`` in a savepoint; the failures it left (see ``process``).
        An error that is the server's doing is raised: the whole claim goes back."""
        if not rows:
            return []
        try:
            with conn.transaction():
                run.handler(rows)
            return []
        except Exception as exc:  # the handler is user code: any error may be the rows'
            if blame(exc) == "server":
                # a timeout, a shutdown, the model's service down, a deadlock: no row is to blame
                raise
            if run.isolate_failures and len(rows) > 1:
                mid = len(rows) // 2
                return self._handle(conn, run, rows[:mid]) + self._handle(conn, run, rows[mid:])
            return [(rows, exc)]

    def record_failures(
        self, conn: psycopg.Connection, failures: list[tuple[list[ClaimedRow], BaseException]]
    ) -> int:
        """Re-queue failed rows with backoff or move them to the failed table; returns moved.

        An error marked ``pgvz_permanent`` (retrying cannot help: the row itself is the
        problem) moves its rows to the failed table at once."""
        records = []
        top = int(self.policy["max_attempts"])
        for batch, exc in failures:
            text = _error_text(exc)
            permanent = getattr(exc, "pgvz_permanent", False)
            for r in batch:
                rec = dict(zip(self.keys, r.key))
                attempts = max(r.attempts + 1, top) if permanent else r.attempts + 1
                rec.update(attempts=attempts, queued_at=r.queued_at, last_error=text)
                records.append(rec)
        conn.execute(
            q.record_failures(self.queue, self.failed, self.keys),
            {"rows": keys_jsonb(records), **self.policy},
        )
        return sum(1 for r in records if r["attempts"] >= self.policy["max_attempts"])

    # --- views ---------------------------------------------------------------------------

    def state(self, conn: psycopg.Connection) -> QueueState:
        rows, claimable, retrying, oldest, next_retry, failed = first(conn.execute(
            q.queue_state(self.inbox, self.queue, self.failed, self.keys[0])))
        return QueueState(rows, claimable, retrying, failed, oldest, next_retry)

    def pending(self, conn: psycopg.Connection, limit: int = 1000) -> tuple[list[str], list[tuple]]:
        """(column names, rows) of pending keys, oldest first, inbox included."""
        cur = conn.execute(q.pending_rows(self.inbox, self.queue, self.keys), [int(limit)])
        return column_names(cur), cur.fetchall()

    def retry_failed(self, conn: psycopg.Connection) -> int:
        """Re-queue every key in the failed table with fresh attempts; returns how many."""
        with conn.transaction():
            return conn.execute(q.retry_failed(self.queue, self.failed, self.keys)).rowcount


# --- source introspection ---------------------------------------------------------------


def check_trusted(conn: psycopg.Connection, rel: Rel, what: str, *, superuser_ok: bool = False,
                  owner: bool = True, trusted: Sequence[str] = ()) -> bool:
    """Refuse (UntrustedObject) an existing table pgvz_nb is about to write into unless it is
    owned by the current role (or, with ``superuser_ok``, a superuser; with ``owner=False``,
    by one of ``trusted`` or a superuser: a worker syncs tables its vectorizer's creator
    owns) and nobody else has put code on it: no user trigger, no rule, no partitions or
    children, no function, type or operator owned by another role in its columns, defaults,
    constraints or indexes (``sql.foreign_code``). Otherwise that code would run with the
    privileges of whoever writes into it: a superuser on the embedded server. False if the
    table does not exist."""
    me = first(conn.execute(q.role_of_table(), list(rel)))[0]
    trusted_roles = [me, *trusted]
    found = conn.execute(q.relation_trust(), {"schema": rel[0], "table": rel[1],
                                               "trusted": trusted_roles}).fetchone()
    if found is None:
        return False
    owner_name, mine, owner_super, kind, triggers, rules, children, code = found
    name = ".".join(rel)
    allowed = (mine or (superuser_ok and owner_super)) if owner else (owner_super or owner_name in trusted_roles)
    if not allowed:
        raise UntrustedObject(
            f"{what} {name} is owned by role {owner_name}, not by you: pgvz_nb writes only into "
            "tables its own user owns, since the owner's triggers would run with your "
            f"privileges and the owner would read what is written; drop it, or choose another "
            f"name, or ALTER TABLE {name} OWNER TO you after checking it"
        )
    if kind != "r" or triggers or rules or children or code:
        found_code = ", ".join(filter(None, [", ".join(triggers), f"{rules} rule(s)" if rules else "", code or ""]))
        raise UntrustedObject(
            f"{what} {name} is not a plain table pgvz_nb can write into safely ("
            + ("it carries " + found_code if found_code else "it is partitioned or has inheritance children")
            + "): that code would run with the privileges of whoever syncs; drop it, or choose "
            "another name, or remove it"
        )
    return True


def check_name(name: Any, what: str) -> str:
    """A name PostgreSQL can hold as given: a non-empty string of at most 63 bytes, no NUL.
    (PostgreSQL would silently cut a longer one, and then find, or make, another object.)"""
    from .errors import InvalidName

    if not isinstance(name, str) or not name:
        raise InvalidName(f"expected a non-empty string as the {what}, got {name!r}")
    if "\x00" in name:
        raise InvalidName(f"the {what} {name!r} contains a NUL character, which PostgreSQL names cannot hold")
    size = len(name.encode())
    if size > 63:
        raise InvalidName(
            f"the {what} {name[:40]!r}... is {size} bytes long; PostgreSQL names hold at most 63 "
            "bytes (longer ones are cut, so a different object would be used); choose a shorter name"
        )
    return name


def describe_table(conn: psycopg.Connection, source: Rel) -> dict[str, tuple[str, bool]]:
    """{column: (type, not null)} of a table; NotFound / NotATable with what to do."""
    schema, table = check_name(source[0], "schema name"), check_name(source[1], "table name")
    found = conn.execute(q.find_relation(), [schema, table]).fetchone()
    if found is None:
        if not first(conn.execute(q.schema_exists(), [schema]))[0]:
            raise NotFound(
                f"schema {schema!r} does not exist; expected an existing schema "
                f"holding table {table!r}; check the spelling (names are case-sensitive)"
            )
        raise NotFound(
            f"table {schema}.{table} does not exist; expected an existing table "
            "(names are case-sensitive and taken as given, without quotes); create it first"
        )
    kind = found[0]
    if kind not in ("r", "p"):
        what = {"v": "a view", "m": "a materialized view", "S": "a sequence", "f": "a foreign table",
                "i": "an index", "c": "a composite type"}.get(kind, f"a relation of kind {kind!r}")
        raise NotATable(
            f"{schema}.{table} is {what}; expected a table, since changes are tracked with "
            "triggers on it; attach the vectorizer to the underlying table instead"
        )
    rows = conn.execute(q.table_columns(), [schema, table]).fetchall()
    return {name: (typ, notnull) for name, typ, notnull in rows}


def resolve_keys(
    conn: psycopg.Connection, source: Rel, columns: dict[str, tuple[str, bool]],
    requested: Sequence[str] | None,
) -> list[str]:
    """The key columns: the primary key, or ``requested`` if it is a unique NOT NULL key."""
    uniques = conn.execute(q.unique_keys(), list(source)).fetchall()
    pk = next((list(cols) for primary, cols in uniques if primary), None)
    where = ".".join(source)
    if requested is None:
        if pk is None:
            raise NoPrimaryKey(
                f"{where} has no primary key; expected one to identify rows by; add one "
                "(ALTER TABLE ... ADD PRIMARY KEY (...)) or name a unique NOT NULL column"
            )
        return pk
    requested = list(requested)
    missing = [c for c in requested if c not in columns]
    if missing:
        hint = f"its primary key is {pk}" if pk else "it has no primary key"
        raise NotFound(
            f"key column(s) {missing} not found in {where}; {hint}; "
            f"pass id_column_name= one of its columns {list(columns)}"
        )
    if any(set(cols) == set(requested) for _, cols in uniques):
        nullable = [c for c in requested if not columns[c][1]]
        if not nullable:
            return requested
    hint = f"its primary key is {pk}" if pk else "it has no primary key"
    raise NoPrimaryKey(
        f"{requested} is not a unique NOT NULL key of {where}; expected a key that names one "
        f"row; {hint}: key on that, or add a unique index and NOT NULL on {requested}"
    )
