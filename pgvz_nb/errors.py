"""The one exception family of pgvz_nb, and the translation of database errors into it."""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors

__all__ = [
    "PgvzError",
    "ConnectionFailed",
    "ExtensionMissing",
    "NotFound",
    "NotATable",
    "NoPrimaryKey",
    "InvalidName",
    "ConfigConflict",
    "DimensionMismatch",
    "RowError",
    "EmbeddingUnavailable",
    "CallbackFailed",
    "DatabaseError",
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
    """The embedding service kept failing with transient errors; the batch waits and retries."""

    pgvz_whole_batch = True


class CallbackFailed(PgvzError):
    """The embed-and-write callback raised for some rows; they stay queued for a retry."""


class DatabaseError(PgvzError):
    """A database error, translated; the original is the ``__cause__``."""


def translate(exc: psycopg.Error, doing: str) -> PgvzError:
    """Turn a psycopg error into a PgvzError that says what was being done and what to try."""
    diag = getattr(exc, "diag", None)
    primary = (diag.message_primary if diag is not None else None) or str(exc).strip()
    hint = diag.message_hint if diag is not None else None
    if isinstance(exc, pg_errors.InsufficientPrivilege):
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
    elif isinstance(exc, psycopg.OperationalError):
        msg = f"while {doing}: the connection failed ({primary}); check that the server is running and the DSN"
    else:
        msg = f"while {doing}: {primary}"
    if hint:
        msg += f" (server hint: {hint})"
    return DatabaseError(msg)
