"""The long-running worker behind ``pgvz worker``: drain vectorizers, survive restarts.

Any number of workers, in any number of processes and machines, can drain the same
queues: PostgreSQL's row and advisory locks keep them from processing one key twice.
Between rounds a worker sleeps until a trigger's NOTIFY (sent once per writing statement,
at commit) or ``poll`` seconds, whichever comes first; the poll picks up rows whose
backoff ran out. Under WAL capture nothing NOTIFYs: a waiting worker looks at the slot
every WAL_CHECK_EVERY seconds instead (only when the WAL moved since its last look, and
less often when a look is costly: ``_wal_check``). A lost connection (the server restarted, the network blinked) is retried
with an exponential backoff, a batch the server rolled back (a deadlock) at once;
SIGTERM / SIGINT finish the current batch and exit.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from . import capture
from . import sql as q
from .db import Database, first
from .errors import PgvzError, blame, connection_lost, rolled_back, translate
from .queue import Queue
from .vectorizer import SyncReport, Vectorizer

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("pgvz_nb.worker")

#: how often a waiting worker with a WAL vectorizer looks for a change committed to it
WAL_CHECK_EVERY = 0.1
#: the share of a waiting worker's time those looks may take: a look that took 20 ms (the
#: slot decodes the WAL written since its restart point) puts the next 200 ms off
WAL_CHECK_SHARE = 0.1


@dataclass
class WorkerStats:
    rounds: int = 0
    processed: int = 0
    failed: int = 0
    reconnects: int = 0
    conflicts: int = 0  # batches the server rolled back (deadlock, serialization failure)
    interruptions: int = 0  # syncs the server or the model's service stopped (no row charged)
    errors: int = 0  # syncs of one vectorizer that failed (the others went on)
    reports: list[SyncReport] = field(default_factory=list)


class Worker:
    """Drains the named vectorizers (all pipeline vectorizers if none are named)."""

    def __init__(self, db: Database, names: Sequence[str] = (), *, poll: float = 1.0,
                 max_backoff: float = 30.0, lanes: int = 1, give_up_after: float | None = None):
        self.db = db
        self.names = list(names)
        self.poll = poll
        self.max_backoff = max_backoff
        self.lanes = lanes
        self.give_up_after = give_up_after  # seconds without a connection before giving up
        self.stop_event = threading.Event()
        self.stats = WorkerStats()
        self._open: dict[str, Vectorizer] = {}
        self._listener: psycopg.Connection | None = None
        self.wakeups = 0  # rounds started by a NOTIFY rather than the poll
        self.wal_wakeups = 0  # rounds started by a change found in the slot (WAL capture)
        self._wal_conn: psycopg.Connection | None = None  # the looks at the slot
        self._wal_mark: str | None = None  # the WAL's insert position at the last look

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT ask for a clean stop after the current batch."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def _vectorizers(self) -> list[Vectorizer]:
        try:
            with self.db.connect() as conn:
                rows = [v for v in Queue.list_all(conn) if v.config.get("kind") == "pipeline"]
        except psycopg.Error as exc:
            raise translate(exc, "listing the vectorizers") from exc
        names = list(self.names) or [v.name for v in rows]
        # a migration in progress: its other side is drained with the one named
        for v in rows:
            info = v.config.get("migration")
            if info and (info["live_name"] in names or info["other_name"] in names):
                names += [n for n in (info["live_name"], info["other_name"]) if n not in names]
        out = []
        for name in names:
            if name not in self._open:
                try:
                    self._open[name] = Vectorizer.open(self.db, name)
                except PgvzError as exc:
                    if connection_lost(exc):
                        raise
                    self.stats.errors += 1
                    log.error("vectorizer %s cannot be opened: %s: %s; the others go on",
                              name, type(exc).__name__, exc)
                    continue
            out.append(self._open[name])
        return out

    def _drop_connections(self) -> None:
        for v in self._open.values():
            v.close()
        self._open.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._wal_conn is not None:
            self._wal_conn.close()
            self._wal_conn = None

    def _listen(self) -> psycopg.Connection:
        """LISTEN before each round, not after it: a NOTIFY sent while the round runs (a
        change committed after its last claim) is then kept for ``_wait``, where one sent
        before a LISTEN made after the round would be lost, and the worker would sleep a
        whole ``poll`` with a change waiting."""
        if self._listener is None:
            self._listener = self.db.connect(autocommit=True)
            self._listener.execute(q.listen())
        return self._listener

    def _wait(self) -> None:
        """Sleep until a NOTIFY for one of our vectorizers, a change in the slot for a WAL
        one, ``poll`` seconds, or a stop."""
        listener = self._listen()
        ids = {str(v._queue.id) for v in self._open.values() if v._queue is not None}
        wal = any(v._queue is not None and v._queue.capture == "wal" for v in self._open.values())
        now = time.monotonic()
        deadline, next_look = now + self.poll, now
        while not self.stop_event.is_set():
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return
            if wal and now >= next_look:
                pause = self._wal_check()
                if pause is None:
                    self.wal_wakeups += 1
                    return
                next_look = now + pause
            # short slices, so that a stop request (and the slot) is seen quickly
            slice_ = min(left, 0.5, max(next_look - now, 0.01) if wal else 0.5)
            for note in listener.notifies(timeout=slice_):
                if not ids or note.payload in ids:
                    self.wakeups += 1
                    return

    def _wal_check(self) -> float | None:
        """Look at the slot (on a connection of its own) when the WAL moved since the last
        look: None if a committed change waits there, else the seconds until the next look.
        A look that fails (no REPLICATION for this role, the slot gone) leaves it to the poll."""
        try:
            if self._wal_conn is None:
                self._wal_conn = self.db.connect(autocommit=True)
            lsn = first(self._wal_conn.execute(q.wal_insert_lsn()))[0]
            if lsn == self._wal_mark:
                return WAL_CHECK_EVERY
            t0 = time.monotonic()
            found = capture.commit_waiting(self._wal_conn)
            took = time.monotonic() - t0
        except psycopg.Error as exc:
            conn, self._wal_conn = self._wal_conn, None
            if conn is None or conn.broken:
                raise  # the server went away: the worker reconnects, as for its other connections
            conn.close()
            log.debug("looking at the slot failed (%s); the poll wakes this worker", exc)
            return self.poll
        if found:
            return None
        if found is not None:  # nothing committed for us up to ``lsn``; None: look again
            self._wal_mark = lsn
        return max(WAL_CHECK_EVERY, took / WAL_CHECK_SHARE)

    def run_once(self) -> int:
        """Drain every vectorizer until its queue has nothing claimable; returns keys processed.

        A vectorizer whose sync fails for a reason other than the connection or a conflict
        (its source table dropped, its model missing) is logged and opened afresh next
        round (which also picks up a renamed source); the others go on."""
        done = 0
        for v in self._vectorizers():
            if self.stop_event.is_set():
                break
            try:
                report = v.sync(progress=False, lanes=self.lanes, stop=self.stop_event)
            except PgvzError as exc:
                if connection_lost(exc) or rolled_back(exc):
                    raise
                if blame(exc) == "server":
                    # a lock or statement timeout, the model's service down, row security:
                    # the batch went back uncharged; this vectorizer is tried again next round
                    self.stats.interruptions += 1
                    log.warning("vectorizer %s: %s: %s; its batch went back to the queue, next "
                                "round in %.1f s", v.name, type(exc).__name__, exc, self.poll)
                    continue
                self.stats.errors += 1
                log.error("vectorizer %s: %s: %s; the other vectorizers go on, this one is opened "
                          "again next round", v.name, type(exc).__name__, exc)
                self._open.pop(v.name, None)
                v.close()
                continue
            self.stats.reports.append(report)
            self.stats.processed += report.processed
            self.stats.failed += report.failed
            done += report.processed
        self.stats.rounds += 1
        return done

    def run(self, *, once: bool = False) -> WorkerStats:
        """Work until stopped (or, with ``once``, until the queues are drained)."""
        backoff = 0.5
        lost_since: float | None = None
        while not self.stop_event.is_set():
            try:
                if not once:
                    with contextlib.suppress(psycopg.Error):  # a lost connection: the round says so
                        self._listen()
                self.run_once()
                backoff, lost_since = 0.5, None
                if once:
                    break
            except PgvzError as exc:
                if rolled_back(exc):
                    # an OperationalError to psycopg, but the connection is fine and nothing
                    # was lost (process() already claimed again; this is after its last try)
                    self.stats.conflicts += 1
                    log.warning("the server rolled a batch back (%s); running it again", exc)
                    if self.stop_event.wait(0.1):
                        break
                    continue
                if not connection_lost(exc):
                    raise
                lost_since = lost_since or time.monotonic()
                if self.give_up_after is not None and time.monotonic() - lost_since > self.give_up_after:
                    raise
                self.stats.reconnects += 1
                self._drop_connections()
                log.warning("connection lost (%s); retrying in %.1f s", exc, backoff)
                if self.stop_event.wait(backoff):
                    break
                backoff = min(backoff * 2, self.max_backoff)
                continue
            try:
                self._wait()
            except psycopg.Error as exc:
                self.stats.reconnects += 1
                log.warning("connection lost while waiting (%s); reconnecting at the next round",
                            str(exc).strip() or type(exc).__name__)
                self._drop_connections()  # reconnect on the next round
        self._drop_connections()
        return self.stats
