"""The long-running worker behind ``pgvz worker``: drain vectorizers, survive restarts.

Any number of workers, in any number of processes and machines, can drain the same
queues: PostgreSQL's row and advisory locks keep them from processing one key twice.
Between rounds a worker sleeps until a trigger's NOTIFY (sent once per writing statement,
at commit) or ``poll`` seconds, whichever comes first; the poll picks up rows whose
backoff ran out. A lost connection (the server restarted, the network blinked) is retried
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

from . import sql as q
from .db import Database
from .errors import PgvzError, blame, connection_lost, rolled_back, translate
from .queue import Queue
from .vectorizer import SyncReport, Vectorizer

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("pgvz_nb.worker")


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
        """Sleep until a NOTIFY for one of our vectorizers, ``poll`` seconds, or a stop."""
        listener = self._listen()
        ids = {str(v._queue.id) for v in self._open.values() if v._queue is not None}
        deadline = time.monotonic() + self.poll
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # short slices, so that a stop request is seen quickly
            for note in listener.notifies(timeout=min(left, 0.5)):
                if not ids or note.payload in ids:
                    self.wakeups += 1
                    return

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
            except psycopg.Error:
                self._drop_connections()  # reconnect on the next round
        self._drop_connections()
        return self.stats
