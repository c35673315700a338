"""Every SQL statement of pgvz_nb, one named function each, composed with ``psycopg.sql``.

Names arrive as plain strings and leave as ``Name`` (an ``sql.Identifier``); values are ``%s`` /
``%(name)s`` placeholders bound by the caller. A relation is a ``(schema, name)`` pair.
No other module holds SQL text; the rest of pgvz_nb's SQL is in the ``plpgsql/*.sql`` files.

PL/pgSQL that takes no per-vectorizer input (the event-trigger functions) lives in
``plpgsql/<function>.sql``, read with ``importlib.resources``. A file holds the function's
body only, from its ``-- pgvz_nb event function pgvz.<name>, version N`` line (checked
against ``PLPGSQL_VERSIONS``) to its final ``END``; pg_proc.prosrc holds exactly that text, so
an install compares the file itself with prosrc, and psql's ``\\sf`` shows which version is
in. The ``CREATE FUNCTION`` around it stays in ``create_event_function``: a whole statement
in the file would leave the body to be cut out of it for the comparison, and SECURITY
DEFINER and the pinned search_path written twice. File text is never a template and never
%-escaped: a ``%`` or ``%%`` in a file reaches prosrc as written. Bodies that depend on a
vectorizer's keys and columns (``trigger_body``) stay composed here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from importlib.resources import files

from psycopg import sql

Rel = tuple[str, str]


class Name(sql.Identifier):
    """An identifier whose ``%`` signs survive psycopg's placeholder processing.

    psycopg reads ``%s`` and ``%(x)s`` anywhere in a query it has parameters for, quoted
    identifiers included, so a table called ``%s`` would take a parameter's place. A Name
    doubles its ``%``; the connections pgvz_nb opens always pass parameters (an empty
    tuple if none) for queries that hold one, which turns ``%%`` back into ``%``."""

    pct_escaped = True

    def as_bytes(self, context=None) -> bytes:
        return super().as_bytes(context).replace(b"%", b"%%")

    def as_string(self, context=None) -> str:
        return super().as_string(context).replace("%", "%%")


class PctLiteral(sql.Literal):
    """A string literal whose ``%`` signs survive placeholder processing, as a Name's do
    (a format() template in a trigger body, say)."""

    pct_escaped = True

    def as_bytes(self, context=None) -> bytes:
        return super().as_bytes(context).replace(b"%", b"%%")

    def as_string(self, context=None) -> str:
        return super().as_string(context).replace("%", "%%")


def stored_text(body: sql.Composable, context) -> str:
    """A function body as pg_proc.prosrc will hold it: the %% that Names, PctLiterals and
    UserSQL put in it for placeholder processing back to %, and nothing else touched (a
    ``PlpgsqlFile``, or a ``%%`` in SQL text, stays as written: the DDL that installs a body
    doubles every % in it, see ``create_event_function``)."""
    if isinstance(body, sql.Composed):
        return "".join(stored_text(part, context) for part in body._obj)
    text = sql.Composed([body]).as_string(context)  # through as_bytes, as a query is rendered
    return text.replace("%%", "%") if getattr(body, "pct_escaped", False) else text


class UserSQL(sql.SQL):
    """SQL text the user wrote (a ``where`` filter), with its ``%`` escaped like a Name's."""

    pct_escaped = True

    def __init__(self, text: str):
        super().__init__(text.replace("%", "%%"))

    def format(self, *args, **kwargs):  # never a template: braces in it are the user's
        raise TypeError("UserSQL is not a template")


def has_escaped(query) -> bool:
    """Whether a composed query holds a Name or UserSQL (then it must run with parameters)."""
    if getattr(query, "pct_escaped", False):
        return True
    return any(has_escaped(part) for part in getattr(query, "_obj", ())) if isinstance(query, sql.Composed) else False

CATALOG: Rel = ("pgvz", "vectorizers")
IN_FLIGHT: Rel = ("pgvz", "in_flight")
IN_FLIGHT_POLICY = "workers_see_their_queues"
# pg_advisory_xact_lock key serialising catalog installs and registrations: a
# constant (not an OID) so that every database and every version agree on it.
INSTALL_LOCK_KEY = 0x7067767A_00000001

QUEUE_COLUMNS = ("queued_at", "attempts", "retry_after", "last_error")
FAILED_COLUMNS = ("attempts", "last_error", "first_queued_at", "failed_at")


def ident(rel: Rel) -> Name:
    return Name(*rel)


def _cols(names: Sequence[str], prefix: str | None = None) -> sql.Composed:
    if prefix is None:
        return sql.SQL(", ").join(Name(n) for n in names)
    return sql.SQL(", ").join(Name(prefix, n) for n in names)


#: the longest name PostgreSQL keeps (NAMEDATALEN - 1 bytes); a longer one is silently cut
NAME_BYTES = 63


def cut(text: str, nbytes: int) -> str:
    """``text`` within ``nbytes`` bytes of UTF-8, cut on a character boundary."""
    return text.encode()[:nbytes].decode(errors="ignore")


def name_tag(text: str) -> str:
    """8 hex digits that tell ``text`` from other texts in a derived name."""
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def fit_name(base: str, suffix: str = "", *, tag_if_cut: bool = False) -> str:
    """The one way pgvz_nb shortens a name it derives: ``base + suffix`` within NAME_BYTES,
    ``base`` cut (PostgreSQL would cut the suffix off, and with it the difference between
    names). ``tag_if_cut``: a name that has to be cut ends in ``_`` + ``name_tag`` of the
    whole, so two long names that share a beginning still differ."""
    if tag_if_cut and len((base + suffix).encode()) > NAME_BYTES:
        suffix = suffix + "_" + name_tag(base + suffix)
    return cut(base, NAME_BYTES - len(suffix.encode())) + suffix


def _index_name(rel: Rel, suffix: str) -> Name:
    """An index named after its table: the name cut to 50 bytes, so the suffix fits."""
    return Name(cut(rel[1], 50) + suffix)


def _match(left: str, right: str, names: Sequence[str]) -> sql.Composed:
    """``left.k1 = right.k1 AND ...`` over the key columns."""
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(Name(left, n), Name(right, n)) for n in names
    )


def _match_as_text(left: str, left_cols: Sequence[str], right: str, right_cols: Sequence[str]) -> sql.Composed:
    """``left.a1::text = right.b1::text AND ...``: keys compared as text, as the trigger
    does, so no equality operator from outside pg_catalog is needed."""
    return sql.SQL(" AND ").join(
        sql.SQL("{}::text = {}::text").format(Name(left, a), Name(right, b)) for a, b in zip(left_cols, right_cols)
    )


# --- extension and server -------------------------------------------------------------


def vector_extension_installed() -> sql.Composed:
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')").format()


def vector_extension_available() -> sql.Composed:
    return sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')"
    ).format()


def create_vector_extension() -> sql.Composed:
    return sql.SQL("CREATE EXTENSION IF NOT EXISTS vector").format()


def setting_source() -> sql.Composed:
    """Where a setting's value comes from ('default', 'configuration file', ...); %s: name."""
    return sql.SQL("SELECT source FROM pg_settings WHERE name = %s").format()


def alter_system_set(name: str, value: str) -> sql.Composed:
    return sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))


def reload_conf() -> sql.Composed:
    return sql.SQL("SELECT pg_reload_conf()").format()


def other_clients() -> sql.Composed:
    """How many client sessions other than this one are connected."""
    return sql.SQL(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    ).format()


# --- catalog ---------------------------------------------------------------------------


def try_install_lock() -> sql.Composed:
    """Serialise installs (two ``CREATE TABLE IF NOT EXISTS`` racing still collide in pg_type):
    the lock if free now (true), else false, so an install never queues behind another."""
    return sql.SQL("SELECT pg_try_advisory_xact_lock({})").format(sql.Literal(INSTALL_LOCK_KEY))


def set_session() -> sql.Composed:
    """Setting %s to %s for the session."""
    return sql.SQL("SELECT set_config(%s, %s, false)").format()


def set_local() -> sql.Composed:
    """Setting %s to %s until the transaction ends (lock_timeout, say)."""
    return sql.SQL("SELECT set_config(%s, %s, true)").format()


def lock_holders() -> sql.Composed:
    """Sessions holding a lock on %(schema)s.%(table)s, for the message of an install that gave
    up: pid, application_name, state, how long its transaction has been open, its query."""
    return sql.SQL(
        "SELECT a.pid, a.application_name, a.state, now() - a.xact_start, left(a.query, 120) "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND l.granted "
        "AND a.pid <> pg_backend_pid() ORDER BY a.xact_start LIMIT 5"
    ).format()


def foreign_code(rel: sql.Composable, trusted: sql.Composable) -> sql.Composed:
    """plpgsql/foreign_code.sql (what code on table ``rel``, an oid expression, belongs to a
    role that is neither a superuser nor one of ``trusted``, a name[] expression) as an
    expression in a query: the file's SELECT over a one-row subquery that names its two
    parameters. The same text the event functions call as pgvz.foreign_code()."""
    return sql.SQL("(SELECT ({body}\n) FROM (SELECT {rel}, {trusted}) AS args(rel, trusted))").format(
        body=plpgsql_file(FOREIGN_CODE_FUNCTION), rel=rel, trusted=trusted)


def relation_trust() -> sql.Composed:
    """What decides whether pgvz_nb may write into %(schema)s.%(table)s: (owner, owned by the
    current role, owner is a superuser, relkind, user triggers with their functions' owners,
    rule count, inheritance children or partitions, code owned by roles other than
    %(trusted)s and superusers)."""
    return sql.SQL(
        """SELECT o.rolname, c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user),
       o.rolsuper, c.relkind,
       ARRAY(SELECT t.tgname || ' (function ' || p.proname || ' owned by ' || po.rolname || ')'
             FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_roles po ON po.oid = p.proowner
             WHERE t.tgrelid = c.oid AND NOT t.tgisinternal ORDER BY t.tgname),
       (SELECT count(*) FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN'),
       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid),
       {code}
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_roles o ON o.oid = c.relowner
WHERE n.nspname = %(schema)s AND c.relname = %(table)s"""
    ).format(code=foreign_code(sql.SQL("c.oid"), sql.SQL("%(trusted)s::name[]")))


def untrusted_key_types() -> sql.Composed:
    """Key columns (%(keys)s) of %(schema)s.%(table)s whose type is not built in and belongs
    to a role other than the current one and superusers (nor to an extension): its
    domain CHECKs or casts would run with the privileges of the trigger's owner."""
    return sql.SQL(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), o.rolname
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid JOIN pg_roles o ON o.oid = t.typowner
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND a.attname = ANY (%(keys)s::text[])
  AND NOT o.rolsuper AND o.rolname <> current_user
  AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_type'::regclass AND e.objid = t.oid
                  AND e.deptype = 'e')"""
    ).format()


def role_of_table() -> sql.Composed:
    """(current role, owner of %s.%s)."""
    return sql.SQL(
        "SELECT current_user::text, (SELECT o.rolname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_roles o ON o.oid = c.relowner WHERE n.nspname = %s AND c.relname = %s)"
    ).format()


def schema_trust() -> sql.Composed:
    """(owner, owned by the current role, owner is a superuser) of schema %s, or no row."""
    return sql.SQL(
        "SELECT o.rolname, n.nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user), o.rolsuper "
        "FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner WHERE n.nspname = %s"
    ).format()


def catalog_backfill_pending() -> sql.Composed:
    """The tables vectorizer %s has still to queue the rows of (config->'backfill'), or NULL."""
    return sql.SQL("SELECT config->'backfill' FROM {} WHERE id = %s").format(ident(CATALOG))


def catalog_take_backfill() -> sql.Composed:
    """The tables whose rows an install still has to queue (config->'backfill'), taken out
    of the catalog row in the caller's transaction. FOR NO KEY UPDATE: workers recording a
    batch in pgvz.in_flight hold KEY SHARE on the row (its foreign key) and go on."""
    return sql.SQL(
        """WITH row AS (SELECT id, config->'backfill' AS pending FROM {c} WHERE id = %s AND config ? 'backfill'
                     FOR NO KEY UPDATE)
UPDATE {c} AS c SET config = c.config - 'backfill' FROM row WHERE c.id = row.id RETURNING row.pending"""
    ).format(c=ident(CATALOG))


def create_catalog_schema() -> sql.Composed:
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Name(CATALOG[0]))


def create_catalog() -> sql.Composed:
    """One row per vectorizer; names, never OIDs, so a dump and restore keeps it valid."""
    return sql.SQL(
        """CREATE TABLE IF NOT EXISTS {} (
            id            serial PRIMARY KEY,
            name          text NOT NULL UNIQUE,
            source_schema text NOT NULL,
            source_table  text NOT NULL,
            queue_schema  text NOT NULL,
            queue_table   text NOT NULL,
            config        jsonb NOT NULL DEFAULT '{{}}',
            created_at    timestamptz NOT NULL DEFAULT now(),
            last_success  timestamptz,
            UNIQUE (queue_schema, queue_table)
        )"""
    ).format(ident(CATALOG))


def catalog_missing_parts() -> sql.Composed:
    """(last_success column missing, in_flight table missing, in_flight's row security
    missing and the caller owns the table): what an older install lacks. Asked first
    because the DDL locks the catalog even when it has nothing to do, and a worker recording
    a batch in pgvz.in_flight reads the catalog (its foreign key): an ALTER on every
    create() could deadlock with running workers. Parameters: catalog, in_flight."""
    return sql.SQL(
        """SELECT NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%(catalog)s)
                              AND attname = 'last_success' AND NOT attisdropped),
                  to_regclass(%(in_flight)s) IS NULL,
                  EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = to_regclass(%(in_flight)s)
                          AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid
                                          AND p.polname = {policy})
                          AND pg_has_role(c.relowner, 'USAGE'))"""
    ).format(policy=sql.Literal(IN_FLIGHT_POLICY))


def upgrade_catalog() -> sql.Composed:
    """Columns added since the first catalog (run only when missing)."""
    return sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS last_success timestamptz").format(ident(CATALOG))


def create_in_flight() -> sql.Composed:
    """Batches a worker is processing right now, one row each with its keys (as text: the
    key's columns joined by a unit separator). A worker inserts its batch's row on a second
    connection that commits at once, before its handler runs; the batch's own transaction
    deletes it. A row that outlives its batch is the trace of a worker that died holding
    those keys (killed, out of memory, a crash in native code): a key's deaths are the rows
    that hold it. A row per batch, not per key, keeps this to one small insert per claim."""
    return sql.SQL(
        """CREATE TABLE IF NOT EXISTS {} (
            id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- no sequence grant needed
            vectorizer int NOT NULL REFERENCES {} (id) ON DELETE CASCADE,
            keys       text[] NOT NULL,
            claimed_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS in_flight_vectorizer ON {} (vectorizer)"""
    ).format(ident(IN_FLIGHT), ident(CATALOG), ident(IN_FLIGHT))


def in_flight_policy() -> sql.Composed:
    """Row security on pgvz.in_flight, one table for every vectorizer: a role sees and writes
    only the rows of vectorizers whose queue it may DELETE from (a worker role granted for
    one vectorizer cannot read the keys another is processing). The owner, who creates
    vectorizers, is exempt, as PostgreSQL exempts a table's owner; foreign-key cascades
    ignore row security."""
    return sql.SQL(
        """ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;
        CREATE POLICY {policy} ON {t} USING (has_table_privilege(
            (SELECT to_regclass(quote_ident(c.queue_schema) || '.' || quote_ident(c.queue_table))
             FROM {catalog} AS c WHERE c.id = {t}.vectorizer), 'DELETE'))"""
    ).format(t=ident(IN_FLIGHT), policy=sql.Identifier(IN_FLIGHT_POLICY), catalog=ident(CATALOG))


def in_flight_deaths() -> sql.Composed:
    """(position in %(keys)s, deaths) of the given keys held by batches still in flight
    (%(keys)s: the keys' texts joined by chr(30), see ``queue._key_texts``). The
    caller holds the keys' advisory locks, which a live worker would hold: each such batch
    belonged to a worker that died."""
    return sql.SQL(
        """
SELECT u.i::int, count(*)::int
FROM unnest(string_to_array(%(keys)s, chr(30))) WITH ORDINALITY AS u(key, i)
JOIN (SELECT e FROM {} AS f CROSS JOIN LATERAL unnest(f.keys) AS e
      WHERE f.vectorizer = %(vid)s) AS d ON d.e = u.key
GROUP BY u.i
"""
    ).format(ident(IN_FLIGHT))


def in_flight_mark() -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {} (vectorizer, keys) VALUES (%(vid)s, string_to_array(%(keys)s, chr(30))) RETURNING id"
    ).format(ident(IN_FLIGHT))


def in_flight_clear() -> sql.Composed:
    return sql.SQL("DELETE FROM {} WHERE id = %(batch)s").format(ident(IN_FLIGHT))


def in_flight_forget() -> sql.Composed:
    """Take the keys in %(keys)s out of the dead batches that hold them (their outcome is now
    recorded), locking those rows in id order, and drop batches left empty."""
    return sql.SQL(
        """
WITH gone AS (SELECT string_to_array(%(keys)s, chr(30)) AS keys),
dead AS (
    SELECT id FROM {t} WHERE vectorizer = %(vid)s AND keys && (SELECT keys FROM gone)
    ORDER BY id FOR UPDATE
), kept AS (
    SELECT f.id, ARRAY(SELECT e FROM unnest(f.keys) AS e WHERE e NOT IN (SELECT unnest(keys) FROM gone)) AS keys
    FROM {t} AS f WHERE f.id IN (SELECT id FROM dead)
), emptied AS (
    DELETE FROM {t} AS f USING kept WHERE f.id = kept.id AND cardinality(kept.keys) = 0
)
UPDATE {t} AS f SET keys = kept.keys FROM kept WHERE f.id = kept.id AND cardinality(kept.keys) > 0
"""
    ).format(t=ident(IN_FLIGHT))


def catalog_mark_success() -> sql.Composed:
    """When a batch last committed (its own short transaction: no lock held across batches)."""
    return sql.SQL("UPDATE {} SET last_success = now() WHERE id = %s").format(ident(CATALOG))


def catalog_last_success() -> sql.Composed:
    return sql.SQL("SELECT last_success FROM {} WHERE id = %s").format(ident(CATALOG))


def catalog_exists() -> sql.Composed:
    return sql.SQL("SELECT to_regclass(%s) IS NOT NULL").format()


def catalog_get() -> sql.Composed:
    return sql.SQL(
        "SELECT id, name, source_schema, source_table, queue_schema, queue_table, config, created_at "
        "FROM {} WHERE name = %s"
    ).format(ident(CATALOG))


def catalog_get_by_queue() -> sql.Composed:
    return sql.SQL("SELECT id, name FROM {} WHERE queue_schema = %s AND queue_table = %s").format(
        ident(CATALOG)
    )


def catalog_list() -> sql.Composed:
    return sql.SQL(
        "SELECT id, name, source_schema, source_table, queue_schema, queue_table, config, created_at "
        "FROM {} ORDER BY id"
    ).format(ident(CATALOG))


def catalog_insert() -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {} (name, source_schema, source_table, queue_schema, queue_table, config) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id, created_at"
    ).format(ident(CATALOG))


def catalog_set_config() -> sql.Composed:
    return sql.SQL("UPDATE {} SET config = %s WHERE id = %s").format(ident(CATALOG))


def catalog_delete() -> sql.Composed:
    return sql.SQL("DELETE FROM {} WHERE id = %s").format(ident(CATALOG))


# --- introspection ---------------------------------------------------------------------


def find_relation() -> sql.Composed:
    """relkind of schema.name, looked up by name so hostile names need no quoting at all."""
    return sql.SQL(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s"
    ).format()


def schema_exists() -> sql.Composed:
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)").format()


def table_columns() -> sql.Composed:
    """Live columns in table order, with their type as SQL would spell it and NOT NULL."""
    return sql.SQL(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum"
    ).format()


def unique_keys() -> sql.Composed:
    """Primary key first, then unique indexes, each as its column names in index order."""
    return sql.SQL(
        "SELECT i.indisprimary, array_agg(a.attname ORDER BY k.ord) "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
        "WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indpred IS NULL "
        "AND i.indexprs IS NULL "
        "GROUP BY i.indexrelid, i.indisprimary ORDER BY i.indisprimary DESC, i.indexrelid"
    ).format()


def trigger_names_on() -> sql.Composed:
    return sql.SQL(
        "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND NOT t.tgisinternal"
    ).format()


# --- queue DDL -------------------------------------------------------------------------


def create_queue(queue: Rel, source: Rel, keys: Sequence[str]) -> sql.Composed:
    """Key columns copied from the source with CREATE TABLE AS, so types (uuid, domains,
    typmods, collations) come from the catalog and no type name is ever spelled in SQL."""
    return sql.SQL(
        "CREATE TABLE {queue} AS SELECT {keys} FROM {source} WITH NO DATA; "
        "ALTER TABLE {queue} "
        "ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now(), "
        "ADD COLUMN attempts integer NOT NULL DEFAULT 0, "
        "ADD COLUMN retry_after timestamptz, "
        "ADD COLUMN last_error text; "
        # claim order (oldest first) and the per-key delete of duplicates
        "CREATE INDEX ON {queue} (queued_at); "
        "CREATE INDEX ON {queue} ({keys})"
    ).format(queue=ident(queue), source=ident(source), keys=_cols(keys))


def create_failed(failed: Rel, source: Rel, keys: Sequence[str]) -> sql.Composed:
    """Keys that used up their attempts: one row per key, kept until a retry or a success."""
    return sql.SQL(
        "CREATE TABLE {failed} AS SELECT {keys} FROM {source} WITH NO DATA; "
        "ALTER TABLE {failed} "
        "ADD COLUMN attempts integer NOT NULL, "
        "ADD COLUMN last_error text, "
        "ADD COLUMN first_queued_at timestamptz, "
        "ADD COLUMN failed_at timestamptz NOT NULL DEFAULT now(), "
        "ADD PRIMARY KEY ({keys})"
    ).format(failed=ident(failed), source=ident(source), keys=_cols(keys))


def create_inbox(inbox: Rel, source: Rel, keys: Sequence[str]) -> sql.Composed:
    """Where the triggers write: one row per statement, the keys as arrays.

    No index and one row per statement, so a bulk write pays for one small insert, not
    one queue row (and two index entries) per changed row; workers move the keys to
    the queue (``expand_inbox``). Column types come from ``array_agg`` over the source.
    """
    aggs = sql.SQL(", ").join(
        sql.SQL("array_agg({k}) AS {k}").format(k=Name(k)) for k in keys
    )
    # EXTERNAL: a bulk statement's key array is read once and deleted; compressing it
    # would only slow the writer down
    uncompressed = sql.SQL(", ").join(
        sql.SQL("ALTER COLUMN {} SET STORAGE EXTERNAL").format(Name(k)) for k in keys
    )
    return sql.SQL(
        "CREATE TABLE {inbox} AS SELECT {aggs} FROM {source} WITH NO DATA; "
        "ALTER TABLE {inbox} ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now(), {uncompressed}"
    ).format(inbox=ident(inbox), source=ident(source), aggs=aggs, uncompressed=uncompressed)


NOTIFY_CHANNEL = "pgvz_nb"


#: Bytes of key text per inbox row when one statement's keys do not fit one array (1 GB).
KEY_SLICE_BYTES = 128 * 1024 * 1024


def _sliced_insert(inbox: Rel, keys: Sequence[str], rows: sql.Composable) -> sql.Composed:
    """``INSERT INTO inbox`` of the keys that ``rows`` yields, as several inbox rows of about
    KEY_SLICE_BYTES of key text each (a running sum over the rows decides the slice)."""
    return sql.SQL(
        "INSERT INTO {inbox} ({k}) SELECT {aggs} FROM (SELECT {k}, sum(octet_length(ROW({k})::text) + 16) "
        "OVER (ROWS UNBOUNDED PRECEDING) / {size} AS pgvz_slice FROM ({rows}) AS r) AS s GROUP BY pgvz_slice"
    ).format(inbox=ident(inbox), k=_cols(keys), size=sql.Literal(KEY_SLICE_BYTES), rows=rows,
             aggs=sql.SQL(", ").join(sql.SQL("array_agg({})").format(Name(k)) for k in keys))


def trigger_body(
    inbox: Rel, keys: Sequence[str], watched: Sequence[str] | None, notify_payload: int | None = None,
) -> sql.Composed:
    """PL/pgSQL body of the statement-level trigger: at most one inbox row per statement,
    then, if it queued anything, one NOTIFY on channel ``pgvz_nb`` with the vectorizer id
    (delivered at commit, so workers wake when the change is visible).

    UPDATE joins the transition tables on the key (as text, so it needs no equality
    operator from outside pg_catalog) and keeps a key only when it appeared, vanished
    or one of the watched columns changed its text form. ``watched=None`` compares the
    whole row. Should a watched column be renamed or dropped later, UPDATE queues every key
    it touched instead of failing the application's statement (~1 us per statement for
    the exception block, measured on single-row UPDATEs). TRUNCATE fires BEFORE, the only
    moment the doomed keys can still be read. The same function serves the source's
    partitions and inheritance children: it names no table but the inbox.

    A statement whose keys pass 1 GB (PostgreSQL's limit for one array: 8,000 keys of
    150 kB, or a TRUNCATE of ~270M int keys) would fail in ``array_agg``: then the keys go
    in slices of KEY_SLICE_BYTES, one inbox row each, rather than fail the statement.

    Should the key's type or name change with no event trigger to follow it (none installed),
    the keys cannot be queued: the statement goes on, with a WARNING, rather than fail.

    No NOTIFY where the server allows prepared transactions (``max_prepared_transactions >
    0``): PostgreSQL refuses PREPARE TRANSACTION after a NOTIFY, so it would break the
    application's two-phase commit; workers then find changes by polling. The setting
    ``pgvz.notify`` (on/off, e.g. ``ALTER DATABASE ... SET``) overrides that choice.
    """
    kcols = _cols(keys)
    aggs = sql.SQL(", ").join(sql.SQL("array_agg({})").format(Name(k)) for k in keys)
    kalias = [f"k{i}" for i in range(len(keys))]
    side_cols: list[sql.Composable] = [
        sql.SQL("{} AS {}").format(Name("t", k), Name(a))
        for k, a in zip(keys, kalias)
    ]
    if watched is None:
        walias = ["w0"]
        # ROW(t.*), not t: a column called "t" would be read instead of the row
        side_cols.append(sql.SQL("ROW(t.*)::text AS w0"))
    else:
        walias = [f"w{i}" for i in range(len(watched))]
        side_cols += [
            sql.SQL("{}::text AS {}").format(Name("t", w), Name(a))
            for w, a in zip(watched, walias)
        ]
    side_cols.append(sql.SQL("true AS present"))
    side = sql.SQL(", ").join(side_cols)
    pick = sql.SQL(", ").join(
        sql.SQL("array_agg(CASE WHEN n.present THEN {n} ELSE {o} END)").format(
            n=Name("n", a), o=Name("o", a)
        )
        for a in kalias
    )
    join_on = sql.SQL(" AND ").join(
        sql.SQL("{}::text = {}::text").format(Name("n", a), Name("o", a))
        for a in kalias
    )
    changed: sql.Composable
    if walias:
        changed = sql.SQL("ROW({}) IS DISTINCT FROM ROW({})").format(
            _cols(walias, "n"), _cols(walias, "o")
        )
    else:
        changed = sql.SQL("false")
    # one NOTIFY per transaction: PostgreSQL folds repeats into one anyway, but each call
    # cost ~5 us of a ~25 us trigger on single-row statements. The flag is transaction-local
    # (set_config's true), so it goes with a rolled-back savepoint just as its NOTIFY does.
    notify: sql.Composable = sql.SQL("")
    if notify_payload is not None:
        notify = sql.SQL(
            "  IF queued > 0 AND current_setting({flag}, true) IS DISTINCT FROM 'y' THEN\n"
            "    IF coalesce(nullif(current_setting('pgvz.notify', true), ''),\n"
            "                CASE WHEN current_setting('max_prepared_transactions')::int > 0 THEN 'off' ELSE 'on' END) = 'on' THEN\n"
            "      PERFORM pg_notify({channel}, {payload});\n"
            "    END IF;\n"
            "    PERFORM set_config({flag}, 'y', true);\n"
            "  END IF;\n"
        ).format(flag=sql.Literal(f"pgvz.notified_{int(notify_payload)}"),
                 channel=sql.Literal(NOTIFY_CHANNEL), payload=sql.Literal(str(int(notify_payload))))
    # TRUNCATE reads the keys of the table it fires for: the source, or one of its
    # partitions or inheritance children (each carries these triggers), so dynamic SQL;
    # every name goes through format()'s %I
    inbox_names = [*inbox, *keys, *keys]
    truncate_fmt = PctLiteral(sql.SQL("INSERT INTO %I.%I ({}) SELECT {} FROM %s HAVING count(*) > 0").format(
        sql.SQL(", ").join(sql.SQL("%I") for _ in keys),
        sql.SQL(", ").join(sql.SQL("array_agg(%I)") for _ in keys),
    ).as_string(None))
    truncate_args = sql.SQL(", ").join(PctLiteral(n) for n in inbox_names)
    # the sliced TRUNCATE, the same over the table it fires for
    each = sql.SQL(", ").join(sql.SQL("%I") for _ in keys)
    sliced_truncate_fmt = PctLiteral(sql.SQL(
        "INSERT INTO %I.%I ({each}) SELECT {aggs} FROM (SELECT {each}, sum(octet_length(ROW({each})::text) + 16) "
        "OVER (ROWS UNBOUNDED PRECEDING) / {size} AS pgvz_slice FROM %s) AS s GROUP BY pgvz_slice"
    ).format(each=each, size=sql.Literal(KEY_SLICE_BYTES),
             aggs=sql.SQL(", ").join(sql.SQL("array_agg(%I)") for _ in keys)).as_string(None))
    sliced_truncate_args = sql.SQL(", ").join(PctLiteral(n) for n in [*inbox, *keys, *keys, *keys, *keys])
    every_key = sql.SQL("SELECT {k} FROM pgvz_new UNION ALL SELECT {k} FROM pgvz_old").format(k=kcols)
    # use_column: a source column called "queued" (the one variable) would otherwise make
    # every statement on the table fail with "column reference is ambiguous"
    return sql.SQL(
        """
#variable_conflict use_column
DECLARE
  queued bigint;
BEGIN
  BEGIN
    IF TG_OP = 'INSERT' THEN
      INSERT INTO {inbox} ({kcols}) SELECT {aggs} FROM pgvz_new HAVING count(*) > 0;
    ELSIF TG_OP = 'DELETE' THEN
      INSERT INTO {inbox} ({kcols}) SELECT {aggs} FROM pgvz_old HAVING count(*) > 0;
    ELSIF TG_OP = 'UPDATE' THEN
      BEGIN
        INSERT INTO {inbox} ({kcols})
        SELECT {pick}
        FROM (SELECT {side} FROM pgvz_new AS t) AS n
        FULL JOIN (SELECT {side} FROM pgvz_old AS t) AS o ON {join_on}
        WHERE n.present IS NULL OR o.present IS NULL OR {changed}
        HAVING count(*) > 0;
      EXCEPTION WHEN undefined_column THEN
        -- a watched column was renamed or dropped since create(): the application's UPDATE
        -- must not fail for it, so every key it touched is queued, unchanged or not
        INSERT INTO {inbox} ({kcols})
        SELECT {aggs} FROM (SELECT {kcols} FROM pgvz_new UNION SELECT {kcols} FROM pgvz_old) AS t
        HAVING count(*) > 0;
      END;
    ELSIF TG_OP = 'TRUNCATE' THEN
      EXECUTE format({truncate_fmt}, {truncate_args}, TG_RELID::regclass);
    END IF;
    GET DIAGNOSTICS queued = ROW_COUNT;
  EXCEPTION WHEN program_limit_exceeded THEN
    -- the statement's keys do not fit one array (1 GB): queue them in slices; an UPDATE
    -- queues every key it touched
    IF TG_OP = 'INSERT' THEN
      {sliced_new};
    ELSIF TG_OP = 'DELETE' THEN
      {sliced_old};
    ELSIF TG_OP = 'UPDATE' THEN
      {sliced_every};
    ELSE
      EXECUTE format({sliced_truncate_fmt}, {sliced_truncate_args}, TG_RELID::regclass);
    END IF;
    GET DIAGNOSTICS queued = ROW_COUNT;
  WHEN numeric_value_out_of_range OR invalid_text_representation OR datatype_mismatch
       OR string_data_right_truncation OR undefined_column OR undefined_table THEN
    -- the table's key changed and the vectorizer's tables did not follow (no event trigger:
    -- none was installed, or it was turned off): the application's statement goes on
    RAISE WARNING 'pgvz_nb: the keys this statement changed in % were not queued (%)', TG_TABLE_NAME, SQLERRM
      USING HINT = 'run create() or register() again as the vectorizer''s owner, then reconcile()';
    queued := 0;
  END;
{notify}  RETURN NULL;
END
"""
    ).format(
        inbox=ident(inbox), kcols=kcols, aggs=aggs, pick=pick,
        side=side, join_on=join_on, changed=changed, notify=notify,
        truncate_fmt=truncate_fmt, truncate_args=truncate_args,
        sliced_new=_sliced_insert(inbox, keys, sql.SQL("SELECT {} FROM pgvz_new").format(kcols)),
        sliced_old=_sliced_insert(inbox, keys, sql.SQL("SELECT {} FROM pgvz_old").format(kcols)),
        sliced_every=_sliced_insert(inbox, keys, every_key),
        sliced_truncate_fmt=sliced_truncate_fmt, sliced_truncate_args=sliced_truncate_args,
    )


def listen() -> sql.Composed:
    return sql.SQL("LISTEN {}").format(Name(NOTIFY_CHANNEL))


def expand_inbox(inbox: Rel, queue: Rel, keys: Sequence[str]) -> sql.Composed:
    """Move up to %(limit)s inbox rows into the queue, one queue row per key, keeping
    queued_at. One statement: the inbox rows go exactly when their keys arrive. SKIP
    LOCKED lets several workers expand at once; no ORDER BY, as the inbox has no index
    and heap order is close to arrival order."""
    return sql.SQL(
        """
WITH taken AS (
    DELETE FROM {inbox} WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {inbox} LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
    RETURNING {k}, queued_at
)
INSERT INTO {queue} ({k}, queued_at)
SELECT {uk}, t.queued_at FROM taken AS t CROSS JOIN LATERAL unnest({tk}) AS u({k})
"""
    ).format(
        inbox=ident(inbox), queue=ident(queue), k=_cols(keys), uk=_cols(keys, "u"),
        tk=_cols(keys, "t"),
    )


def trigger_function_source() -> sql.Composed:
    """(body, whether the current role owns it) of trigger function %s.%s()."""
    return sql.SQL(
        "SELECT p.prosrc, pg_has_role(p.proowner, 'MEMBER') FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND p.proname = %s AND p.pronargs = 0"
    ).format()


def create_trigger_function(function: Rel, body: str) -> sql.Composed:
    """SECURITY DEFINER so a role that may only write the source still queues its changes;
    the pinned search_path keeps a look-alike function or operator from being picked up."""
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql "
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}; "
        "REVOKE ALL ON FUNCTION {fn}() FROM PUBLIC"
    ).format(fn=ident(function), body=PctLiteral(body))


_TRIGGER_DDL = {
    "insert": "CREATE TRIGGER {name} AFTER INSERT ON {src} REFERENCING NEW TABLE AS pgvz_new "
              "FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
    "update": "CREATE TRIGGER {name} AFTER UPDATE ON {src} REFERENCING OLD TABLE AS pgvz_old "
              "NEW TABLE AS pgvz_new FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
    "delete": "CREATE TRIGGER {name} AFTER DELETE ON {src} REFERENCING OLD TABLE AS pgvz_old "
              "FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
    "truncate": "CREATE TRIGGER {name} BEFORE TRUNCATE ON {src} FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
}


def create_triggers(source: Rel, function: Rel, names: dict[str, str],
                    events: Sequence[str] = ("insert", "update", "delete", "truncate")) -> sql.Composed:
    """Transition tables allow one event per trigger, hence four triggers on one function
    (``events``: only some of them, for a partition that lacks them)."""
    return sql.SQL("; ").join(
        sql.SQL(_TRIGGER_DDL[e]).format(name=Name(names[e]), src=ident(source), fn=ident(function))
        for e in events
    )


PARTITION_EVENT_TRIGGER = "pgvz_follow_ddl"
PARTITION_FUNCTION: Rel = ("pgvz", "follow_ddl")
DROP_EVENT_TRIGGER = "pgvz_forget_dropped_partitions"
DROP_FUNCTION: Rel = ("pgvz", "forget_dropped_partitions")
GUARD_DROPS_EVENT_TRIGGER = "pgvz_before_ddl"
GUARD_DROPS_FUNCTION: Rel = ("pgvz", "before_ddl")

FOREIGN_CODE_FUNCTION: Rel = ("pgvz", "foreign_code")
UNSAFE_TABLES_FUNCTION: Rel = ("pgvz", "unsafe_tables")

#: the version each file in plpgsql/ must state on its first line (bump it with the body)
PLPGSQL_VERSIONS = {PARTITION_FUNCTION: 5, DROP_FUNCTION: 5, GUARD_DROPS_FUNCTION: 2,
                    FOREIGN_CODE_FUNCTION: 1, UNSAFE_TABLES_FUNCTION: 1}


class PlpgsqlFile(sql.SQL):
    """A function body read from plpgsql/, kept as written: ``stored_text`` returns it unchanged."""

    def format(self, *args, **kwargs):  # never a template: braces in PL/pgSQL are its own
        raise TypeError("PlpgsqlFile is not a template")


def plpgsql_header(function: Rel) -> str:
    return f"-- pgvz_nb function {function[0]}.{function[1]}, version {PLPGSQL_VERSIONS[function]}\n"


@cache
def plpgsql_file(function: Rel) -> PlpgsqlFile:
    """The body of ``function`` from plpgsql/<name>.sql, once its first line is checked: a file
    of another version (a package installed over a different one) is refused, not installed."""
    text = (files("pgvz_nb") / "plpgsql" / f"{function[1]}.sql").read_text(encoding="utf-8")
    expected = plpgsql_header(function)
    if not text.startswith(expected):
        first = text.split("\n", 1)[0]
        raise RuntimeError(
            f"pgvz_nb/plpgsql/{function[1]}.sql starts {first!r}, expected {expected.strip()!r}: "
            "the package's files come from different versions; reinstall pgvz_nb"
        )
    if function in _INLINED and "%" in text:
        raise RuntimeError(f"pgvz_nb/plpgsql/{function[1]}.sql is also put in queries with parameters "
                           "and must not hold a percent sign")
    return PlpgsqlFile(text)


def partition_function_body() -> PlpgsqlFile:
    """Event trigger pgvz_follow_ddl's body, run at the end of CREATE TABLE, ALTER TABLE and
    ALTER SCHEMA: plpgsql/follow_ddl.sql says what it follows and refuses."""
    return plpgsql_file(PARTITION_FUNCTION)


def drop_function_body() -> PlpgsqlFile:
    """Event trigger pgvz_forget_dropped_partitions's body, run at sql_drop: queues the keys of
    a dropped partition's rows (plpgsql/forget_dropped_partitions.sql)."""
    return plpgsql_file(DROP_FUNCTION)


def guard_drops_function_body() -> PlpgsqlFile:
    """Event trigger pgvz_before_ddl's body, run at the start of DROP and ALTER SCHEMA: notes
    what the other two need once the catalogs have changed (plpgsql/before_ddl.sql)."""
    return plpgsql_file(GUARD_DROPS_FUNCTION)


#: (function, its parameters, their types, what it returns): the SQL functions the event
#: functions call, installed before them (``create_helper_function``); bodies in plpgsql/
HELPER_FUNCTIONS = (
    (FOREIGN_CODE_FUNCTION, "rel oid, trusted name[]", "oid, name[]", "text"),
    (UNSAFE_TABLES_FUNCTION, "qschema text, qtable text, cfg jsonb", "text, text, jsonb", "text"),
)
_INLINED = (FOREIGN_CODE_FUNCTION,)  # files also composed into queries (foreign_code)

# (function, its body, event trigger, its event, its tags or None): what ensure_catalog installs
EVENT_TRIGGERS = (
    (PARTITION_FUNCTION, partition_function_body, PARTITION_EVENT_TRIGGER, "ddl_command_end",
     ("ALTER SCHEMA", "ALTER TABLE", "CREATE TABLE")),
    (DROP_FUNCTION, drop_function_body, DROP_EVENT_TRIGGER, "sql_drop", None),
    (GUARD_DROPS_FUNCTION, guard_drops_function_body, GUARD_DROPS_EVENT_TRIGGER, "ddl_command_start",
     ("ALTER SCHEMA", "DROP OWNED", "DROP SCHEMA", "DROP TABLE")),
)


def event_function_source() -> sql.Composed:
    """(body or NULL, event trigger installed, its tags sorted or NULL if it has none) for
    function %(fschema)s.%(fname)s and event trigger %(evt)s."""
    return sql.SQL(
        "SELECT (SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "        WHERE n.nspname = %(fschema)s AND p.proname = %(fname)s AND p.pronargs = 0), "
        "EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = %(evt)s), "
        "(SELECT CASE WHEN evttags IS NOT NULL THEN ARRAY(SELECT unnest(evttags) ORDER BY 1) END "
        " FROM pg_event_trigger WHERE evtname = %(evt)s)"
    ).format()


def is_superuser() -> sql.Composed:
    return sql.SQL("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").format()


def helper_function_source() -> sql.Composed:
    """pg_proc.prosrc of the function %(signature)s ('pgvz.foreign_code(oid, name[])'), or NULL."""
    return sql.SQL("SELECT (SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure(%(signature)s))").format()


def create_helper_function(function: Rel, params: str, returns: str, body: str) -> sql.Composed:
    """A SQL function of the event functions' (HELPER_FUNCTIONS): run as its caller, the
    superuser an event function runs as; nobody else may execute it. ``params`` and
    ``returns`` are HELPER_FUNCTIONS' constants."""
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}({params}) RETURNS {returns} LANGUAGE sql STABLE "
        "SET search_path = pg_catalog, pg_temp AS {body}; "
        "REVOKE ALL ON FUNCTION {fn}({params}) FROM PUBLIC"
    ).format(fn=ident(function), params=sql.SQL(params), returns=sql.SQL(returns), body=PctLiteral(body))


def drop_event_trigger(name: str) -> sql.Composed:
    return sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(Name(name))


def create_event_function(function: Rel, body: str) -> sql.Composed:
    """SECURITY DEFINER: an event trigger runs for every role's DDL, and the guards must hold
    for a role that cannot see schema pgvz (a table's owner running its migrations); as the
    superuser who installs it, it reads the catalog and changes pgvz_nb's own tables and
    the triggers on vectorized tables, and nothing else. Every name it builds goes through
    format()'s %I, and the search_path is pinned. ``body`` is prosrc's text (``stored_text``);
    as a PctLiteral its % are doubled and the DDL runs with parameters, so each % and %% of
    a plpgsql/ file arrives as written."""
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS event_trigger LANGUAGE plpgsql "
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}; "
        "REVOKE ALL ON FUNCTION {fn}() FROM PUBLIC"
    ).format(fn=ident(function), body=PctLiteral(body))


def create_event_trigger(name: str, event: str, tags: Sequence[str] | None, function: Rel) -> sql.Composed:
    """Needs a superuser: PostgreSQL lets no one else create event triggers."""
    when = sql.SQL("") if tags is None else sql.SQL(" WHEN TAG IN ({})").format(
        sql.SQL(", ").join(sql.Literal(t) for t in tags))
    return sql.SQL("CREATE EVENT TRIGGER {evt} ON {event}{when} EXECUTE FUNCTION {fn}()").format(
        evt=Name(name), event=sql.SQL(event), when=when, fn=ident(function))


def descendants() -> sql.Composed:
    """Every partition and inheritance child of %(schema)s.%(table)s, at any depth:
    (schema, name, names of %(triggers)s it carries that run function %(fschema)s.%(fname)s,
    whether the current role may add triggers to it). A statement aimed at one of them
    fires its own statement triggers, not the source's. Foreign tables are left out: their
    rows are written elsewhere."""
    return sql.SQL(
        """
WITH RECURSIVE d(oid) AS (
    SELECT i.inhrelid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %(schema)s AND c.relname = %(table)s
    UNION
    SELECT i.inhrelid FROM pg_inherits i JOIN d ON i.inhparent = d.oid
), fn AS (
    SELECT p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = %(fschema)s AND p.proname = %(fname)s AND p.pronargs = 0
)
SELECT n.nspname, c.relname,
       ARRAY(SELECT t.tgname::text FROM pg_trigger t
             WHERE t.tgrelid = c.oid AND t.tgfoid IN (SELECT oid FROM fn)
               AND t.tgname = ANY (%(triggers)s::text[])),
       has_table_privilege(c.oid, 'TRIGGER')
FROM d JOIN pg_class c ON c.oid = d.oid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
ORDER BY 1, 2
"""
    ).format()


def triggers_running() -> sql.Composed:
    """(schema, table, trigger) of every trigger that runs function %s.%s(): on the source,
    its partitions, and tables detached from it since."""
    return sql.SQL(
        "SELECT n.nspname, c.relname, t.tgname FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace "
        "WHERE pn.nspname = %s AND p.proname = %s AND p.pronargs = 0 AND NOT t.tgisinternal"
    ).format()


def drop_triggers(source: Rel, names: Sequence[str]) -> sql.Composed:
    return sql.SQL("; ").join(
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(Name(n), ident(source)) for n in names
    )


def drop_function(function: Rel) -> sql.Composed:
    return sql.SQL("DROP FUNCTION IF EXISTS {}()").format(ident(function))


def drop_table(rel: Rel) -> sql.Composed:
    return sql.SQL("DROP TABLE IF EXISTS {}").format(ident(rel))


def backfill(queue: Rel, source: Rel, keys: Sequence[str]) -> sql.Composed:
    """Queue every existing row; run after the triggers exist, in the same transaction."""
    return sql.SQL("INSERT INTO {} ({k}) SELECT {k} FROM {}").format(
        ident(queue), ident(source), k=_cols(keys)
    )


# --- claim and process -----------------------------------------------------------------


def claim(queue: Rel, failed: Rel, keys: Sequence[str], only: bool = False) -> sql.Composed:
    """Claim up to %(limit)s queue rows and dequeue their keys; the result is one row per
    key: the key columns, attempts so far, oldest queued_at.

    SKIP LOCKED passes over rows other workers hold; the per-key transaction advisory lock
    (vectorizer id, hash of the key) stops two workers taking duplicates of one key. The
    key's other queue rows are dequeued too, except those another worker holds (they
    come back later; the chunk hashes make that cheap). The claim reads no source row: a
    transaction holding a claim lasts as long as the model takes, and must hold no lock on
    the application's table meanwhile (``read_rows`` reads them, in a statement of its own).
    ``only``: claim just the keys in %(only)s (a jsonb array of key objects).
    """
    k = _cols(keys)
    only_sql: sql.Composable = sql.SQL("")
    if only:
        only_sql = sql.SQL(
            "AND ({k}) IN (SELECT {k} FROM jsonb_populate_recordset(NULL::{queue}, %(only)s))"
        ).format(k=k, queue=ident(queue))
    return sql.SQL(
        """
WITH cand AS MATERIALIZED (
    SELECT {k} FROM {queue}
    WHERE (retry_after IS NULL OR retry_after <= now()) {only}
    ORDER BY queued_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked AS MATERIALIZED (
    SELECT DISTINCT {k} FROM cand
), locked AS MATERIALIZED (
    SELECT {k} FROM picked
    WHERE pg_try_advisory_xact_lock(%(vid)s::int4, hashtext(ROW({k})::text))
), gone AS (
    -- LATERAL: one index probe per locked key; a join would scan the whole queue per batch
    DELETE FROM {queue} WHERE ctid = ANY (ARRAY(
        SELECT x.ctid FROM locked AS l CROSS JOIN LATERAL (
            SELECT qq.ctid FROM {queue} AS qq WHERE {qq_l} FOR UPDATE OF qq SKIP LOCKED) AS x))
    RETURNING {k}, attempts, queued_at
), cleared AS (
    DELETE FROM {failed} AS f USING locked AS l WHERE {f_l}
)
SELECT {k}, max(attempts) AS attempts, min(queued_at) AS queued_at FROM gone GROUP BY {k} ORDER BY {k}
"""
    ).format(
        k=k, queue=ident(queue), failed=ident(failed),
        qq_l=_match("qq", "l", keys), f_l=_match("f", "l", keys), only=only_sql,
    )


def read_rows(queue: Rel, source: Rel, keys: Sequence[str], columns: Sequence[str] | None,
              where: sql.Composable | None = None) -> sql.Composed:
    """The source rows of the keys in %(keys)s (a jsonb array of key objects, typed back by
    the queue's row type), in their order: position, whether the row is gone, then the
    source columns (NULL for a gone row) and, if ``where`` is given, whether the row passes
    it (column ``pgvz_where``). Run apart from the claim, in a statement of its own, so the
    lock it takes on the source lasts milliseconds, not a model call."""
    src_cols = sql.SQL("s.*") if columns is None else _cols(columns, "s")
    if where is not None:
        src_cols = sql.SQL("{}, {} AS pgvz_where").format(src_cols, where_test(where))
    return sql.SQL(
        "SELECT e.pgvz_i, s.{first} IS NULL AS pgvz_gone, {src_cols} "
        "FROM jsonb_array_elements(%(keys)s) WITH ORDINALITY AS e(pgvz_key, pgvz_i) "
        "CROSS JOIN LATERAL jsonb_populate_record(NULL::{queue}, e.pgvz_key) AS k "
        "LEFT JOIN {source} AS s ON {s_k} ORDER BY e.pgvz_i"
    ).format(first=Name(keys[0]), src_cols=src_cols, queue=ident(queue), source=ident(source),
             s_k=_match("s", "k", keys))


def where_test(where: sql.Composable) -> sql.Composed:
    """The vectorizer's ``where`` filter for source row ``s``, evaluated in a scope that
    holds only the source's columns (so ``id`` is never ambiguous with the queue's)."""
    return sql.SQL("(SELECT ({}) IS TRUE FROM (SELECT s.*) AS pgvz_row)").format(where)


def record_failures(queue: Rel, failed: Rel, keys: Sequence[str]) -> sql.Composed:
    """Re-queue failed keys with attempts raised and an exponential backoff, or move those
    that reached %(max_attempts)s to the failed table. %(rows)s is a jsonb array of objects
    with the key columns, attempts, queued_at and last_error; jsonb_populate_recordset
    turns them back into the queue's own column types."""
    k = _cols(keys)
    return sql.SQL(
        """
WITH f AS (
    SELECT {k}, attempts, queued_at, last_error
    FROM jsonb_populate_recordset(NULL::{queue}, %(rows)s)
), moved AS (
    INSERT INTO {failed} ({k}, attempts, last_error, first_queued_at, failed_at)
    SELECT {k}, attempts, last_error, queued_at, now() FROM f WHERE attempts >= %(max_attempts)s
    ON CONFLICT ({k}) DO UPDATE SET attempts = excluded.attempts,
        last_error = excluded.last_error, failed_at = excluded.failed_at
)
INSERT INTO {queue} ({k}, queued_at, attempts, retry_after, last_error)
SELECT {k}, queued_at, attempts,
       now() + make_interval(secs => least(%(backoff_max)s::float8,
                                          %(backoff_base)s::float8 * power(2, attempts - 1))),
       last_error
FROM f WHERE attempts < %(max_attempts)s
"""
    ).format(k=k, queue=ident(queue), failed=ident(failed))


def queue_state(inbox: Rel, queue: Rel, failed: Rel, first_key: str) -> sql.Composed:
    """Why a claim came back empty: nothing queued, all in backoff, or held by other workers.
    Keys still in the inbox count as queued and claimable."""
    return sql.SQL(
        """
WITH ib AS (
    SELECT coalesce(sum(cardinality({k})), 0)::bigint AS n, min(queued_at) AS oldest FROM {inbox}
)
SELECT count(q.*) + ib.n AS rows,
       count(q.*) FILTER (WHERE q.retry_after IS NULL OR q.retry_after <= now()) + ib.n AS claimable,
       count(q.*) FILTER (WHERE q.retry_after > now()) AS retrying,
       least(min(q.queued_at), ib.oldest) AS oldest,
       min(q.retry_after) FILTER (WHERE q.retry_after > now()) AS next_retry,
       (SELECT count(*) FROM {failed}) AS failed
FROM ib LEFT JOIN {queue} AS q ON true
GROUP BY ib.n, ib.oldest
"""
    ).format(inbox=ident(inbox), queue=ident(queue), failed=ident(failed), k=Name(first_key))


def pending_rows(inbox: Rel, queue: Rel, keys: Sequence[str]) -> sql.Composed:
    """Every pending key, oldest first, up to %s rows: queue rows, then inbox keys (not yet
    moved to the queue: attempts 0)."""
    return sql.SQL(
        "SELECT * FROM ("
        "SELECT {k}, queued_at, attempts, retry_after, last_error FROM {q} "
        "UNION ALL "
        "SELECT {uk}, t.queued_at, 0, NULL::timestamptz, NULL::text "
        "FROM {i} AS t CROSS JOIN LATERAL unnest({tk}) AS u({k})"
        ") AS p ORDER BY queued_at, {k} LIMIT %s"
    ).format(k=_cols(keys), uk=_cols(keys, "u"), tk=_cols(keys, "t"), q=ident(queue), i=ident(inbox))


def failed_rows(failed: Rel, keys: Sequence[str]) -> sql.Composed:
    return sql.SQL(
        "SELECT {k}, attempts, last_error, first_queued_at, failed_at FROM {f} ORDER BY failed_at, {k}"
    ).format(k=_cols(keys), f=ident(failed))


def retry_failed(queue: Rel, failed: Rel, keys: Sequence[str]) -> sql.Composed:
    """Move every failed key back to the queue with fresh attempts."""
    return sql.SQL(
        "WITH moved AS (DELETE FROM {f} RETURNING {k}) "
        "INSERT INTO {q} ({k}) SELECT {k} FROM moved"
    ).format(k=_cols(keys), f=ident(failed), q=ident(queue))


# --- destination (the Timescale Vector collection layout) -------------------------------


def create_collection(table: Rel, dimensions: int) -> sql.Composed:
    """id uuid, metadata jsonb, contents text, embedding vector(n): Timescale Vector's layout."""
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {t} ("
        "id uuid PRIMARY KEY, metadata jsonb, contents text, embedding vector({n}) NOT NULL); "
        # containment filters and the per-key delete both use @>
        "CREATE INDEX IF NOT EXISTS {ix} ON {t} USING gin (metadata jsonb_path_ops)"
    ).format(
        t=ident(table), n=sql.Literal(int(dimensions)),
        ix=_index_name(table, "_metadata_idx"),
    )


def collection_dimensions() -> sql.Composed:
    """The n of the embedding vector(n) column, or NULL if the table does not exist."""
    return sql.SQL(
        "SELECT a.atttypmod FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attname = 'embedding' AND NOT a.attisdropped"
    ).format()


def collection_delete_by_metadata(table: Rel) -> sql.Composed:
    """Delete rows whose metadata contains any of the objects in %s (a jsonb[] array)."""
    return sql.SQL("DELETE FROM {} WHERE metadata @> ANY (%s::jsonb[])").format(ident(table))


def collection_delete_ids(table: Rel) -> sql.Composed:
    return sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(ident(table))


def collection_get_ids(table: Rel) -> sql.Composed:
    """The rows whose id is in %s (a uuid[]): id, contents, metadata."""
    return sql.SQL("SELECT id, contents, metadata FROM {} WHERE id = ANY(%s)").format(ident(table))


def collection_copy(table: Rel) -> sql.Composed:
    """Binary COPY: about five times text COPY for vector rows (FACTS.md). COPY takes no
    parameters, so its names are plain identifiers (no ``%`` doubling)."""
    return sql.SQL(
        "COPY {} (id, metadata, contents, embedding) FROM STDIN WITH (FORMAT BINARY)"
    ).format(sql.Identifier(*table))


# --- the built-in pipeline's destination ----------------------------------------------

DEST_FIXED = ("id", "metadata", "contents", "embedding", "chunk_seq", "chunk_hash", "model")


def create_destination(
    dest: Rel, source: Rel, src_keys: Sequence[str], dest_keys: Sequence[str], dimensions: int
) -> sql.Composed:
    """The collection layout (id uuid, metadata jsonb, contents text, embedding vector(n))
    plus the source key (typed as in the source, via CREATE TABLE AS), the chunk's
    position and hash, and the model (with the template and chunking) that made the vector.
    The key index serves the per-key delete of the worker."""
    keys = sql.SQL(", ").join(
        sql.SQL("s.{} AS {}").format(Name(k), Name(d))
        for k, d in zip(src_keys, dest_keys)
    )
    return sql.SQL(
        "CREATE TABLE {dest} AS SELECT NULL::uuid AS id, NULL::jsonb AS metadata, "
        "NULL::text AS contents, NULL::vector({n}) AS embedding, {keys}, "
        "NULL::integer AS chunk_seq, NULL::text AS chunk_hash, NULL::text AS model "
        "FROM {source} AS s WITH NO DATA; "
        "ALTER TABLE {dest} ADD PRIMARY KEY (id), "
        "ALTER COLUMN metadata SET NOT NULL, ALTER COLUMN metadata SET DEFAULT '{{}}', "
        "ALTER COLUMN embedding SET NOT NULL, ALTER COLUMN chunk_seq SET NOT NULL, "
        "ALTER COLUMN chunk_hash SET NOT NULL; "
        "CREATE INDEX ON {dest} ({dk}); "
        "CREATE INDEX ON {dest} USING gin (metadata jsonb_path_ops)"
    ).format(dest=ident(dest), source=ident(source), keys=keys, n=sql.Literal(int(dimensions)),
             dk=_cols(dest_keys))


def column_types() -> sql.Composed:
    """Column name -> type OID of a table (binary COPY needs the exact types)."""
    return sql.SQL(
        "SELECT a.attname, a.atttypid FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped"
    ).format()


def _key_match(src_keys: Sequence[str], dest_keys: Sequence[str]) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("d.{} = k.{}").format(Name(d), Name(s))
        for s, d in zip(src_keys, dest_keys)
    )


def destination_rows(dest: Rel, queue: Rel, src_keys: Sequence[str], dest_keys: Sequence[str]) -> sql.Composed:
    """The stored chunks of the keys in %(keys)s (a jsonb array of key objects; the queue's
    row type turns them back into the key's own types): key, id, seq, hash, metadata.
    LATERAL makes it one index probe per key: a join would scan the whole destination."""
    return sql.SQL(
        "SELECT {dk}, d.id, d.chunk_seq, d.chunk_hash, d.metadata "
        "FROM jsonb_populate_recordset(NULL::{q}, %(keys)s) AS k "
        # OFFSET 0 keeps the planner from flattening it back into a join
        "CROSS JOIN LATERAL (SELECT * FROM {dest} AS d WHERE {m} OFFSET 0) AS d"
    ).format(dk=_cols(dest_keys, "d"), q=ident(queue), dest=ident(dest), m=_key_match(src_keys, dest_keys))


def destination_delete(dest: Rel, queue: Rel, src_keys: Sequence[str], dest_keys: Sequence[str]) -> sql.Composed:
    """Delete every stored chunk of the keys in %(keys)s (one index probe per key)."""
    return sql.SQL(
        "DELETE FROM {dest} WHERE ctid = ANY (ARRAY("
        "SELECT x.ctid FROM jsonb_populate_recordset(NULL::{q}, %(keys)s) AS k "
        "CROSS JOIN LATERAL (SELECT d.ctid FROM {dest} AS d WHERE {m} OFFSET 0) AS x))"
    ).format(q=ident(queue), dest=ident(dest), m=_key_match(src_keys, dest_keys))


def lock_for_writing(rel: Rel) -> sql.Composed:
    """The lock a DELETE or COPY would take, taken before either runs anything."""
    return sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(ident(rel))


def destination_embeddings_of(dest: Rel) -> sql.Composed:
    """Stored vectors by id, to reuse for chunks whose hash did not change."""
    return sql.SQL("SELECT id, embedding FROM {} WHERE id = ANY(%s)").format(ident(dest))


def destination_copy(dest: Rel, dest_keys: Sequence[str], *, model: bool = True) -> sql.Composed:
    """COPY takes no parameters, so its names are plain identifiers (no ``%`` doubling).
    ``model``: the destination has the model column (one made before it has not, until the
    next create() adds it)."""
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in dest_keys)
    return sql.SQL(
        "COPY {} (id, metadata, contents, embedding, {}, chunk_seq, chunk_hash{}) "
        "FROM STDIN WITH (FORMAT BINARY)"
    ).format(sql.Identifier(*dest), keys, sql.SQL(", model" if model else ""))


def add_model_column(dest: Rel, model: str | None) -> sql.Composed:
    """The model column on a destination made before it existed: its vectors get the model
    they were made with (the stored one) as PostgreSQL's stored default for existing rows,
    without a rewrite of the table; the default is dropped after, so that a writer that does
    not say its model leaves NULL rather than a wrong one."""
    return sql.SQL(
        "ALTER TABLE {d} ADD COLUMN model text DEFAULT {m}; ALTER TABLE {d} ALTER COLUMN model DROP DEFAULT"
    ).format(d=ident(dest), m=sql.Literal(model))


def destination_models(dest: Rel) -> sql.Composed:
    """(model, chunks) of a destination, most first: more than one row means it mixes models."""
    return sql.SQL("SELECT model, count(*) FROM {} GROUP BY model ORDER BY count(*) DESC, model").format(
        ident(dest))


def count_rows(rel: Rel) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}").format(ident(rel))


def count_distinct(rel: Rel, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM (SELECT DISTINCT {} FROM {}) AS d").format(
        _cols(columns), ident(rel)
    )


def count_where(source: Rel, where: sql.Composable | None) -> sql.Composed:
    """Source rows the vectorizer should cover: those passing its filter."""
    if where is None:
        return count_rows(source)
    return sql.SQL("SELECT count(*) FROM {} WHERE ({}) IS TRUE").format(ident(source), where)


def reconcile_gone(queue: Rel, dest: Rel, source: Rel, keys: Sequence[str], dest_keys: Sequence[str]) -> sql.Composed:
    """Queue each destination key that has no source row and is not queued already (its
    rows went without a trigger seeing them: a dropped partition, triggers disabled). Keys
    are compared as text, as the trigger does: no equality operator from outside
    pg_catalog is needed."""
    return sql.SQL(
        "INSERT INTO {queue} ({k}) SELECT DISTINCT {dk} FROM {dest} AS d "
        "WHERE NOT EXISTS (SELECT 1 FROM {source} AS s WHERE {in_source}) "
        "AND NOT EXISTS (SELECT 1 FROM {queue} AS q WHERE {queued})"
    ).format(queue=ident(queue), k=_cols(keys), dk=_cols(dest_keys, "d"), dest=ident(dest),
             source=ident(source), in_source=_match_as_text("s", keys, "d", dest_keys),
             queued=_match_as_text("q", keys, "d", dest_keys))


def truncated_keys(queue: Rel, dest: Rel, source: Rel, keys: Sequence[str], dest_keys: Sequence[str]) -> sql.Composed:
    """A TRUNCATE came through the WAL, which names no key: queue every destination key and
    every queued key that has no source row now. Queued keys too, and with no "not queued
    already" filter: a worker may hold one of them in a claim, its source row read before
    the TRUNCATE, and would write its chunks back after; a second queue row outlives that
    claim and removes them."""
    return sql.SQL(
        "INSERT INTO {queue} ({k}) SELECT DISTINCT {dk} FROM {dest} AS d "
        "WHERE NOT EXISTS (SELECT 1 FROM {source} AS s WHERE {in_source}) "
        "UNION SELECT {qk} FROM {queue} AS q WHERE NOT EXISTS (SELECT 1 FROM {source} AS s WHERE {q_in_source})"
    ).format(queue=ident(queue), k=_cols(keys), dk=_cols(dest_keys, "d"), dest=ident(dest),
             source=ident(source), in_source=_match_as_text("s", keys, "d", dest_keys),
             qk=_cols(keys, "q"), q_in_source=_match_as_text("s", keys, "q", keys))


def reconcile_missing(queue: Rel, dest: Rel, source: Rel, keys: Sequence[str], dest_keys: Sequence[str],
                      where: sql.Composable | None) -> sql.Composed:
    """Queue each source key (passing the filter) that has no destination row and is not
    queued already (its changes went without a trigger seeing them). Rows whose text is
    empty have no destination row by design: they come back each time, and cost a
    no-op each."""
    filt = sql.SQL("") if where is None else sql.SQL(" AND ({}) IS TRUE").format(where)
    return sql.SQL(
        "INSERT INTO {queue} ({k}) SELECT {sk} FROM {source} AS s "
        "WHERE NOT EXISTS (SELECT 1 FROM {dest} AS d WHERE {in_dest}) "
        "AND NOT EXISTS (SELECT 1 FROM {queue} AS q WHERE {queued}){filt}"
    ).format(queue=ident(queue), k=_cols(keys), sk=_cols(keys, "s"), dest=ident(dest),
             source=ident(source), in_dest=_match_as_text("s", keys, "d", dest_keys),
             queued=_match_as_text("s", keys, "q", keys), filt=filt)


def check_where(source: Rel, where: sql.Composable) -> sql.Composed:
    """Plan and run the filter over no rows: a syntax or column error shows up now."""
    return sql.SQL("SELECT ({}) IS TRUE FROM {} LIMIT 0").format(where, ident(source))


def where_probe(source: Rel, where: sql.Composable) -> sql.Composed:
    """A partial index over the filter on an empty temporary copy of the source's columns:
    PostgreSQL refuses one whose predicate is not immutable (run and rolled back)."""
    return sql.SQL(
        "CREATE TEMPORARY TABLE pgvz_where_probe (LIKE {src}) ON COMMIT DROP; "
        "CREATE INDEX ON pgvz_where_probe ((1)) WHERE ({where})"
    ).format(src=ident(source), where=where)


def create_hnsw_index(dest: Rel) -> sql.Composed:
    return sql.SQL(
        "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_cosine_ops)"
    ).format(_index_name(dest, "_hnsw"), ident(dest))


def create_time_index(dest: Rel) -> sql.Composed:
    """The time inside the v1 ids, for start/end filters: a narrow time range is then read
    from this index and sorted exactly, where the HNSW scan would walk the graph for it."""
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (uuid_extract_timestamp(id))").format(
        _index_name(dest, "_time"), ident(dest))


def create_fts_index(dest: Rel) -> sql.Composed:
    return sql.SQL(
        "CREATE INDEX IF NOT EXISTS {} ON {} USING gin (to_tsvector('english', coalesce(contents, '')))"
    ).format(_index_name(dest, "_fts"), ident(dest))


def enable_iterative_scans() -> sql.Composed:
    """Filtered HNSW scans continue until k rows pass; for the session, or with
    %(local)s for the current transaction only. relaxed_order: better recall than
    strict_order (0.959 against 0.931 at ef_search 40 with a 1-in-10 filter, in
    benchmarks/search_latency.py); ``search`` sorts its rows again."""
    return sql.SQL("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', %(local)s)").format()


def search(rel: Rel, *, hybrid: bool, time_range: bool, vectors: bool = False) -> sql.Composed:
    """k nearest chunks by cosine distance, filtered by metadata containment
    (%(filter)s, NULL for none) and, with ``time_range``, by the time inside v1 ids
    (%(start)s inclusive, %(end)s exclusive, either NULL). ``hybrid`` fuses the vector
    ranking with PostgreSQL full-text ranking (%(text)s) by reciprocal rank fusion over
    the top %(pool)s of each; rows are ordered by ``score``. ``vectors`` (not hybrid): the
    stored embedding too, for maximal marginal relevance."""
    conds = [sql.SQL("(%(filter)s::jsonb IS NULL OR d.metadata @> %(filter)s::jsonb)")]
    if time_range:
        conds.append(sql.SQL(
            "(%(start)s::timestamptz IS NULL OR uuid_extract_timestamp(d.id) >= %(start)s::timestamptz) "
            "AND (%(end)s::timestamptz IS NULL OR uuid_extract_timestamp(d.id) < %(end)s::timestamptz)"
        ))
    where = sql.SQL(" AND ").join(conds)
    if not hybrid:
        # the outer ORDER BY: an iterative scan in relaxed order may hand rows over slightly
        # out of order (the subquery's LIMIT keeps it from being flattened away)
        return sql.SQL(
            "SELECT * FROM (SELECT d.embedding <=> %(q)s AS distance, d.contents, d.metadata, d.id{vec} "
            "FROM {rel} AS d WHERE {where} ORDER BY d.embedding <=> %(q)s LIMIT %(k)s) AS r "
            "ORDER BY distance"
        ).format(rel=ident(rel), where=where, vec=sql.SQL(", d.embedding" if vectors else ""))
    return sql.SQL(
        """
WITH vec AS (
    SELECT d.id, row_number() OVER (ORDER BY d.embedding <=> %(q)s) AS r
    FROM {rel} AS d WHERE {where} ORDER BY d.embedding <=> %(q)s LIMIT %(pool)s
), txt AS (
    SELECT d.id, row_number() OVER (
        ORDER BY ts_rank_cd(to_tsvector('english', coalesce(d.contents, '')), query) DESC) AS r
    FROM {rel} AS d, plainto_tsquery('english', %(text)s) AS query
    WHERE {where} AND to_tsvector('english', coalesce(d.contents, '')) @@ query
    ORDER BY r LIMIT %(pool)s
), fused AS (
    SELECT coalesce(vec.id, txt.id) AS id,
           coalesce(1.0 / (60 + vec.r), 0) + coalesce(1.0 / (60 + txt.r), 0) AS score
    FROM vec FULL JOIN txt ON vec.id = txt.id
)
SELECT d.embedding <=> %(q)s AS distance, d.contents, d.metadata, d.id, f.score
FROM fused AS f JOIN {rel} AS d ON d.id = f.id
ORDER BY f.score DESC, distance LIMIT %(k)s
"""
    ).format(rel=ident(rel), where=where)


# --- privileges -------------------------------------------------------------------------


def grant_worker(role: str, source: Rel, queue_tables: Sequence[Rel], dest: Rel | None,
                 wal_follow: bool = True) -> sql.Composed:
    """What a worker role needs, and nothing more: read the catalog and the source, work
    the queue tables (FOR UPDATE needs UPDATE), and replace rows in the destination; and
    record the WAL capture's progress (REPLICATION itself is a role attribute, not a grant)."""
    r = Name(role)
    parts = [
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(Name(CATALOG[0]), r),
        sql.SQL("GRANT SELECT, UPDATE (last_success) ON {} TO {}").format(ident(CATALOG), r),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(ident(IN_FLIGHT), r),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(ident(WAL_PROGRESS), r),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(Name(source[0]), r),
        sql.SQL("GRANT SELECT ON {} TO {}").format(ident(source), r),
    ]
    if wal_follow:  # (made by create() since pgvz_nb kept it)
        parts.append(sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(ident(WAL_FOLLOW), r))
    for rel in queue_tables:
        parts.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(Name(rel[0]), r))
        parts.append(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(ident(rel), r))
    if dest is not None:
        parts.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(Name(dest[0]), r))
        parts.append(sql.SQL("GRANT SELECT, INSERT, DELETE ON {} TO {}").format(ident(dest), r))
    return sql.SQL("; ").join(parts)


# --- migration (a shadow destination, cut over by renaming) ----------------------------


def catalog_destination_of() -> sql.Composed:
    """The destination vectorizer %s writes now, its catalog row held FOR KEY SHARE to the end
    of the writer's transaction: a cutover (which takes the row FOR UPDATE before renaming
    the tables) waits for this batch, or this batch sees where the cutover moved it. The
    weakest row lock that conflicts with FOR UPDATE; a worker role may take it (its grant
    of UPDATE (last_success))."""
    return sql.SQL(
        "SELECT config->'pipeline'->'destination' FROM {} WHERE id = %s FOR KEY SHARE"
    ).format(ident(CATALOG))


def catalog_id_of() -> sql.Composed:
    """The id of the catalog row called %s now (a search checks it after reading the
    destination by name, in the same transaction: see Vectorizer.search)."""
    return sql.SQL("SELECT id FROM {} WHERE name = %s").format(ident(CATALOG))


def catalog_lock_rows() -> sql.Composed:
    """The catalog rows of ids %s, FOR UPDATE, in id order (two cutovers cannot deadlock)."""
    return sql.SQL("SELECT id FROM {} WHERE id = ANY(%s) ORDER BY id FOR UPDATE").format(ident(CATALOG))


def catalog_rename() -> sql.Composed:
    return sql.SQL("UPDATE {} SET name = %s WHERE id = %s").format(ident(CATALOG))


def catalog_get_by_id() -> sql.Composed:
    return sql.SQL(
        "SELECT id, name, source_schema, source_table, queue_schema, queue_table, config, created_at "
        "FROM {} WHERE id = %s"
    ).format(ident(CATALOG))


def lock_exclusive(rels: Sequence[Rel]) -> sql.Composed:
    """ACCESS EXCLUSIVE on the tables a cutover renames, in the order given: readers of the
    destination wait for the commit (milliseconds), then read the table that has its name."""
    return sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        sql.SQL(", ").join(ident(r) for r in rels))


def one_round_trip(statements: Sequence[sql.Composable]) -> sql.Composed:
    """Statements sent as one (no parameters): a cutover's lock, renames and grants."""
    return sql.SQL("; ").join(statements)


def rename_table(rel: Rel, new: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(rel), Name(new))


def index_name(rel: Rel, suffix: str) -> str:
    """The name of pgvz_nb's index ``suffix`` ("_hnsw", "_time", "_fts") on ``rel``."""
    return cut(rel[1], 50) + suffix


INDEX_KINDS = ("_hnsw", "_time", "_fts")


def rename_index(schema: str, old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER INDEX {} RENAME TO {}").format(Name(schema, old), Name(new))


def table_grants() -> sql.Composed:
    """(role name, NULL for PUBLIC; privilege) of every grant on table %s.%s to others than
    its owner: given to the shadow too, so that whoever reads the destination reads it after
    the cutover."""
    return sql.SQL(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "CROSS JOIN LATERAL aclexplode(c.relacl) AS a "
        "WHERE n.nspname = %s AND c.relname = %s AND a.grantee <> c.relowner ORDER BY 1, 2"
    ).format()


#: what table_grants may return, so a privilege name is never taken from a query into SQL text
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN")


def grant_on(privilege: str, rel: Rel, role: str | None) -> sql.Composed:
    if privilege not in TABLE_PRIVILEGES:
        raise ValueError(f"not a table privilege: {privilege!r}")
    return sql.SQL("GRANT {} ON {} TO {}").format(
        sql.SQL(privilege), ident(rel), sql.SQL("PUBLIC") if role is None else Name(role))


def revoke_on(privilege: str, rel: Rel, role: str | None) -> sql.Composed:
    if privilege not in TABLE_PRIVILEGES:
        raise ValueError(f"not a table privilege: {privilege!r}")
    return sql.SQL("REVOKE {} ON {} FROM {}").format(
        sql.SQL(privilege), ident(rel), sql.SQL("PUBLIC") if role is None else Name(role))


def destination_security() -> sql.Composed:
    """(row-level security on, policies, column grants) of table %s.%s: what a migration's
    switch cannot move with the table's name."""
    return sql.SQL(
        "SELECT c.relrowsecurity OR c.relforcerowsecurity, "
        "EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid), "
        "EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
    ).format()


def dependent_views() -> sql.Composed:
    """Views (and materialized views) reading table %s.%s: they name it by oid, so after a
    cutover they would go on showing the old vectors. A cutover refuses while there are any."""
    return sql.SQL(
        "SELECT DISTINCT vn.nspname || '.' || v.relname FROM pg_depend d "
        "JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class "
        "JOIN pg_namespace vn ON vn.oid = v.relnamespace "
        "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace "
        "WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass "
        "AND tn.nspname = %s AND t.relname = %s AND v.oid <> t.oid ORDER BY 1"
    ).format()


def source_scan(source: Rel, keys: Sequence[str], columns: Sequence[str],
                where: sql.Composable | None) -> sql.Composed:
    """Key and read columns of every source row passing ``where``, for an estimate (read
    through a server-side cursor)."""
    cols = sql.SQL(", ").join([*(Name(k) for k in keys), *(Name(c) for c in columns)])
    return sql.SQL("SELECT {} FROM {}{}").format(
        cols, ident(source), sql.SQL(" WHERE ({}) IS TRUE").format(where) if where is not None else sql.SQL(""))


# --- WAL capture (logical decoding) ---------------------------------------------------

#: One publication per database: the tables of every ``capture="wal"`` vectorizer.
PUBLICATION = "pgvz_nb"
#: Where the capture loop records how far it has queued: one row per slot, written in the
#: same transaction as the keys it queued, so that at a restart the progress and the
#: queue agree whatever the slot says (its advance is not durable until a checkpoint).
WAL_PROGRESS: Rel = ("pgvz", "wal_progress")
WAL_FOLLOW: Rel = ("pgvz", "wal_follow")
# pg_try_advisory_xact_lock key of the capture loop: one consumer of the slot at a time
CAPTURE_LOCK_KEY = 0x7067767A_00000002


def wal_readiness() -> sql.Composed:
    """(wal_level, may this role use replication slots, may it create a publication)."""
    return sql.SQL(
        "SELECT current_setting('wal_level'), "
        "(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), "
        "has_database_privilege(current_database(), 'CREATE')"
    ).format()


def replica_identity() -> sql.Composed:
    """(relreplident, the columns of the replica identity index or of the primary key) of
    table %(schema)s.%(table)s: what an UPDATE's and a DELETE's WAL record says about the
    old row, and so which keys logical decoding can give for it. A DEFERRABLE primary key
    is no replica identity (PostgreSQL uses only an immediate one)."""
    return sql.SQL(
        """SELECT c.relreplident,
       (SELECT array_agg(a.attname::text ORDER BY k.i)
        FROM pg_index x CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
        WHERE x.indrelid = c.oid AND CASE WHEN c.relreplident = 'i' THEN x.indisreplident
                                          ELSE x.indisprimary AND x.indimmediate END)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s"""
    ).format()


def create_wal_progress() -> sql.Composed:
    return sql.SQL(
        """CREATE TABLE IF NOT EXISTS {} (
            slot       text PRIMARY KEY,
            lsn        pg_lsn NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )"""
    ).format(ident(WAL_PROGRESS))


def publication_exists() -> sql.Composed:
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %s)").format()


def create_publication() -> sql.Composed:
    """Empty at first; tables are added one by one. Not publish_via_partition_root: with it,
    PostgreSQL sends no TRUNCATE of a single partition at all (pgoutput skips a partition
    whose changes it publishes as the root's), and that partition's rows would keep their
    embeddings. Without it a partition's changes come under the partition's name, current
    and future partitions included, and the capture routes them to the tree's root."""
    return sql.SQL(
        "CREATE PUBLICATION {} WITH (publish = 'insert, update, delete, truncate', "
        "publish_via_partition_root = false)"
    ).format(Name(PUBLICATION))


def publication_has_table() -> sql.Composed:
    """Whether %(schema)s.%(table)s itself is in publication %(pub)s (pg_publication_tables
    lists a partitioned table's leaves instead)."""
    return sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid "
        "JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE p.pubname = %(pub)s AND n.nspname = %(schema)s AND c.relname = %(table)s)"
    ).format()


def publication_via_root() -> sql.Composed:
    """publish_via_partition_root of publication %s (no row: none)."""
    return sql.SQL("SELECT pubviaroot FROM pg_publication WHERE pubname = %s").format()


def publication_leaves() -> sql.Composed:
    """See create_publication: a publication made with publish_via_partition_root (by a
    build of pgvz_nb that did) is set back."""
    return sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = false)").format(Name(PUBLICATION))


def publication_add_table(source: Rel) -> sql.Composed:
    """The caller holds SHARE on the table (``lock_out_writers``)."""
    return sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(Name(PUBLICATION), ident(source))


def lock_out_writers(source: Rel) -> sql.Composed:
    """SHARE: waits for the transactions writing the table to end (within the caller's
    lock_timeout, see queue.locked) and holds new writers off until commit. A table joins
    the publication under it, as triggers are created under SHARE ROW EXCLUSIVE: a
    transaction that wrote before the table was published and committed after the
    backfill's snapshot would be in neither."""
    return sql.SQL("LOCK TABLE {} IN SHARE MODE").format(ident(source))


def inheritance_children() -> sql.Composed:
    """Inheritance children (not partitions) of %s.%s."""
    return sql.SQL(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n "
        "ON n.oid = p.relnamespace WHERE n.nspname = %s AND p.relname = %s AND p.relkind = 'r'"
    ).format()


def publication_drop_table(source: Rel) -> sql.Composed:
    return sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(Name(PUBLICATION), ident(source))


def drop_publication() -> sql.Composed:
    return sql.SQL("DROP PUBLICATION IF EXISTS {}").format(Name(PUBLICATION))


def slot_info() -> sql.Composed:
    """(wal_status, bytes of WAL the slot holds back (from its restart_lsn: what the server
    keeps for it), bytes not captured yet (from confirmed_flush_lsn)) of slot %s, or no row."""
    return sql.SQL(
        "SELECT wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = %s"
    ).format()


def create_slot() -> sql.Composed:
    """A logical slot with pgoutput (shipped with PostgreSQL). It waits for the transactions
    running now to end: the caller sets a statement_timeout."""
    return sql.SQL("SELECT lsn FROM pg_create_logical_replication_slot(%s, 'pgoutput')").format()


def drop_slot() -> sql.Composed:
    return sql.SQL(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s"
    ).format()


def try_capture_lock() -> sql.Composed:
    return sql.SQL("SELECT pg_try_advisory_xact_lock({})").format(sql.Literal(CAPTURE_LOCK_KEY))


def wal_progress_get() -> sql.Composed:
    return sql.SQL("SELECT lsn FROM {} WHERE slot = %s").format(ident(WAL_PROGRESS))


def wal_progress_set() -> sql.Composed:
    """Record the capture's progress (%(slot)s, %(lsn)s), in the transaction of the keys."""
    return sql.SQL(
        "INSERT INTO {} (slot, lsn) VALUES (%(slot)s, %(lsn)s::pg_lsn) ON CONFLICT (slot) "
        "DO UPDATE SET lsn = greatest({}.lsn, excluded.lsn), updated_at = now()"
    ).format(ident(WAL_PROGRESS), Name(WAL_PROGRESS[1]))


def wal_progress_delete() -> sql.Composed:
    return sql.SQL("DELETE FROM {} WHERE slot = %s").format(ident(WAL_PROGRESS))


def peek_changes() -> sql.Composed:
    """The slot's changes committed before %(upto)s, without consuming them (never
    pg_logical_slot_get_*: it consumes before the keys are queued). pgoutput protocol 2
    with streaming: a large transaction arrives in chunks while in progress instead of
    being spilled to disk at every peek. No limit on the changes: PostgreSQL checks one
    only after a whole streamed chunk (64 MB), so a limit could end every peek inside the
    same large transaction, before its commit, and the capture would never get past it."""
    return sql.SQL(
        "SELECT data FROM pg_logical_slot_peek_binary_changes(%(slot)s, %(upto)s::pg_lsn, "
        "NULL, 'proto_version', '2', 'publication_names', {pub}, 'streaming', 'on')"
    ).format(pub=sql.Literal(PUBLICATION))


def peek_commit() -> sql.Composed:
    """1 if slot %(slot)s holds, within its next %(rows)s decoded messages, the commit of a
    transaction that changed a published table (pgoutput sends nothing of a transaction
    that changed none, PostgreSQL 15+): a waiting worker's wake-up under WAL capture. A large
    transaction still in progress arrives as stream chunks, not a commit: no wake-up for it."""
    return sql.SQL(
        "SELECT 1 FROM pg_logical_slot_peek_binary_changes(%(slot)s, NULL, %(rows)s, 'proto_version', '2', "
        "'publication_names', {pub}, 'streaming', 'on') WHERE get_byte(data, 0) IN (67, 99) LIMIT 1"
    ).format(pub=sql.Literal(PUBLICATION))


def wal_insert_lsn() -> sql.Composed:
    return sql.SQL("SELECT pg_current_wal_insert_lsn()::text").format()


def advance_slot() -> sql.Composed:
    """After the keys and the progress committed: lets the server recycle the WAL."""
    return sql.SQL("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)").format()


def relation_root() -> sql.Composed:
    """The oid of the top of relation oid %s's tree: its partition root, or the topmost
    parent of an inheritance child (itself if it has none)."""
    return sql.SQL(
        """WITH RECURSIVE up(oid, depth) AS (
    SELECT %s::oid, 0
    UNION ALL
    SELECT i.inhparent, up.depth + 1 FROM up JOIN pg_inherits i ON i.inhrelid = up.oid WHERE up.depth < 100
)
SELECT oid::bigint FROM up ORDER BY depth DESC LIMIT 1"""
    ).format()


def partition_tree() -> sql.Composed:
    """(oid, xmin of its pg_inherits row) of every partition of table oid %s, at any depth.
    The xmin tells a partition detached and attached again (a new row) from one that stayed:
    its rows may have changed while it was out, with no change of theirs published. Catalog
    rows only: no lock on the application's tables."""
    return sql.SQL(
        """WITH RECURSIVE down(oid, x, depth) AS (
    SELECT i.inhrelid, i.xmin::text, 1 FROM pg_inherits i WHERE i.inhparent = %s::oid
    UNION ALL
    SELECT i.inhrelid, i.xmin::text, down.depth + 1 FROM down JOIN pg_inherits i ON i.inhparent = down.oid
    WHERE down.depth < 100
)
SELECT oid::bigint, x FROM down"""
    ).format()


def key_type_drift() -> sql.Composed:
    """(schema, table, column, type wanted, whether it is built in) of each key column of a
    vectorizer's own tables whose type is not its source key column's now (an int key made
    bigint with no trigger to follow it). %(src)s: the source's oid; the parallel arrays
    %(keys)s (source key column), %(schemas)s, %(tables)s, %(cols)s (the table's column for it)
    and %(arrays)s (the inbox holds arrays of keys)."""
    return sql.SQL(
        """SELECT t.s, t.r, t.c, CASE WHEN t.arr THEN k.typ || '[]' ELSE k.typ END, k.builtin
FROM unnest(%(keys)s::text[], %(schemas)s::text[], %(tables)s::text[], %(cols)s::text[], %(arrays)s::bool[])
     AS t(k, s, r, c, arr)
JOIN LATERAL (SELECT format_type(a.atttypid, a.atttypmod) AS typ, ty.typnamespace = 'pg_catalog'::regnamespace AS builtin
              FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
              WHERE a.attrelid = %(src)s::oid AND a.attname = t.k AND a.attnum > 0 AND NOT a.attisdropped) AS k ON true
JOIN pg_namespace n ON n.nspname = t.s
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.r
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = t.c AND a.attnum > 0 AND NOT a.attisdropped
WHERE format_type(a.atttypid, a.atttypmod) <> CASE WHEN t.arr THEN k.typ || '[]' ELSE k.typ END"""
    ).format()


def alter_key_type(rel: Rel, column: str, type_name: str) -> sql.Composed:
    """Give a vectorizer's own key column the source key's new type. ``type_name`` is
    format_type()'s text of a built-in type (key_type_drift checks it is one): PostgreSQL's
    own spelling, a fixed name with at most a numeric modifier, so it goes in as SQL; the
    values go through text, as any key can."""
    return sql.SQL("ALTER TABLE {} ALTER COLUMN {c} TYPE {t} USING {c}::text::{t}").format(
        ident(rel), c=Name(column), t=sql.SQL(type_name))


def relation_by_oid() -> sql.Composed:
    """(oid, schema, name) of table oid %s, if it exists."""
    return sql.SQL(
        "SELECT c.oid::bigint, n.nspname::text, c.relname::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::oid AND c.relkind IN ('r', 'p')"
    ).format()


def relation_by_name() -> sql.Composed:
    """(oid, schema, name) of table %s.%s, if it exists."""
    return sql.SQL(
        "SELECT c.oid::bigint, n.nspname::text, c.relname::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
        "AND c.relkind IN ('r', 'p')"
    ).format()


def catalog_add_backfill() -> sql.Composed:
    """Add tables (%s, a jsonb list of [schema, table]) to the rows vectorizer %s has to queue."""
    return sql.SQL(
        "UPDATE {} SET config = jsonb_set(config, '{{backfill}}', coalesce(config->'backfill', '[]') || %s) "
        "WHERE name = %s"
    ).format(ident(CATALOG))


def create_wal_follow() -> sql.Composed:
    """What the WAL capture keeps of each WAL vectorizer's table (see capture.follow_tables):
    the partitions it had at the last round, and what it could not follow of a DDL. Apart
    from the catalog, so that a worker role (grant_worker) may write it: it may not write the
    catalog's configuration, which the event triggers act on as a superuser."""
    return sql.SQL(
        """CREATE TABLE IF NOT EXISTS {} (
            vectorizer   int PRIMARY KEY REFERENCES {} (id) ON DELETE CASCADE,
            partitions   jsonb,
            follow_error text
        )"""
    ).format(ident(WAL_FOLLOW), ident(CATALOG))


def wal_follow_get() -> sql.Composed:
    """(partitions, follow_error) kept for vectorizer id %s, or no row."""
    return sql.SQL("SELECT partitions, follow_error FROM {} WHERE vectorizer = %s").format(ident(WAL_FOLLOW))


def wal_follow_set_partitions() -> sql.Composed:
    """Vectorizer id %s's table has the partitions %s (jsonb) now."""
    return sql.SQL(
        "INSERT INTO {} (vectorizer, partitions) VALUES (%s, %s) "
        "ON CONFLICT (vectorizer) DO UPDATE SET partitions = EXCLUDED.partitions"
    ).format(ident(WAL_FOLLOW))


def wal_follow_set_error() -> sql.Composed:
    """What the capture could not follow for vectorizer id %s (%s, text; None: nothing now)."""
    return sql.SQL(
        "INSERT INTO {} (vectorizer, follow_error) VALUES (%s, %s) "
        "ON CONFLICT (vectorizer) DO UPDATE SET follow_error = EXCLUDED.follow_error"
    ).format(ident(WAL_FOLLOW))


def may_select() -> sql.Composed:
    """Whether the current role may read table oid %s itself."""
    return sql.SQL("SELECT has_table_privilege(%s::oid, 'SELECT')").format()


def backfill_rows_of(queue: Rel, source: Rel, keys: Sequence[str]) -> sql.Composed:
    """Queue the source's rows that live in the partitions %s (an oid array), read through
    the source: for a role whose grants are on the source only."""
    return sql.SQL("INSERT INTO {} ({k}) SELECT {k} FROM {} WHERE tableoid = ANY (%s::oid[])").format(
        ident(queue), ident(source), k=_cols(keys))


def catalog_backfill_follows() -> sql.Composed:
    """The rows vectorizer id %(id)s has left to queue name its source as %(old)s (a jsonb
    [schema, table]): they are the renamed table's, %(new)s, now (or the next claim would
    find no table of the old name and queue nothing)."""
    return sql.SQL(
        "UPDATE {} SET config = jsonb_set(config, '{{backfill}}', (SELECT jsonb_agg(CASE WHEN e = %(old)s "
        "THEN %(new)s ELSE e END) FROM jsonb_array_elements(config->'backfill') AS e)) "
        "WHERE id = %(id)s AND jsonb_typeof(config->'backfill') = 'array' AND config->'backfill' @> jsonb_build_array(%(old)s)"
    ).format(ident(CATALOG))


def catalog_set_source() -> sql.Composed:
    """Follow a renamed or moved source in the catalog: (schema, table, id)."""
    return sql.SQL("UPDATE {} SET source_schema = %s, source_table = %s WHERE id = %s").format(ident(CATALOG))


def relation_oid() -> sql.Composed:
    return sql.SQL(
        "SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s"
    ).format()


def copy_inbox(inbox: Rel, keys: Sequence[str]) -> sql.Composed:
    """COPY one inbox row per batch of keys, as array literals (see capture.array_literal):
    the whole of a decoded batch is one small row per vectorizer, as a statement's keys are."""
    return sql.SQL("COPY {} ({}) FROM STDIN").format(ident(inbox), _cols(keys))


def wal_server_state() -> sql.Composed:
    return sql.SQL("SELECT pg_current_wal_lsn()::text").format()


def flush_wal() -> sql.Composed:
    """Flush the WAL up to now and return that position (PostgreSQL 17+): logical decoding
    reads flushed WAL only, and a transaction committed with synchronous_commit = off (a
    subscription's apply worker, or an application's) may be visible before its commit
    record is flushed; so the capture would miss a change the caller can already see. A
    non-transactional logical message with flush, which pgoutput does not send on."""
    return sql.SQL("SELECT pg_logical_emit_message(false, 'pgvz_nb', '', true)::text").format()


def restart_lag() -> sql.Composed:
    """(bytes from slot %s's restart_lsn to the WAL's end, may this role log a standby
    snapshot) (PostgreSQL 16+): a peek decodes all of it, returning only what follows
    confirmed_flush_lsn, and the slot holds it back."""
    return sql.SQL(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, "
        "has_function_privilege('pg_log_standby_snapshot()', 'EXECUTE') AND NOT pg_is_in_recovery() "
        "FROM pg_replication_slots WHERE slot_name = %s"
    ).format()


def log_standby_snapshot() -> sql.Composed:
    """A running-transactions record in the WAL now: decoding past it lets the slot's
    restart_lsn move up to it. The server writes one by itself only every 15 s and at
    checkpoints, so after a bulk change the restart point would stay behind it."""
    return sql.SQL("SELECT pg_log_standby_snapshot()::text").format()


# --- notebook panels --------------------------------------------------------------------


def list_tables() -> sql.Composed:
    """Tables a vectorizer could attach to: ordinary and partitioned, outside system schemas
    and pgvz's own."""
    return sql.SQL(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgvz', 'pg_toast') "
        "AND n.nspname NOT LIKE 'pg\\_temp%%' ORDER BY 1, 2"
    ).format()


def preview_rows(source: Rel) -> sql.Composed:
    return sql.SQL("SELECT * FROM {} LIMIT %s").format(ident(source))


def metadata_values(dest: Rel) -> sql.Composed:
    """Distinct values of metadata key %s (up to %s) as jsonb, so numbers stay numbers in the
    containment filter they go back into."""
    return sql.SQL(
        "SELECT v FROM (SELECT DISTINCT metadata->%s AS v FROM {}) AS d "
        "WHERE v IS NOT NULL ORDER BY v LIMIT %s"
    ).format(ident(dest))


def source_rows(source: Rel, key: str) -> sql.Composed:
    """Source rows whose single-column key is in %s."""
    return sql.SQL("SELECT * FROM {} WHERE {}::text = ANY(%s::text[])").format(ident(source), Name(key))


def sample_vectors(dest: Rel) -> sql.Composed:
    """Up to %s stored vectors, for the 2-D map."""
    return sql.SQL("SELECT id, embedding FROM {} ORDER BY id LIMIT %s").format(ident(dest))


# --- sample data and the demo -----------------------------------------------------------


def create_schema(schema: str) -> sql.Composed:
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Name(schema))


def drop_schema(schema: str) -> sql.Composed:
    """The schema and everything in it (the demo's reset)."""
    return sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Name(schema))


def delete_all(rel: Rel) -> sql.Composed:
    return sql.SQL("DELETE FROM {}").format(ident(rel))


#: the columns of the article's ``blog`` table (benchmarks create it too)
BLOG_DDL_COLUMNS = """
    id              SERIAL PRIMARY KEY NOT NULL,
    title           TEXT NOT NULL,
    author          TEXT NOT NULL,
    contents        TEXT NOT NULL,
    category        TEXT NOT NULL,
    published_time  TIMESTAMPTZ NULL
"""


def create_blog(rel: Rel) -> sql.Composed:
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} (" + BLOG_DDL_COLUMNS + ")").format(ident(rel))


def insert_blog_post(rel: Rel) -> sql.Composed:
    """One post: %s title, author, category, published_time, contents."""
    return sql.SQL(
        "INSERT INTO {} (title, author, category, published_time, contents) VALUES (%s, %s, %s, %s, %s)"
    ).format(ident(rel))


def create_python_docs(rel: Rel) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (id serial PRIMARY KEY, topic text NOT NULL UNIQUE, "
        "title text NOT NULL, body text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
    ).format(ident(rel))


def upsert_python_doc(rel: Rel) -> sql.Composed:
    """One topic: %s topic, title, body; a topic already there takes the new body."""
    return sql.SQL(
        "INSERT INTO {} (topic, title, body) VALUES (%s, %s, %s) "
        "ON CONFLICT (topic) DO UPDATE SET body = excluded.body"
    ).format(ident(rel))
