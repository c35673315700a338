"""The one exception family of pgvz_nb, and the translation of database errors into it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

__all__ = [
    "CallbackFailed",
    "CaptureUnavailable",
    "ConfigConflict",
    "ConnectionFailed",
    "DatabaseError",
    "DimensionMismatch",
    "EmbeddingUnavailable",
    "ExtensionMissing",
    "InvalidName",
    "LockUnavailable",
    "NoPrimaryKey",
    "NotATable",
    "NotFound",
    "PgvzError",
    "Reconfigured",
    "RowError",
    "RowSecurityActive",
    "Stopped",
    "UntrustedObject",
    "blame",
    "boundary",
    "connection_lost",
    "rolled_back",
    "translate",
]


class PgvzError(Exception):
    """Base class of every error pgvz_nb raises."""

    def _render_traceback_(self) -> list[str]:
        # IPython calls this: a notebook shows the message, not forty frames of psycopg.
        return [f"{type(self).__name__}: {self}"]


class ConnectionFailed(PgvzError):
    """The database could not be reached with the given DSN."""


class ExtensionMissing(PgvzError):
    """The server lacks the pgvector extension."""


class NotFound(PgvzError):
    """A table, schema, column or vectorizer does not exist."""


class NotATable(PgvzError):
    """The name is a view, sequence or other relation that cannot carry triggers."""


class NoPrimaryKey(PgvzError):
    """The table has no primary key (or unique NOT NULL key) to identify rows by."""


class InvalidName(PgvzError):
    """A name cannot be used as a PostgreSQL identifier."""


class ConfigConflict(PgvzError):
    """An existing object was set up differently from what is being asked now."""


class DimensionMismatch(PgvzError):
    """Vectors of one size were given for a destination that holds another."""


class RowError(PgvzError):
    """One source row cannot be embedded as configured (retrying will not help)."""

    pgvz_permanent = True


class EmbeddingUnavailable(PgvzError):
    """The embedding service is down or refusing work; the batch went back to the queue, its
    rows charged nothing. ``retry_after``: seconds the service asked to wait, or a backoff;
    ``counted``: the rest of a pause an earlier refusal asked for (already in sync's budget)."""

    pgvz_not_the_rows = True

    def __init__(self, message: str, retry_after: float = 1.0, *, counted: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.counted = counted


class CallbackFailed(PgvzError):
    """The embed-and-write callback raised for some rows; they stay queued for a retry."""


class DatabaseError(PgvzError):
    """A database error, translated; the original is the ``__cause__``."""


class LockUnavailable(PgvzError):
    """A lock pgvz_nb needs is held by another transaction; it gave up rather than make the
    application's statements queue behind its request."""


class Stopped(PgvzError):
    """A stop was asked for (SIGTERM) in the middle of a batch; the claim went back whole."""

    pgvz_not_the_rows = True


class Reconfigured(PgvzError):
    """The vectorizer this handle was opened as changed under it (a migration's cutover or
    rollback moved its destination, or gave its name to the other model): the batch went
    back whole, and the handle opens the vectorizer again before going on."""

    pgvz_not_the_rows = True


class RowSecurityActive(PgvzError):
    """Row-level security hides source rows from the syncing role: syncing would take them
    for deleted rows and drop their embeddings, so it refuses."""

    pgvz_not_the_rows = True


class CaptureUnavailable(PgvzError):
    """``capture="wal"`` cannot work here: wal_level is not logical, the role lacks
    REPLICATION, or the slot could not be made; the message names the fix."""

    pgvz_not_the_rows = True


class UntrustedObject(ConfigConflict):
    """A table or schema pgvz_nb would write into is owned or instrumented (triggers, rules)
    by another role, whose code would then run with the syncing role's privileges."""

    pgvz_not_the_rows = True


#: SQLSTATE classes that are the server's doing, never a row's: the
#: connection (08), a rollback for a conflict (40), a query that cannot run at all as
#: configured (42: undefined table or column, permission denied), resources (53), a lock or
#: object in use (55), an operator or timeout (57: statement_timeout, admin shutdown), the
#: system (58, XX), a transaction state (25: read-only, idle-in-transaction timeout), an
#: unknown catalog or schema (3D, 3F). Anything else raised while a row is being handled
#: (a data exception, 22; a constraint, 23; a value too large, 54; user code) is the row's.
SERVER_CLASSES = frozenset({"08", "25", "3D", "3F", "40", "42", "53", "55", "57", "58", "XX"})


def _chain(exc: BaseException | None):
    """``exc`` and what it was raised from; for a database error also what it was raised
    while handling (a ROLLBACK that failed after the error that caused it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (exc.__context__ if isinstance(exc, psycopg.Error) else None)


def blame(exc: BaseException) -> str:
    """Whose doing ``exc`` is: ``"server"`` (the database, the network, the embedding
    service, a stop request: the batch goes back whole and no row is charged) or ``"row"``
    (the row's content or user code handling it: that row is isolated and charged).

    The one place this is decided: the queue, the pipeline and the worker all ask here."""
    for e in _chain(exc):
        if getattr(e, "pgvz_not_the_rows", False):
            return "server"
        if getattr(e, "pgvz_permanent", False):
            return "row"
        state = getattr(e, "sqlstate", None)
        if state == "0A000" and "cached plan must not change result type" in str(e):
            return "server"  # a prepared statement's table was renamed over (a cutover): not the rows'
        if state:
            return "server" if state[:2] in SERVER_CLASSES else "row"
        if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
            return "server"  # the connection went away, with no SQLSTATE to say more
    return "row"


def rolled_back(exc: BaseException) -> bool:
    """A deadlock or serialization failure (or a PgvzError made from one): the server rolled
    the transaction back and the connection is fine; running it again is the cure."""
    return any(getattr(e, "sqlstate", None) in ("40001", "40P01") for e in _chain(exc))


#: SQLSTATEs after which the session is gone: the server shut down or crashed (57P01-57P03),
#: or the connection failed (class 08).
_SESSION_ENDED = ("57P01", "57P02", "57P03")


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) means the connection is gone: connect
    again, with a backoff. A lock or statement timeout, a conflict, a permission error leave
    the connection usable: not lost."""
    for e in _chain(exc):
        if isinstance(e, (ConnectionFailed, psycopg.InterfaceError)):
            return True
        if isinstance(e, psycopg.OperationalError):
            state = e.sqlstate
            if state is None or state.startswith("08") or state in _SESSION_ENDED:
                return True
    return False


_F = TypeVar("_F", bound=Callable[..., Any])


def boundary(doing: str) -> Callable[[_F], _F]:
    """Decorator for a public method: a database error escaping it becomes the PgvzError
    ``translate`` makes of it. ``doing`` says what the method was doing, formatted with the
    instance as ``self`` (``"syncing {self.name!r}"``); PgvzErrors pass unchanged."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except psycopg.Error as exc:
                raise translate(exc, doing.format(self=self)) from exc

        return method  # type: ignore[return-value]

    return wrap


# --- the embedding service's errors: its doing (EmbeddingUnavailable) or the texts' -------------

#: Answers that say the service is overloaded or unreachable, whatever was asked: the batch
#: goes back whole and is tried again after a pause (Retry-After when given). 502, 503 and
#: 504 are the service's (or its gateway's) by definition; a 500 may be the texts'.
_SERVICE_STATUS = {408, 409, 425, 429, 502, 503, 504}
_SERVICE_NAMES = {"APIConnectionError", "APITimeoutError", "RateLimitError",
                  "ConnectError", "ReadTimeout", "ConnectTimeout", "RemoteProtocolError"}


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(exc, "status_code", None) or getattr(response, "status_code", None)


def service_wait(exc: BaseException, attempt: int, base: float = 1.0, cap: float = 30.0) -> float | None:
    """Seconds to wait before asking again after ``exc``, or None if it is not the kind of
    error that waiting cures: HTTP 408/409/425/429/5xx, timeouts and dropped connections
    (openai and httpx exceptions, by name, so neither needs importing). A ``Retry-After``
    (or ``retry-after-ms``) header wins over the exponential backoff."""
    status = _http_status(exc)
    if not (status in _SERVICE_STATUS or (status or 0) >= 500) and type(exc).__name__ not in _SERVICE_NAMES \
            and type(exc).__name__ != "InternalServerError" and not isinstance(exc, (TimeoutError, ConnectionError)):
        return None
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return min(float(headers["retry-after-ms"]) / 1000, cap)
        if headers.get("retry-after"):
            return min(float(headers["retry-after"]), cap)
    except (TypeError, ValueError):
        pass  # an HTTP date: fall back to the backoff
    return min(cap, base * 2 ** attempt)


def service_failed(exc: BaseException) -> bool:
    """An HTTP 500 (or another 5xx but 502-504): the service failed, for every request or for
    this one's content alone."""
    status = _http_status(exc)
    return (status is not None and status >= 500 and status not in _SERVICE_STATUS) or (
        status is None and type(exc).__name__ == "InternalServerError")


class ServiceRowError(Exception):  # the rows' doing: blame() charges them
    """The embedding service answered these texts with a server error while it answers
    others: the rows' doing, so they are isolated and retried with a backoff."""



def translate(exc: psycopg.Error, doing: str) -> PgvzError:
    """Turn a psycopg error into a PgvzError that says what was being done and what to try."""
    diag = getattr(exc, "diag", None)
    primary = (diag.message_primary if diag is not None else None) or str(exc).strip()
    hint = diag.message_hint if diag is not None else None
    if isinstance(exc, pg_errors.InsufficientPrivilege) and "row-level security" in primary:
        return RowSecurityActive(
            f"while {doing}: {primary}; this role is subject to the table's row-level security, "
            "so rows its policies hide would look deleted and lose their embeddings; run the "
            "worker as a role with BYPASSRLS (ALTER ROLE ... BYPASSRLS) or as the table's owner "
            "(without FORCE ROW LEVEL SECURITY); nothing was synced or charged")
    if isinstance(exc, pg_errors.LockNotAvailable):
        msg = (f"while {doing}: {primary}; another transaction holds a lock it needs, and pgvz_nb "
               "gives up (lock_timeout) rather than make other statements wait behind it; "
               "nothing was charged: run it again")
    elif isinstance(exc, pg_errors.InsufficientPrivilege):
        msg = (
            f"while {doing}: permission denied ({primary}); "
            "connect as the table's owner or grant the privileges listed in the README"
        )
    elif isinstance(exc, pg_errors.UndefinedTable):
        msg = (f"while {doing}: {primary}; check the table name and schema; a table renamed since is "
               "followed in the catalog, so reopen the vectorizer (Vectorizer.open(db, name)); or run "
               "create()/register() first")
    elif isinstance(exc, (pg_errors.DeadlockDetected, pg_errors.SerializationFailure,
                          pg_errors.TransactionRollback)):
        msg = (
            f"while {doing}: the server rolled the transaction back ({primary}), a conflict with "
            "another session; nothing it did was kept: run it again"
        )
    elif connection_lost(exc):
        return ConnectionFailed(f"while {doing}: the connection failed ({primary}); check that the "
                                "server is running and the DSN; nothing was charged: run it again")
    else:
        msg = f"while {doing}: {primary}"
    if hint:
        msg += f" (server hint: {hint})"
    return DatabaseError(msg)
