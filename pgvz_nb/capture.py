"""WAL capture: changes reach the queues through logical decoding, not triggers.

One slot and one publication per database, whatever the number of ``capture="wal"``
vectorizers (every slot decodes all of the database's WAL and pins it). The capture loop
peeks the slot's changes (pgoutput, streaming on), takes the keys of each committed
transaction, routes them by relation to every vectorizer on that table, and writes them
into the vectorizers' inboxes (one row of key arrays per vectorizer and batch, as a
statement's trigger does) in one transaction with its progress row
(``pgvz.wal_progress``). Only after that commit does it advance the slot. At a restart
the progress row wins: transactions that end at or before it are skipped, so a crash
between the commit and the advance queues nothing twice, and one before the commit
queues nothing at all and leaves the slot where it was.

Exactly one process captures at a time (a transaction-level advisory lock; any number of
workers drain). Nothing here runs in the application's transactions.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import scalar_row
from psycopg.types.json import Jsonb

from . import sql as q
from .db import first
from .errors import CaptureUnavailable, ConfigConflict

log = logging.getLogger("pgvz_nb.capture")

Rel = q.Rel

#: Decoded messages fetched from the server-side cursor at a time.
FETCH_ROWS = 20_000
#: Keys in one inbox row: well under PostgreSQL's 1 GB array limit for any sane key.
KEYS_PER_INBOX_ROW = 200_000
#: WAL from the slot's restart point that a round makes the server shorten for the next one
#: (see _move_restart_point): a 16 MB segment, a few tens of thousands of rows.
RESTART_LAG_BYTES = 16 << 20
#: How long creating the slot may wait for the transactions running now to end.
SLOT_CREATE_TIMEOUT = "30s"


def slot_name(dbname: str) -> str:
    """The database's slot: slots are cluster-wide, so it names the database (hashed: a
    slot name takes only [a-z0-9_])."""
    return "pgvz_nb_" + hashlib.sha1(dbname.encode()).hexdigest()[:16]


# --- pgoutput ----------------------------------------------------------------------------


@dataclass
class Relation:
    oid: int
    schema: str
    table: str
    columns: list[str]


@dataclass
class Txn:
    """The keys one transaction changed, by relation oid, one list per key column (as the
    inbox holds them), each value the bytes of its text form; ``truncated``: relations emptied."""

    keys: dict[int, list[list[bytes]]] = field(default_factory=dict)
    truncated: set[int] = field(default_factory=set)
    unroutable: set[int] = field(default_factory=set)  # a key column came as 'unchanged TOAST'
    keyless: set[int] = field(default_factory=set)  # a DELETE whose old key lacks the key columns

    def columns(self, rel: int, width: int) -> list[list[bytes]]:
        cols = self.keys.get(rel)
        if cols is None:
            cols = self.keys[rel] = [[] for _ in range(width)]
        return cols

    def absorb(self, other: Txn) -> None:
        for rel, cols in other.keys.items():
            for mine, theirs in zip(self.columns(rel, len(cols)), cols):
                mine.extend(theirs)
        self.truncated |= other.truncated
        self.unroutable |= other.unroutable
        self.keyless |= other.keyless


class Decoder:
    """pgoutput protocol 2 (streaming) messages, reduced to the keys each committed
    transaction changed. ``key_columns(relation)`` gives the positions of the key columns
    to read for a relation, or None to skip it (no vectorizer on it)."""

    def __init__(self, key_columns: Any):
        self.key_columns = key_columns
        self.relations: dict[int, Relation] = {}
        self._positions: dict[int, list[int] | None] = {}
        self.current: Txn | None = None
        self.streams: dict[int, dict[int, Txn]] = {}  # top xid -> subxid -> keys
        self.stream_xid: int | None = None
        self.committed: list[tuple[int, Txn]] = []  # (end lsn, keys), in commit order

    def feed_all(self, messages: Iterable[bytes]) -> None:
        """``feed`` each message. Most are row changes of a table keyed on its first
        column, its value in the message's first bytes: those are read here, with one
        ``unpack_from`` each and the target list of the last such message reused (a bulk
        change is one relation in one (sub)transaction); the rest go to ``feed``."""
        positions = self._positions
        feed = self.feed
        unpack_plain, unpack_streamed = _PLAIN_HEAD.unpack_from, _STREAMED_HEAD.unpack_from
        streamed = self.stream_xid is not None
        last_sub = last_rel = -1  # the (sub)transaction and relation of ``col``; -1: none
        col: list[bytes] | None = None  # where their keys go; None: not ours
        for data in messages:
            kind = data[0]
            if kind == 73 or kind == 85 or kind == 68:  # I, U, D
                try:
                    if streamed:
                        sub, rel, tag, fmt, length = unpack_streamed(data, 1)
                        start = 17
                    else:
                        rel, tag, fmt, length = unpack_plain(data, 1)
                        sub, start = 0, 13
                except struct.error:  # a row shorter than the head read: no first-column key in it
                    feed(data)
                    continue
                if sub != last_sub or rel != last_rel:
                    last_sub, last_rel, col = sub, rel, None
                    if positions.get(rel) == _FIRST:
                        target = self._stream_target(sub) if streamed else self.current
                        if target is not None:
                            col = target.columns(rel, 1)[0]
                if col is not None and fmt == 116 and (tag == 78) != (kind == 68):
                    # an insert's or an update's sole tuple (new: 'N'), or a delete's (old: 'K'
                    # or 'O'), its first column in text: 't', the length, the value
                    col.append(data[start:start + length])
                    continue
            else:  # begin, commit, a stream's start or end, a relation: anew
                last_sub = last_rel = -1
                col = None
            feed(data)
            streamed = self.stream_xid is not None

    def _stream_target(self, sub: int) -> Txn:
        assert self.stream_xid is not None
        subs = self.streams[self.stream_xid]
        target = subs.get(sub)
        if target is None:
            target = subs[sub] = Txn()
        return target

    def feed(self, data: bytes) -> None:
        kind = data[0]
        if kind in _ROW_CHANGES:
            if self.stream_xid is None:
                self._row(data, 1, self.current)
            else:  # in a stream: the (sub)transaction's xid first
                self._row(data, 5, self._stream_target(_UINT32.unpack_from(data, 1)[0]))
            return
        pos = 1
        if kind == 66:  # B: begin
            self.current = Txn()
            return
        if kind == 67:  # C: commit
            _flags, _commit, end, _ts = struct.unpack_from("!bqqq", data, pos)
            if self.current is not None:
                self.committed.append((end, self.current))
            self.current = None
            return
        if kind == 83:  # S: stream start
            (self.stream_xid,) = struct.unpack_from("!I", data, pos)
            self.streams.setdefault(self.stream_xid, {})
            return
        if kind == 69:  # E: stream stop
            self.stream_xid = None
            return
        if kind == 99:  # c: stream commit
            xid, _flags, _commit, end, _ts = struct.unpack_from("!Ibqqq", data, pos)
            txn = Txn()
            for part in self.streams.pop(xid, {}).values():
                txn.absorb(part)
            self.committed.append((end, txn))
            return
        if kind == 65:  # A: stream abort, of the transaction or of a subtransaction
            xid, subxid = struct.unpack_from("!II", data, pos)
            if xid == subxid:
                self.streams.pop(xid, None)
            else:
                self.streams.get(xid, {}).pop(subxid, None)
            return
        if kind not in (82, 84):
            return  # origin, type, logical message, ...: no keys in them
        target = self.current
        if self.stream_xid is not None:  # in a stream, each message names its (sub)transaction
            (sub,) = struct.unpack_from("!I", data, pos)
            pos += 4
            target = self._stream_target(sub)
        if kind == 82:  # R: relation
            self._relation(data, pos)
            return
        if target is None:
            return
        # T: truncate
        nrels, _options = struct.unpack_from("!Ib", data, pos)
        pos += 5
        for _ in range(nrels):
            (rel,) = struct.unpack_from("!I", data, pos)
            pos += 4
            target.truncated.add(rel)

    def _row(self, data: bytes, pos: int, target: Txn | None) -> None:
        """An insert (one tuple), a delete (the old key or row) or an update (the old key or
        row, when the key changed or the identity is FULL, then the new row)."""
        (rel,) = _UINT32.unpack_from(data, pos)
        positions = self._positions.get(rel)
        if positions is None or target is None:
            return
        pos += 4
        cols = target.columns(rel, len(positions))
        end = len(data)
        while pos < end:
            tag = data[pos]
            pos += 1  # 'N' new tuple, 'K' old key, 'O' old row
            last = data[0] != 85 or tag == 78  # the message's last tuple: read no further than the key
            key, pos = _key_of(data, pos, positions, last)
            if None in key:
                if tag == 78:  # 'N' with an unchanged TOASTed key column: not in the record
                    target.unroutable.add(rel)
                elif data[0] == 68:  # a DELETE's old key without ours (another replica identity)
                    target.keyless.add(rel)
            else:
                for column, value in zip(cols, key):
                    column.append(value)  # type: ignore[arg-type]  # no None: checked above
            if last:
                return

    def _relation(self, data: bytes, pos: int) -> None:
        (oid,) = struct.unpack_from("!I", data, pos)
        pos += 4
        schema, pos = _cstring(data, pos)
        table, pos = _cstring(data, pos)
        pos += 1  # replica identity setting
        (ncols,) = struct.unpack_from("!h", data, pos)
        pos += 2
        columns = []
        for _ in range(ncols):
            pos += 1  # flags
            name, pos = _cstring(data, pos)
            pos += 8  # type oid, typmod
            columns.append(name)
        relation = Relation(oid, schema, table, columns)
        self.relations[oid] = relation
        self._positions[oid] = self.key_columns(relation)


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode(), end + 1


def _key_of(data: bytes, pos: int, positions: list[int], last: bool) -> tuple[tuple[bytes | None, ...], int]:
    """The values at ``positions`` of the TupleData at ``pos`` (None: null, or an unchanged
    TOASTed value), and where it ends; only those columns are read, and with ``last``
    (no tuple follows) no column after them is even walked: the position returned is then
    where reading stopped."""
    (ncols,) = _INT16.unpack_from(data, pos)
    pos += 2
    wanted: dict[int, bytes | None] = dict.fromkeys(positions)
    stop = max(positions) + 1 if last else ncols
    for i in range(min(stop, ncols)):
        kind = data[pos]
        pos += 1
        if kind == 116 or kind == 98:  # 't' text, 'b' binary
            (length,) = _INT32.unpack_from(data, pos)
            pos += 4
            if i in wanted:
                wanted[i] = data[pos:pos + length]
            pos += length
        # 'n' null, 'u' unchanged TOAST: no value follows
    return tuple(wanted[i] for i in positions), pos


_ROW_CHANGES = frozenset(b"IUD")
_FIRST = [0]
_UINT32 = struct.Struct("!I")
_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
# a row change's head, after its kind: [subtransaction xid,] relation, the first tuple's tag,
# (its column count skipped), the first column's kind and length
_PLAIN_HEAD = struct.Struct("!IB2xBi")
_STREAMED_HEAD = struct.Struct("!IIB2xBi")


def array_literal(values: list[bytes]) -> str:
    """A PostgreSQL array literal of text forms (UTF-8), each element quoted."""
    if not values:
        return "{}"
    raw = b"".join(values)
    if b"\\" in raw or b'"' in raw:
        values = [v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') for v in values]
    return '{"' + b'","'.join(values).decode() + '"}'


# --- the slot and the publication --------------------------------------------------------


def check_ready(conn: psycopg.Connection) -> None:
    """Raise CaptureUnavailable, naming the fix, unless this server and role can capture."""
    level, replication, create = first(conn.execute(q.wal_readiness()))
    if level != "logical":
        raise CaptureUnavailable(
            f"capture='wal' needs wal_level = logical, and this server runs with wal_level = {level}; "
            "set it (ALTER SYSTEM SET wal_level = logical, then restart the server; on a managed "
            "service: RDS's rds.logical_replication = 1, Cloud SQL's cloudsql.logical_decoding flag), "
            "or keep capture='triggers'")
    if not replication:
        raise CaptureUnavailable(
            "capture='wal' reads the WAL through a replication slot, which needs the REPLICATION "
            "attribute (ALTER ROLE ... REPLICATION; on RDS: GRANT rds_replication TO ...); this role "
            "has neither it nor SUPERUSER. Keep capture='triggers', or create the vectorizer as a "
            "role that has it")
    if not create and not first(conn.execute(q.publication_exists(), [q.PUBLICATION]))[0]:
        raise CaptureUnavailable(
            f"capture='wal' needs the publication {q.PUBLICATION}, and this role may not create one "
            "(CREATE on the database); create the first WAL vectorizer as the database owner")


def check_identity(conn: psycopg.Connection, source: Rel, keys: list[str]) -> None:
    """A table in a publication that publishes UPDATE and DELETE must have a replica
    identity, or PostgreSQL fails the application's UPDATEs and DELETEs; and the identity is
    what a DELETE's record holds of the old row, so it must be the vectorizer's key."""
    if first(conn.execute(q.inheritance_children(), list(source)))[0]:
        raise ConfigConflict(
            f"{'.'.join(source)} has inheritance children: a publication takes them in, and PostgreSQL "
            "would refuse the application's UPDATEs and DELETEs on any without a replica identity, "
            "while children made later would not be published at all; keep capture='triggers' for "
            "it (they cover every child), or make it a partitioned table")
    row = conn.execute(q.replica_identity(), {"schema": source[0], "table": source[1]}).fetchone()
    ident, columns = (row or ("d", None))
    if ident == "f":
        return
    if ident == "n" or columns is None or sorted(columns) != sorted(keys):
        what = {"n": "REPLICA IDENTITY NOTHING", "d": "no primary key (a DEFERRABLE one does not count)",
                "i": "a replica identity index"}[ident]
        raise ConfigConflict(
            f"capture='wal' learns a deleted row's key from its replica identity, and "
            f"{'.'.join(source)} has {what}{f' on {columns}' if columns else ''}, not the key {keys}; "
            "adding it to a publication would make the application's UPDATEs and DELETEs fail. "
            "Key the vectorizer on the primary key, or keep capture='triggers'")


def ensure(conn: psycopg.Connection, source: Rel, keys: list[str]) -> str:
    """The publication, with ``source`` in it, in the caller's transaction (the slot was
    made before, by ``prepare``). Whole rows, though the capture reads only the key: with a
    column list PostgreSQL refuses every UPDATE once the replica identity leaves it (an
    application's ALTER TABLE ... REPLICA IDENTITY FULL would break its own writes)."""
    slot = slot_name(conn.info.dbname)
    via_root = conn.execute(q.publication_via_root(), [q.PUBLICATION]).fetchone()
    if via_root is None:
        conn.execute(q.create_publication())
    elif via_root[0]:
        conn.execute(q.publication_leaves())
    if not first(conn.execute(q.publication_has_table(), {"pub": q.PUBLICATION, "schema": source[0],
                                                          "table": source[1]}))[0]:
        conn.execute(q.lock_out_writers(source))
        conn.execute(q.publication_add_table(source))
    return slot


def prepare(db: Any, source: Rel) -> str:
    """Before a WAL vectorizer's install: the catalog (for the progress table), a server
    and role that can capture, and the slot, made before the table joins the publication
    and before the backfill's snapshot, so that no change falls between the two."""
    from .queue import Queue, locked

    with db.connect() as conn:
        check_ready(conn)
        conn.rollback()
        locked(conn, lambda: Queue.ensure_catalog(conn), target=source,
               doing=f"preparing the WAL capture of {'.'.join(source)}")
    return ensure_slot(db)


def ensure_slot(db: Any) -> str:
    """Create the database's slot if missing (its own autocommit connection); returns it."""
    with db.connect(autocommit=True) as conn:
        slot = slot_name(conn.info.dbname)
        conn.execute(q.create_wal_progress())
        if conn.execute(q.slot_info(), [slot]).fetchone() is None:
            conn.execute(q.set_session(), ["statement_timeout", SLOT_CREATE_TIMEOUT])
            try:
                lsn = first(conn.execute(q.create_slot(), [slot]))[0]
            except psycopg.errors.DuplicateObject:
                return slot  # another process made it meanwhile
            except psycopg.errors.QueryCanceled as exc:
                raise CaptureUnavailable(
                    f"creating the replication slot waited {SLOT_CREATE_TIMEOUT} for the transactions "
                    "running now to end (a new slot must see every transaction start): end the long "
                    "transaction (pg_stat_activity shows it), then create() again") from exc
            # a new slot starts here: an older progress row (of a slot lost or dropped) is moot
            conn.execute(q.wal_progress_delete(), [slot])
            conn.execute(q.wal_progress_set(), {"slot": slot, "lsn": lsn})
        return slot


def forget(conn: psycopg.Connection, source: Rel, *, still_used: bool) -> None:
    """A WAL vectorizer went or switched to triggers (in the caller's transaction): its table
    leaves the publication unless another WAL vectorizer uses it. The publication itself
    stays, empty (decoding looks it up by name: dropping it would stop the slot), and the
    slot goes once the capture has read up to here with no WAL vectorizer left."""
    if not still_used and first(conn.execute(q.publication_has_table(), {
            "pub": q.PUBLICATION, "schema": source[0], "table": source[1]}))[0]:
        conn.execute(q.publication_drop_table(source))


def drop_slot(db: Any) -> None:
    with db.connect(autocommit=True) as conn:
        slot = slot_name(conn.info.dbname)
        try:
            conn.execute(q.drop_slot(), [slot])
        except psycopg.errors.ObjectInUse:
            log.warning("slot %s is in use (a capture running); it goes at the next drop()", slot)
            return
        if first(conn.execute(q.catalog_exists(), [".".join(q.WAL_PROGRESS)]))[0]:
            conn.execute(q.wal_progress_delete(), [slot])


# --- the capture loop --------------------------------------------------------------------


@dataclass
class CaptureResult:
    """What one capture call did."""

    transactions: int = 0
    keys: int = 0
    truncates: int = 0
    busy: bool = False  # another process holds the capture
    lost: bool = False  # the slot was lost (or missing): made again, vectorizers reconciled
    lsn: str | None = None  # progress after the call


@dataclass
class Target:
    """A vectorizer the capture feeds: its source, key columns, inbox, and for TRUNCATE the
    statement that queues its destination's keys (None for a callback vectorizer)."""

    name: str
    source: Rel
    keys: list[str]
    inbox: Rel
    queue_all: Any  # queues every key of the source: a change whose key the record lacks
    on_truncate: Any = None


def targets(conn: psycopg.Connection) -> dict[int, list[Target]]:
    """Every vectorizer in the catalog, by its source's oid: keys are routed to all
    vectorizers on a relation, WAL or not. While one switches from WAL to triggers the keys
    the slot still holds for it must reach it; a trigger vectorizer on the same table gets
    them twice, harmlessly. A WAL vectorizer's source renamed or moved since (no trigger
    follows it) is found by the oid create() recorded, and the catalog follows it here, in
    the capture's transaction: a rename never meets pgvz_nb code in the application's."""
    from .queue import Queue

    out: dict[int, list[Target]] = defaultdict(list)
    for v in Queue.list_all(conn):
        recorded = v.config.get("source_oid")
        now = conn.execute(q.relation_by_oid(), [recorded]).fetchone() if recorded else None
        if now is None:
            now = conn.execute(q.relation_by_name(), list(v.source)).fetchone()
        if now is None:
            continue  # dropped: nothing of it comes any more
        oid, schema, table = now
        target = _target(v, (schema, table))
        if v.capture == "wal" and (schema, table) != v.source:
            try:
                with conn.transaction():  # a worker role may not write the catalog: the round goes on
                    conn.execute(q.catalog_set_source(), [schema, table, v.id])
                    conn.execute(q.catalog_backfill_follows(), {"id": v.id, "old": Jsonb(list(v.source)),
                                                                 "new": Jsonb([schema, table])})
                log.warning("vectorizer %s: its table %s is now %s.%s; the catalog follows it",
                            v.name, ".".join(v.source), schema, table)
            except psycopg.errors.InsufficientPrivilege:
                log.warning("vectorizer %s: its table %s is now %s.%s, and this role may not move the "
                            "catalog's name (the owner's next sync or capture does); its keys are queued "
                            "meanwhile", v.name, ".".join(v.source), schema, table)
        elif v.capture == "wal" and recorded and oid != recorded:
            continue  # a new table under the name: not ours until take_on_recreated() says so
        out[oid].append(target)
    return out


def _target(v: Any, source: Rel) -> Target:
    """Vectorizer ``v`` (a Queue) as the capture feeds it, its table being ``source`` now."""
    pipe = v.config.get("pipeline") or {}
    on_truncate = (q.truncated_keys(v.queue, tuple(pipe["destination"]), source, v.keys, pipe["dest_keys"])
                   if pipe.get("destination") else None)
    return Target(v.name, source, v.keys, v.inbox, q.backfill(v.queue, source, v.keys), on_truncate)


def take_on_recreated(conn: psycopg.Connection) -> None:
    """Before a capture round, each in a short transaction of its own (``_take_on``): WAL
    vectorizers whose table was dropped and created again under its name."""
    with conn.transaction():
        found = []
        for v in wal_vectorizers(conn):
            recorded = v.config.get("source_oid")
            if not recorded or conn.execute(q.relation_by_oid(), [recorded]).fetchone() is not None:
                continue
            now = conn.execute(q.relation_by_name(), list(v.source)).fetchone()
            if now is not None:
                found.append((v, now[0], _target(v, v.source)))
    for v, oid, t in found:
        _take_on(conn, v, t, oid)


def _take_on(conn: psycopg.Connection, v: Any, t: Target, oid: int) -> None:
    """The WAL vectorizer's table was dropped and one of that name created since (no trigger
    saw it): the new one joins the publication and its rows are to be queued, the keys of
    the old one's that are gone queued now, as the triggers' event trigger does for them. In a
    savepoint: a capture role that may not (it does not own the table) leaves it, with a
    warning, and the other vectorizers go on."""
    from .queue import LOCK_TIMEOUT

    try:
        with conn.transaction():
            conn.execute(q.set_local(), ["lock_timeout", LOCK_TIMEOUT])  # never queue the writers for long
            check_identity(conn, t.source, t.keys)
            ensure(conn, t.source, t.keys)
            _follow_key_types(conn, v, fresh=True, oid=oid)
            if t.on_truncate is not None:
                conn.execute(t.on_truncate)
            # its rows are queued by the next claim (Queue.complete_backfill), in a transaction
            # after this one commits: a snapshot taken here would miss writes committed
            # before the table's place in the publication is
            v.set_extra(conn, source_oid=oid, backfill=[list(t.source)])
            conn.execute(q.wal_follow_set_partitions(), [v.id, Jsonb(partition_state(conn, oid))])
        log.warning("vectorizer %s: %s was dropped and created again; it follows the new table",
                    v.name, ".".join(t.source))
    except (psycopg.Error, ConfigConflict) as exc:
        log.warning("vectorizer %s: %s was dropped and created again, and the capture could not "
                    "take the new one on (%s); create() it again as the table's owner", v.name,
                    ".".join(t.source), exc)


def partition_state(conn: psycopg.Connection, oid: int) -> dict[str, str]:
    """The partitions of table ``oid`` as the catalog rows say now: {oid: xmin of its
    pg_inherits row} (``sql.partition_tree``); stored in a WAL vectorizer's config."""
    return {str(rel): x for rel, x in conn.execute(q.partition_tree(), [oid]).fetchall()}


#: how long following a key's new type may wait for a lock on the vectorizer's queue, inbox
#: and failed tables: only pgvz_nb's own workers use them (no trigger writes them under WAL
#: capture), and a worker's claim holds its queue for as long as the model takes
OWN_TABLE_LOCK_WAIT = "30s"


def follow_tables(conn: psycopg.Connection) -> None:
    """Before a capture round, what the triggers' event trigger does for a trigger vectorizer
    in the application's transaction, done after the fact for each WAL vectorizer whose
    table exists: a key column's new type given to its own tables (``_follow_key_types``),
    and partitions attached, detached or dropped since the last round followed
    (``_follow_partitions``). Each step in a short transaction of its own, under the
    capture lock (taken again each time: another process capturing meanwhile does it): a
    destination's lock is held no longer than its own ALTER, and one step failing (a lock
    not had in time, a view on the destination) leaves the others to go on. What cannot be
    followed is logged and kept (``pgvz.wal_follow``, shown by status() as ``capture_error``)
    until it can be; it is tried again every round."""
    with conn.transaction():
        found = wal_vectorizers(conn)
        kept = {v.id: conn.execute(q.wal_follow_get(), [v.id]).fetchone() or (None, None) for v in found} \
            if found and conn.execute(q.find_relation(), list(q.WAL_FOLLOW)).fetchone() else None
    if kept is None:
        return  # made before pgvz_nb kept it: create() again makes it (and a worker may not)
    for v in found:
        v.config["partitions"], recorded_error = kept[v.id]
        problems: list[str] = []
        for step in (_follow_key_types, _follow_partitions):
            try:
                if step(conn, v, isolated=True) is None:
                    return  # another process captures now
            except psycopg.Error as exc:
                problems.append(str(exc).strip().splitlines()[0])
        text = "; ".join(problems) if problems else None
        if text != recorded_error:
            if text:
                log.warning("vectorizer %s: the capture could not follow what DDL did to its table yet "
                            "(%s); tried again every round", v.name, text)
            with conn.transaction():
                conn.execute(q.wal_follow_set_error(), [v.id, text])


def follow_now(conn: psycopg.Connection, v: Any) -> None:
    """``follow_tables`` for one vectorizer in the caller's transaction (switching it to
    triggers: what the WAL side had still to follow is done first). Raises what fails."""
    row = conn.execute(q.wal_follow_get(), [v.id]).fetchone()
    v.config["partitions"] = row[0] if row else None
    _follow_key_types(conn, v)
    _follow_partitions(conn, v)


def _source_oid(conn: psycopg.Connection, v: Any) -> tuple[int, Rel] | None:
    now = conn.execute(q.relation_by_oid(), [v.config.get("source_oid")]).fetchone()
    return (now[0], (now[1], now[2])) if now is not None else None


def _key_places(v: Any) -> tuple[list[str], list[tuple[Rel, str, bool]]]:
    """(source key column, (table, its column, holds arrays)) of every column of the
    vectorizer's own tables that holds a key: queue, inbox, failed, then the destination."""
    pipe = v.config.get("pipeline") or {}
    places = [(v.queue, k, False) for k in v.keys] + [(v.inbox, k, True) for k in v.keys] \
        + [(v.failed, k, False) for k in v.keys]
    keys = list(v.keys) * 3
    if pipe.get("destination"):
        places += [(tuple(pipe["destination"]), d, False) for d in pipe["dest_keys"]]
        keys += list(v.keys)
    return keys, places


def _follow_key_types(conn: psycopg.Connection, v: Any, *, fresh: bool = False, isolated: bool = False,
                      oid: int | None = None) -> bool | None:
    """A key column of the source took another type (int -> bigint, say): its queue, inbox,
    failed and destination tables take it too, or keys the old type cannot hold would fail
    to queue (the destination last: its rewrite is the one readers wait for, as they do when
    the event trigger does it under triggers). Built-in types only (a domain's checks would
    run as the capture's role on another role's code); any other stays, with a warning, and
    its keys fail visibly. ``fresh``: the table is one created again under a dropped one's
    name, so every key these tables hold is of a row gone; one that cannot take the new type
    ('k45' as an integer) is emptied first, as the triggers' event trigger does.
    ``isolated``: each ALTER in a transaction of its own under the capture lock (returns
    None if another process holds it), else all in the caller's. ``oid``: the source's, when
    the catalog does not hold it yet (a table being taken on)."""
    dest = tuple((v.config.get("pipeline") or {}).get("destination") or ())

    def drift() -> list[tuple]:
        src = oid if oid is not None else (_source_oid(conn, v) or (None,))[0]
        if src is None:
            return []
        keys, places = _key_places(v)
        rows = conn.execute(q.key_type_drift(), {
            "src": src, "keys": keys, "schemas": [p[0][0] for p in places],
            "tables": [p[0][1] for p in places], "cols": [p[1] for p in places],
            "arrays": [p[2] for p in places]}).fetchall()
        return sorted(rows, key=lambda r: (r[0], r[1]) == dest)  # the destination last

    if isolated:
        with conn.transaction():
            rows = drift()
    else:
        rows = drift()
    from .queue import LOCK_TIMEOUT

    for schema, table, column, want, builtin in rows:
        if not builtin:
            log.warning("vectorizer %s: its key became %s, not a built-in type; its tables follow built-in "
                        "key types only: drop it (keep_destination=True keeps the embeddings) and create it "
                        "again", v.name, want)
            return True
        log.warning("vectorizer %s: its key column is %s now; %s.%s.%s follows", v.name, want, schema, table, column)
        wait = LOCK_TIMEOUT if (schema, table) == dest else OWN_TABLE_LOCK_WAIT
        if isolated:
            with conn.transaction():
                if not first(conn.execute(q.try_capture_lock()))[0]:
                    return None
                conn.execute(q.set_local(), ["lock_timeout", wait])
                _alter_key_type(conn, (schema, table), column, want, fresh)
        else:
            _alter_key_type(conn, (schema, table), column, want, fresh)
    return True


def _alter_key_type(conn: psycopg.Connection, rel: Rel, column: str, want: str, fresh: bool) -> None:
    if not fresh:
        conn.execute(q.alter_key_type(rel, column, want))
        return
    try:
        with conn.transaction():
            conn.execute(q.alter_key_type(rel, column, want))
    except psycopg.errors.DataError:  # keys of the dropped table's rows the new type cannot hold
        conn.execute(q.delete_all(rel))
        conn.execute(q.alter_key_type(rel, column, want))


def _follow_partitions(conn: psycopg.Connection, v: Any, *, isolated: bool = False) -> bool | None:
    """Partitions attached, detached or dropped since the state recorded (``partition_state``,
    kept in ``pgvz.wal_follow``), which moves in the same transaction as the keys queued for them.
    ``isolated``: in a transaction of its own under the capture lock and the lock timeout
    (None if another process holds the lock), else in the caller's."""
    from .queue import LOCK_TIMEOUT

    def body() -> bool:
        found = _source_oid(conn, v)
        if found is None:
            return True  # dropped (take_on_recreated's), or made before pgvz_nb recorded the oid
        oid, source = found
        state, recorded = partition_state(conn, oid), v.config.get("partitions")
        if state == recorded:
            return True
        if recorded is not None:  # else: a vectorizer made before pgvz_nb kept one, from now on
            _partitions_moved(conn, v, oid, source, recorded, state)
        conn.execute(q.wal_follow_set_partitions(), [v.id, Jsonb(state)])
        v.config["partitions"] = state
        return True

    if not isolated:
        return body()
    with conn.transaction():
        if not first(conn.execute(q.try_capture_lock()))[0]:
            return None
        conn.execute(q.set_local(), ["lock_timeout", LOCK_TIMEOUT])
        return body()


def _partitions_moved(conn: psycopg.Connection, v: Any, oid: int, source: Rel, recorded: dict[str, str],
                      state: dict[str, str]) -> None:
    """Partitions that came (new, or attached again: another pg_inherits row) have their
    rows queued; if any went, or came back (rows may have gone while it was out, with
    nothing published), the destination keys that are not in the source are queued too."""
    t = _target(v, source)
    came = [int(rel) for rel, x in state.items() if recorded.get(rel) != x]
    went = [int(rel) for rel, x in recorded.items() if state.get(rel) != x]
    for rel in came:
        _queue_partition(conn, v, oid, source, rel)
    if not went:
        return
    log.warning("vectorizer %s: %d partition(s) of %s left it or came back (detached, dropped, attached "
                "again); the rows that left are queued as deleted", v.name, len(went), ".".join(source))
    if t.on_truncate is not None:
        conn.execute(t.on_truncate)
        return
    for rel in went:
        found = conn.execute(q.relation_by_oid(), [rel]).fetchone()
        if found is None:
            log.warning("vectorizer %s: a partition of %s was dropped, and a callback vectorizer has no "
                        "destination to find its keys in: its consumer keeps those rows", v.name,
                        ".".join(source))
        elif rel not in came:  # detached: its keys are no longer the source's, and come as deleted
            conn.execute(q.backfill(v.queue, (found[1], found[2]), v.keys))


def _queue_partition(conn: psycopg.Connection, v: Any, oid: int, source: Rel, rel: int) -> None:
    """Queue the rows of partition ``rel`` of the source (oid ``oid``): read from it directly
    where this role may, else through the source (a worker's grants are on the source),
    picked by tableoid, which scans every partition."""
    found = conn.execute(q.relation_by_oid(), [rel]).fetchone()
    if found is None:
        return
    if first(conn.execute(q.may_select(), [rel]))[0]:
        conn.execute(q.backfill(v.queue, (found[1], found[2]), v.keys))
    else:
        leaves = [rel] + [int(r) for r in partition_state(conn, rel)]
        conn.execute(q.backfill_rows_of(v.queue, source, v.keys), [leaves])


def wal_vectorizers(conn: psycopg.Connection) -> list[Any]:
    from .queue import Queue

    return [v for v in Queue.list_all(conn) if v.config.get("capture") == "wal"]


def capture(db: Any, conn: psycopg.Connection) -> CaptureResult:
    """Queue the keys of every transaction committed since the last call and before this one
    began, on ``conn`` (no transaction open on it). Returns at once (``busy``) while another
    process captures.
    Does nothing where there is neither a slot nor a WAL vectorizer; with a slot and no WAL
    vectorizer left (the last one dropped or switched to triggers), reads it to the end,
    then drops it."""
    total = CaptureResult()
    slot = slot_name(conn.info.dbname)
    with conn.transaction():
        wal = wal_vectorizers(conn)
        info = conn.execute(q.slot_info(), [slot]).fetchone()
    if info is None or info[0] == "lost":
        if not wal:
            if info is not None:
                drop_slot(db)
            return total
        return _recreate(db, conn, slot, wal, lost=info is not None)
    take_on_recreated(conn)
    follow_tables(conn)
    with conn.transaction():  # what is committed now, flushed: no further
        _move_restart_point(conn, slot)
        upto = first(conn.execute(q.flush_wal() if conn.info.server_version >= 170000
                                  else q.wal_server_state()))[0]
    total = _capture_round(conn, slot, upto)
    if not wal and not total.busy:
        drop_slot(db)  # read to the end: nothing in it is anyone's any more
    return total


def _move_restart_point(conn: psycopg.Connection, slot: str) -> None:
    """Where this round reads more than RESTART_LAG_BYTES of WAL from the slot's restart
    point, log a running-transactions record before the round's end, so that its advance
    moves the restart point up to it. Else each peek decodes again, without returning it,
    all the WAL since the last such record: measured, every 200k-row bulk INSERT captured in
    a row added ~0.3 s of server CPU to each later peek, until the server logged one itself
    (every 15 s). The restart point is PostgreSQL's to choose; this only gives it a newer candidate.
    Skipped where the role may not (GRANT EXECUTE ON FUNCTION pg_log_standby_snapshot() lets
    it) and before PostgreSQL 16."""
    if conn.info.server_version < 160000:
        return
    row = conn.execute(q.restart_lag(), [slot]).fetchone()
    if row is not None and row[1] and (row[0] or 0) > RESTART_LAG_BYTES:
        conn.execute(q.log_standby_snapshot())


def _recreate(db: Any, conn: psycopg.Connection, slot: str, wal: list[Any], lost: bool) -> CaptureResult:
    """The slot went (past max_slot_wal_keep_size while no worker read it, or dropped by
    hand): the changes since its last progress are not in the WAL any more. A new slot, then
    every WAL vectorizer reconciled in a snapshot taken after the new slot exists, which sees
    every change the new slot will not: all its source keys queued (rows whose text did not
    change cost no model call) and the destination's keys that left the source."""
    with conn.transaction():
        if not first(conn.execute(q.try_capture_lock()))[0]:
            return CaptureResult(busy=True)
    log.warning("replication slot %s is %s: making a new one and queueing every row of %d "
                "vectorizer(s)", slot, "lost" if lost else "missing", len(wal))
    if lost:
        drop_slot(db)
    ensure_slot(db)
    names = {v.name for v in wal}
    with conn.transaction():
        for t in (t for ts in targets(conn).values() for t in ts):
            if t.name in names:
                conn.execute(t.queue_all)
                if t.on_truncate is not None:
                    conn.execute(t.on_truncate)
    return CaptureResult(lost=True)


def _capture_round(conn: psycopg.Connection, slot: str, upto: str) -> CaptureResult:
    result = CaptureResult()
    with conn.transaction():
        if not first(conn.execute(q.try_capture_lock()))[0]:
            return CaptureResult(busy=True)
        row = conn.execute(q.wal_progress_get(), [slot]).fetchone()
        progress = _lsn(row[0]) if row else 0
        routes = targets(conn)
        routed: dict[int, list[Target]] = {}
        pick: dict[int, dict[int, list[int]]] = {}  # relation -> target -> its key's places in the tuple read

        def route(rel: int, relation: Relation | None) -> list[Target]:
            """The vectorizers a relation's changes go to: its own, and (a partition, or an
            inheritance child) those of its tree's top."""
            if rel not in routed:
                hit = list(routes.get(rel, []))
                top = first(conn.execute(q.relation_root(), [rel]))[0]
                if top != rel:
                    hit += routes.get(top, [])
                routed[rel] = hit
            return routed[rel]

        def key_columns(rel: Relation) -> list[int] | None:
            """The columns to read of ``rel``'s rows: every key of every vectorizer on it (two
            vectorizers on one table may be keyed differently, a callback one on a unique
            column, say); each vectorizer then takes its own from them."""
            found = []
            for t in route(rel.oid, rel):
                if all(k in rel.columns for k in t.keys):
                    found.append(t)
                else:
                    log.warning("table %s.%s no longer has the key columns %s of vectorizer %s: its "
                                "changes are not queued; drop and create the vectorizer again",
                                rel.schema, rel.table, t.keys, t.name)
            routed[rel.oid] = found
            if not found:
                return None
            names = list(dict.fromkeys(k for t in found for k in t.keys))
            pick[rel.oid] = {id(t): [names.index(k) for k in t.keys] for t in found}
            return [rel.columns.index(k) for k in names]

        decoder = Decoder(key_columns)
        try:
            with conn.cursor(name="pgvz_peek", binary=True, row_factory=scalar_row) as cur:  # bytea as it is, no hex
                cur.execute(q.peek_changes(), {"slot": slot, "upto": upto})
                while rows := cur.fetchmany(FETCH_ROWS):
                    decoder.feed_all(rows)
        except psycopg.errors.ObjectInUse:
            return CaptureResult(busy=True)  # a peek of another session (a manual one, say)
        per_target: dict[int, tuple[Target, list[list[bytes]]]] = {}
        truncated: list[Target] = []
        unknown: list[Target] = []  # an UPDATE whose key the record lacks: every key queued
        last = progress
        for end, txn in decoder.committed:
            if end <= progress:
                continue  # queued before a crash between the commit and the slot's advance
            last = max(last, end)
            result.transactions += 1
            for rel, cols in txn.keys.items():
                if not cols[0]:
                    continue
                for t in route(rel, decoder.relations.get(rel)):
                    mine = per_target.setdefault(id(t), (t, [[] for _ in t.keys]))[1]
                    for column, place in zip(mine, pick[rel][id(t)]):
                        column.extend(cols[place])
                result.keys += len(cols[0])
            for rel in txn.truncated:
                truncated.extend(t for t in route(rel, decoder.relations.get(rel)) if t not in truncated)
                result.truncates += 1
            for rel in txn.unroutable:
                unknown.extend(t for t in route(rel, decoder.relations.get(rel)) if t not in unknown)
            for rel in txn.keyless:  # deleted rows with no key: found as the destination's extra keys
                truncated.extend(t for t in route(rel, decoder.relations.get(rel)) if t not in truncated)
        for t, keys in per_target.values():
            _isolated(conn, t, lambda t=t, keys=keys: _write_keys(conn, t, keys))
        for t in truncated:
            if t.on_truncate is None:
                log.warning("vectorizer %s: a TRUNCATE of %s came through the WAL, and a callback "
                            "vectorizer has no destination to find the removed keys in",
                            t.name, ".".join(t.source))
                continue
            _isolated(conn, t, lambda t=t: conn.execute(t.on_truncate))
        for t in unknown:
            log.warning("vectorizer %s: an UPDATE of %s came with its key as an unchanged TOASTed "
                        "value: every row of the table is queued (unchanged rows cost no model call)",
                        t.name, ".".join(t.source))
            _isolated(conn, t, lambda t=t: conn.execute(t.queue_all))
        # the whole range up to ``upto`` is read: the progress goes there even when nothing
        # in it was ours (writes to other tables only), or the slot would hold all that WAL
        # back and every capture read it again; a transaction running across ``upto``
        # commits after it and so comes whole later
        last = max(last, _lsn(upto))
        if last > progress:
            conn.execute(q.wal_progress_set(), {"slot": slot, "lsn": _lsn_text(last)})
    if last > progress:
        result.lsn = _lsn_text(last)
        try:
            with conn.transaction():
                conn.execute(q.advance_slot(), [slot, result.lsn])
        except (psycopg.errors.ObjectInUse, psycopg.errors.ObjectNotInPrerequisiteState):
            # someone peeking, or another capture advanced it further meanwhile: the progress
            # row already holds, and the next round advances it
            pass
    return result


def _isolated(conn: psycopg.Connection, t: Target, write: Any) -> None:
    """One vectorizer's share of a round, in a savepoint: should it fail (a key the queue's
    column type cannot hold, its key retyped with no trigger to follow it; a role that may
    not write its inbox), the other vectorizers' keys and the progress still commit, and this
    one's rows are all queued again by its next claim instead (its catalog's backfill list,
    see Queue.complete_backfill): its sync then fails visibly until its tables are fixed,
    and nothing is lost meanwhile."""
    try:
        with conn.transaction():
            write()
    except psycopg.Error as exc:
        log.warning("vectorizer %s: the capture could not queue its keys (%s: %s); every row of %s "
                    "is queued again at its next sync", t.name, type(exc).__name__, str(exc).strip(),
                    ".".join(t.source))
        conn.execute(q.catalog_add_backfill(), [Jsonb([list(t.source)]), t.name])


def _write_keys(conn: psycopg.Connection, t: Target, cols: list[list[bytes]]) -> None:
    with conn.cursor().copy(q.copy_inbox(t.inbox, t.keys)) as copy:
        for start in range(0, len(cols[0]), KEYS_PER_INBOX_ROW):
            copy.write_row([array_literal(col[start:start + KEYS_PER_INBOX_ROW]) for col in cols])


#: decoded messages a wake-up check looks at, at most (see ``commit_waiting``)
WAKE_PEEK_ROWS = 1000


def commit_waiting(conn: psycopg.Connection) -> bool | None:
    """Whether the slot holds a committed change to a published table that no capture took
    yet: what wakes a waiting worker under WAL capture, as a trigger's NOTIFY does under
    triggers. pgvz_nb's own writes (queues, destinations, progress) are not published, so
    they wake nobody. Under the capture lock, so that it never makes a capture's peek fail
    (the slot is busy while it is peeked); None while another process captures, and before
    PostgreSQL 15 (its pgoutput sends empty transactions: every write would wake)."""
    if conn.info.server_version < 150000:
        return None
    with conn.transaction():
        if not first(conn.execute(q.try_capture_lock()))[0]:
            return None
        try:
            with conn.transaction():
                found = conn.execute(q.peek_commit(), {"slot": slot_name(conn.info.dbname),
                                                       "rows": WAKE_PEEK_ROWS}).fetchone()
        except psycopg.errors.ObjectInUse:
            return None
    return found is not None


def _lsn(text: str) -> int:
    hi, lo = str(text).split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def _lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def slot_status(conn: psycopg.Connection) -> tuple[str | None, int | None, int | None]:
    """(wal_status, bytes of WAL the slot holds back, bytes not captured yet) of this
    database's slot, or Nones. The first is what counts against max_slot_wal_keep_size: it
    runs from the restart point, which PostgreSQL moves at a running-transactions record
    (``_move_restart_point``), so it can stay some MB above the second."""
    row = conn.execute(q.slot_info(), [slot_name(conn.info.dbname)]).fetchone()
    return (row[0], row[1], row[2]) if row else (None, None, None)
