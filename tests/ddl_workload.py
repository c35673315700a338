"""The DDL property test's workload (tests/test_ddl_property.py).

A model of the application's tables (``Source``: one vectorized table and its twin), one
statement generator per kind of statement (``@kind``), the runner that executes every step
on the vectorized table and on its unvectorized twin (``Runner``), and the oracle that says
what each vectorizer's destination must hold afterwards (``converge``).

Statements are built per side from logical names: ``Ref("a", "t")`` is table t of logical
schema "a", which is one schema for the vectorized tables and another for their twins, so
the same statement runs on both with only the schema swapped.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgvz_nb as pgvz
from pgvz_nb.embedders import HashingEmbedder

SRC, TWIN = "vectorized", "twin"
SUPER, OWNER, WRITER = "superuser", "owner", "writer"
ROLES = (SUPER, OWNER, WRITER)
LOGICAL_SCHEMAS = ("a", "b")
WATCHED = ("title", "body", "cat")  # what the oracle reads: in place again at the end
WIDTH = 100_000  # ids per range partition
BIG = 2**32  # bigint keys start past what an int holds
PAST_INT = 3_000_000_000  # the ids an int key made bigint takes
PGVZ_SUFFIXES = ("_embedding", "_embedding_work_queue", "_embedding_inbox", "_embedding_failed",
                 "_embedding_migration")
# A callback vectorizer has no destination to compare with, so the rows of a table dropped
# under it (the source, a partition, a child) never reach its callback as deletions (the
# README says so for partitions). True: count those mirror rows as lost changes anyway.
CALLBACK_DROPS_REACH_THE_CALLBACK = False
# names pgvz_nb's own SQL uses for aliases and variables, as the application's new columns
TRICKY_COLUMNS = ("t", "n", "o", "s", "c", "d", "present", "queued", "k0", "w0", "attempts",
                  "queued_at", "retry_after", "tg", "v", "src", "note", "extra")


def ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def lit(value: Any) -> sql.Literal:
    return sql.Literal(value)


def comma(parts) -> sql.Composed:
    return sql.SQL(", ").join(list(parts))


def idents(names) -> sql.Composed:
    return comma(ident(n) for n in names)


# --- statements and steps ------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A relation (or, without a table, a schema) named by its logical schema."""

    schema: str
    table: str | None = None

    def resolve(self, schemas: dict[str, str], side: str) -> sql.Identifier:
        actual = schemas[self.schema]
        return ident(actual) if self.table is None else ident(actual, self.table)


@dataclass(frozen=True)
class PerSide:
    """A name of its own on each side (a schema's new name)."""

    vectorized: str
    twin: str

    def resolve(self, schemas: dict[str, str], side: str) -> sql.Identifier:
        return ident(self.vectorized if side == SRC else self.twin)


@dataclass
class Stmt:
    """``template``'s {} filled with ``args``, each Ref resolved for the side it runs on;
    ``copy_rows`` makes it a COPY FROM STDIN fed those rows."""

    template: str
    args: tuple = ()
    copy_rows: list[tuple] | None = None

    def build(self, schemas: dict[str, str], side: str) -> sql.Composed:
        return sql.SQL(self.template).format(
            *(a.resolve(schemas, side) if isinstance(a, (Ref, PerSide)) else a for a in self.args))


def S(template: str, *args: Any) -> Stmt:
    return Stmt(template, args)


@dataclass
class Step:
    """What one role runs in one transaction, on both sides.

    ``finish``: commit, rollback (the application rolls back), prepare (two-phase commit) or
    autocommit (VACUUM). ``refusable``: a documented refusal is allowed ("pgvz_nb: ..." with
    a HINT). ``on_commit`` updates the model once the step took effect on both sides."""

    kind: str
    role: str
    stmts: list[Stmt]
    source: Source | None = None
    finish: str = "commit"
    refusable: bool = False
    on_commit: Callable[[], None] | None = None


# --- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    vkind: str  # pipeline | callback
    key: str  # int | bigint | uuid | text | composite (id int, tag text)
    layout: str  # plain | range (on id) | list (on tag) | inherits
    where: bool = False
    capture: str = "triggers"  # or "wal": logical decoding, no trigger on the table
    migrating: bool = False  # a migration to another model in progress the whole time (two vectorizers)


SHAPES = (
    Shape("pipeline", "int", "plain", where=True),
    Shape("pipeline", "bigint", "range"),
    Shape("pipeline", "uuid", "inherits", where=True),
    Shape("pipeline", "text", "plain"),
    Shape("pipeline", "composite", "list", where=True),
    Shape("pipeline", "int", "range"),
    Shape("pipeline", "int", "inherits"),
    Shape("pipeline", "int", "range", where=True, migrating=True),
    Shape("callback", "int", "plain"),
    Shape("callback", "text", "inherits"),
    Shape("callback", "composite", "range"),
    Shape("callback", "uuid", "plain"),
    Shape("callback", "bigint", "plain"),
    Shape("callback", "composite", "list"),
)


def key_type(key: str, column: str) -> str:
    if key == "composite":
        return "int" if column == "id" else "text"
    return key


@dataclass
class Region:
    """A partition (the default one too) or an inheritance child, attached or detached."""

    schema: str
    table: str
    lo: int | None = None  # range: FOR VALUES FROM (lo) TO (lo + WIDTH); default: where its ids start
    tag: str | None = None  # list: FOR VALUES IN (tag); default: the tag its rows get
    default: bool = False
    attached: bool = True
    used: int = 0  # ids handed out in a range region

    @property
    def ref(self) -> Ref:
        return Ref(self.schema, self.table)

    def bound(self) -> sql.Composable:
        if self.default:
            return sql.SQL("DEFAULT")
        if self.tag is not None:
            return sql.SQL("FOR VALUES IN ({})").format(lit(self.tag))
        return sql.SQL("FOR VALUES FROM ({}) TO ({})").format(lit(self.lo), lit(self.lo + WIDTH))


@dataclass
class Source:
    """One vectorized table and its twin, as the application sees them now."""

    label: str
    shape: Shape
    schema: str
    table: str
    keys: list[str]
    key_types: list[str]
    layout: str
    vkeys: list[str]  # the vectorizer's key columns
    vtypes: list[str]  # and their types as it last followed them
    home: str = "a"  # the logical schema it was created in: its destination's (or queue's)
    cols: dict[str, str | None] = field(default_factory=lambda: {c: c for c in (*WATCHED, "n")})
    extra: dict[str, str] = field(default_factory=dict)  # columns added since
    regions: list[Region] = field(default_factory=list)
    # live | dropped | keyless (its key dropped) | other (created again with another key, or
    # under a name other than the one its vectorizer follows: no longer the vectorizer's table)
    state: str = "live"
    followed: Ref | None = None  # the name its vectorizer follows
    vname: str = ""  # a pipeline's name
    callback: dict[str, Any] | None = None  # a callback's Vectorize arguments
    indexes: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    big_ids: bool = False  # an int key made bigint: fresh ids go past 2^31
    history: list[str] = field(default_factory=list)  # DDL that took effect
    dropped_keys: set[str] = field(default_factory=set)  # a callback's: keys of rows in dropped tables
    # capture="wal": created again under the name its vectorizer follows, and no capture has
    # run since to take it on; moved (renamed, its schema renamed) before one does, it is lost
    # to the vectorizer (README, "What WAL capture follows")
    unclaimed: bool = False
    # capture="wal": renamed or moved since the last capture, which is when the catalog follows
    # a move (by the table's oid); dropped and created again before one runs, the table is
    # lost to the vectorizer too: the catalog names where it was
    stale_name: bool = False

    @property
    def ref(self) -> Ref:
        return Ref(self.schema, self.table)

    @property
    def partitioned(self) -> bool:
        return self.layout in ("range", "list")

    @property
    def intact(self) -> bool:
        """Its vectorizer can read it: it exists, with its key and the columns read."""
        return (self.state == "live" and self.keys == self.vkeys
                and all(self.cols[c] == c for c in WATCHED))

    def attached(self) -> list[Region]:
        return [r for r in self.regions if r.attached]


def exists(s: Source) -> bool:
    return s.state != "dropped"


def keyed(s: Source) -> bool:
    return s.state in ("live", "other")


def has_regions(s: Source) -> bool:
    return exists(s) and s.layout in ("range", "list", "inherits")


# --- the world of one sequence --------------------------------------------------------------


class World:
    """One sequence: its schemas, tables and vectorizers, its random choices, and a superuser
    connection that reads the twins (the application's view) to choose keys."""

    def __init__(self, db: pgvz.Database, seed: int, roles: dict[str, str], report: Report, *, two_phase: bool):
        self.db, self.seed, self.roles, self.report, self.two_phase = db, seed, roles, report, two_phase
        self.rng = random.Random(seed)
        self.tag = "ddl" + uuid.uuid4().hex[:6]
        self.schemas = {SRC: {s: f"{self.tag}_{s}" for s in LOGICAL_SCHEMAS},
                        TWIN: {s: f"{self.tag}_{s}_twin" for s in LOGICAL_SCHEMAS}}
        self.mirror = (f"{self.tag}_mirror", "mirror")
        self.sources: list[Source] = []
        self.counter = 0
        self.inspect = db.connect(autocommit=True)
        self.inspect.execute("SET lock_timeout = '30s'")

    def ddl_role(self) -> str:
        return self.rng.choices(ROLES, weights=(4, 5, 1))[0]

    def dml_role(self) -> str:
        return self.rng.choice(ROLES)

    def new_name(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def word(self) -> str:
        return self.rng.choice(("alpha", "beta", "gamma", "delta", "cats", "dogs"))

    # keys
    def fresh_key(self, s: Source, region: Region | None = None, *, past_int: bool = False) -> tuple:
        """A key no row of the source has had, that fits ``region`` (else an attached one)."""
        self.counter += 1
        if s.partitioned and region is None and s.attached():
            region = self.rng.choice(s.attached())
        values: list[Any] = []
        for i, typ in enumerate(s.key_types):
            if i == 1:  # the tag of a composite key
                values.append(region.tag if region is not None and s.layout == "list" else self.rng.choice("ab"))
            elif typ in ("int", "bigint"):
                if s.layout == "range" and region is not None:
                    region.used += 1
                    values.append(region.lo + region.used)
                elif past_int or (s.big_ids and self.rng.random() < 0.5):
                    values.append(PAST_INT + self.counter)
                else:
                    values.append(self.counter + (BIG if s.shape.key == "bigint" else 0))
            elif typ == "uuid" or s.shape.key == "uuid":
                values.append(str(uuid.UUID(int=self.rng.getrandbits(128))))
            else:
                values.append(f"k{self.counter}")
        return tuple(values)

    def key_lit(self, s: Source, i: int, value: Any) -> sql.Composable:
        typ = s.key_types[i]
        if typ in ("int", "bigint"):
            return lit(int(value))
        return sql.SQL("{}::{}").format(lit(str(value)), sql.SQL(typ))

    def key_match(self, s: Source, keys: list[tuple]) -> sql.Composable:
        """``(k1, k2) IN ((..), (..))``."""
        rows = comma(sql.SQL("({})").format(comma(self.key_lit(s, i, v) for i, v in enumerate(k))) for k in keys)
        return sql.SQL("({}) IN ({})").format(idents(s.keys), rows)

    def existing(self, s: Source, target: Ref, *, only: bool = False, limit: int | None = 5) -> list[tuple]:
        """Up to ``limit`` keys of the twin's rows in ``target``, picked at random (None: all,
        and no random choice made)."""
        if not s.keys:
            return []
        try:
            rows = self.inspect.execute(sql.SQL("SELECT {} FROM {} {} ORDER BY {}").format(
                idents(s.keys), sql.SQL("ONLY") if only else sql.SQL(""), target.resolve(self.schemas[TWIN], TWIN),
                idents(s.keys))).fetchall()
        except psycopg.Error:
            return []
        return rows if limit is None else self.rng.sample(rows, min(limit, len(rows)))

    def twin_constraint(self, s: Source, contype: str) -> str | None:
        found = self.inspect.execute(
            "SELECT c.conname FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid "
            "JOIN pg_namespace n ON n.oid = r.relnamespace WHERE n.nspname = %s AND r.relname = %s "
            "AND c.contype = %s ORDER BY 1", [self.schemas[TWIN][s.schema], s.table, contype]).fetchone()
        return found[0] if found else None

    # rows
    def row(self, s: Source, key: tuple) -> tuple[list[str], list[Any]]:
        """Column names and values of a new row."""
        names, values = list(s.keys), list(key)
        make = {"title": lambda: self.rng.choice((self.word(), self.word() + " " + self.word(), None)),
                "body": lambda: f"body {self.counter} {self.word()}",
                "cat": lambda: self.rng.choice(("x", "y", "skip", None)),
                "n": lambda: self.rng.choice((self.rng.randint(0, 99), None))}
        for logical, name in s.cols.items():
            if name is not None:
                names.append(name)
                values.append(make[logical]())
        return names, values

    def row_lits(self, s: Source, values: list[Any]) -> sql.Composed:
        nk = len(s.keys)
        return sql.SQL("({})").format(comma(
            [self.key_lit(s, i, v) for i, v in enumerate(values[:nk])] + [lit(v) for v in values[nk:]]))

    def insert(self, s: Source, target: Ref, rows: list[tuple[list[str], list[Any]]]) -> Stmt:
        return S("INSERT INTO {} ({}) VALUES {}", target, idents(rows[0][0]),
                 comma(self.row_lits(s, v) for _, v in rows))

    def target(self, s: Source, *, detached: bool = True) -> tuple[Ref, Region | None]:
        """Where a DML statement goes: the source, or one of its partitions or children (a
        statement aimed at one fires only that table's triggers), or a detached one."""
        regions = [r for r in s.regions if r.attached or detached]
        if regions and self.rng.random() < 0.4:
            r = self.rng.choice(regions)
            return r.ref, r
        return s.ref, None

    def owned(self, role: str, ref: Ref) -> list[Stmt]:
        """What follows a CREATE TABLE by the superuser: the owner role owns it and the writer may
        write it (the owner's own new tables get that from its default privileges)."""
        if role != SUPER:
            return []
        return [S("ALTER TABLE {} OWNER TO {}", ref, ident(self.roles[OWNER])),
                S("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {} TO {}", ref, ident(self.roles[WRITER]))]

    def columns_ddl(self, keys: list[str], types: list[str]) -> sql.Composed:
        return comma([sql.SQL("{} {}").format(ident(k), sql.SQL(t)) for k, t in zip(keys, types)]
                     + [sql.SQL("{} text").format(ident(c)) for c in WATCHED] + [sql.SQL("n int")])


# --- kinds ------------------------------------------------------------------------------------


@dataclass
class Kind:
    name: str
    weight: int
    ddl: bool
    fits: Callable[[Source], bool]
    gen: Callable[[World, Source], Iterator[Step]]


KINDS: dict[str, Kind] = {}


def kind(weight: int, *, ddl: bool = True, fits: Callable[[Source], bool] = exists):
    """Register a statement generator: it yields Steps, and is sent back whether each took
    effect on both sides (the model is updated by then)."""
    def register(gen):
        KINDS[gen.__name__] = Kind(gen.__name__, weight, ddl, fits, gen)
        return gen
    return register


def ddl(w: World, s: Source, kind_name: str, *stmts: Stmt, role: str | None = None,
        on_commit: Callable[[], None] | None = None, refusable: bool = False) -> Step:
    return Step(kind_name, role or w.ddl_role(), list(stmts), s, refusable=refusable, on_commit=on_commit)


def dml(w: World, s: Source) -> Iterator[Step]:
    """One DML statement of a kind that fits."""
    fits = [k for k in KINDS.values() if not k.ddl and k.fits(s)]
    if fits:
        yield from w.rng.choices(fits, weights=[k.weight for k in fits])[0].gen(w, s)


# --- DML --------------------------------------------------------------------------------------


@kind(6, ddl=False)
def insert(w: World, s: Source) -> Iterator[Step]:
    target, region = w.target(s)
    rows = [w.row(s, w.fresh_key(s, region)) for _ in range(w.rng.choice((1, 1, 2, 4)))]
    yield Step("insert", w.dml_role(), [w.insert(s, target, rows)], s)


@kind(2, ddl=False, fits=keyed)
def upsert(w: World, s: Source) -> Iterator[Step]:
    target, region = w.target(s, detached=False)
    # ON CONFLICT sees one table's index: existing keys of the table aimed at only
    old = w.existing(s, target, only=s.layout == "inherits", limit=2)
    rows = [w.row(s, k) for k in old] + [w.row(s, w.fresh_key(s, region)) for _ in range(w.rng.randint(0, 2))]
    if not rows:
        return
    names = rows[0][0]
    action = sql.SQL("DO NOTHING") if w.rng.random() < 0.3 else sql.SQL("DO UPDATE SET {}").format(
        comma(sql.SQL("{} = EXCLUDED.{}").format(ident(c), ident(c)) for c in names[len(s.keys):]))
    yield Step("upsert", w.dml_role(), [S("INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) {}", target, idents(names),
                                          comma(w.row_lits(s, v) for _, v in rows), idents(s.keys), action)], s)


@kind(5, ddl=False, fits=keyed)
def update(w: World, s: Source) -> Iterator[Step]:
    target, _ = w.target(s)
    present = [c for c in WATCHED if s.cols[c]]
    if not present:
        return
    values = {"title": w.word(), "body": f"body {w.counter} {w.word()} again",
              "cat": w.rng.choice(("x", "y", "skip", None))}
    sets = comma(sql.SQL("{} = {}").format(ident(s.cols[c]), lit(values[c]))
                 for c in w.rng.sample(present, w.rng.randint(1, len(present))))
    keys = w.existing(s, target, limit=w.rng.randint(1, 4))
    where = w.key_match(s, keys) if keys and w.rng.random() < 0.8 else sql.SQL("true")
    yield Step("update", w.dml_role(), [S("UPDATE {} SET {} WHERE {}", target, sets, where)], s)


@kind(1, ddl=False, fits=keyed)
def update_unwatched(w: World, s: Source) -> Iterator[Step]:
    col = s.cols["n"] or next(iter(s.extra), None)
    if col is not None:
        target, _ = w.target(s)
        yield Step("update_unwatched", w.dml_role(), [S("UPDATE {} SET {} = NULL", target, ident(col))], s)


@kind(3, ddl=False, fits=keyed)
def update_key(w: World, s: Source) -> Iterator[Step]:
    """Keys changed: each old key must leave the destination, each new one arrive."""
    target, _ = w.target(s, detached=False)
    old = w.existing(s, target, limit=w.rng.randint(1, 3))
    if not old:
        return
    col = w.rng.randrange(len(s.keys))
    cases = sql.SQL(" ").join(
        sql.SQL("WHEN {} THEN {}").format(w.key_match(s, [k]), w.key_lit(s, col, w.fresh_key(s)[col])) for k in old)
    yield Step("update_key", w.dml_role(), [S("UPDATE {} SET {} = CASE {} END WHERE {}", target, ident(s.keys[col]),
                                              cases, w.key_match(s, old))], s)


@kind(3, ddl=False, fits=keyed)
def delete(w: World, s: Source) -> Iterator[Step]:
    target, _ = w.target(s)
    keys = w.existing(s, target, limit=w.rng.randint(1, 3))
    if keys and w.rng.random() < 0.8:
        where = w.key_match(s, keys)
    elif s.cols["cat"]:
        where = sql.SQL("{} = 'skip'").format(ident(s.cols["cat"]))
    else:
        return
    yield Step("delete", w.dml_role(), [S("DELETE FROM {} WHERE {}", target, where)], s)


@kind(1, ddl=False)
def truncate(w: World, s: Source) -> Iterator[Step]:
    target, _ = w.target(s)
    only = sql.SQL("ONLY ") if s.layout == "inherits" and target == s.ref and w.rng.random() < 0.5 else sql.SQL("")
    yield Step("truncate", w.dml_role(), [S("TRUNCATE {}{}", only, target)], s)


@kind(2, ddl=False, fits=keyed)
def copy(w: World, s: Source) -> Iterator[Step]:
    target, region = w.target(s)
    rows = [w.row(s, w.fresh_key(s, region)) for _ in range(w.rng.randint(1, 5))]
    yield Step("copy", w.dml_role(), [Stmt("COPY {} ({}) FROM STDIN", (target, idents(rows[0][0])),
                                           copy_rows=[tuple(v) for _, v in rows])], s)


@kind(1, ddl=False, fits=keyed)
def merge(w: World, s: Source) -> Iterator[Step]:
    target, region = w.target(s, detached=False)
    title = s.cols["title"]
    if title is None:
        return
    keys = w.existing(s, target, only=s.layout == "inherits", limit=2) + [w.fresh_key(s, region)]
    values = comma(sql.SQL("({}, {})").format(comma(w.key_lit(s, i, v) for i, v in enumerate(k)), lit(w.word()))
                   for k in keys)
    on = sql.SQL(" AND ").join(sql.SQL("t.{} = v.{}").format(ident(k), ident(k)) for k in s.keys)
    yield Step("merge", w.dml_role(), [S(
        "MERGE INTO {} AS t USING (VALUES {}) AS v ({}, new_title) ON {} "
        "WHEN MATCHED THEN UPDATE SET {} = v.new_title WHEN NOT MATCHED THEN INSERT ({}, {}) VALUES ({}, v.new_title)",
        target, values, idents(s.keys), on, ident(title), idents(s.keys), ident(title),
        comma(sql.SQL("v.{}").format(ident(k)) for k in s.keys))], s)


@kind(1, ddl=False, fits=keyed)
def cte(w: World, s: Source) -> Iterator[Step]:
    """A writable CTE: a DELETE and an UPDATE of the table in one statement."""
    keys = w.existing(s, s.ref, limit=3)
    if len(keys) >= 2 and s.cols["title"]:
        yield Step("cte", w.dml_role(), [S("WITH gone AS (DELETE FROM {} WHERE {} RETURNING 1) "
                                           "UPDATE {} SET {} = 'from a cte' WHERE {}", s.ref, w.key_match(s, keys[:1]),
                                           s.ref, ident(s.cols["title"]), w.key_match(s, keys[1:]))], s)


@kind(3, ddl=False, fits=keyed)
def two_phase(w: World, s: Source) -> Iterator[Step]:
    """The application's two-phase commit: PREPARE TRANSACTION, then COMMIT PREPARED."""
    if w.two_phase:
        yield Step("two_phase", w.dml_role(), [w.insert(s, s.ref, [w.row(s, w.fresh_key(s))])], s, finish="prepare")


@kind(1)
def rolled_back(w: World, s: Source) -> Iterator[Step]:
    """DDL and DML in a transaction the application rolls back: none of it may remain."""
    stmts = [S("ALTER TABLE {} ADD COLUMN {} int", s.ref, ident(w.new_name("gone")))]
    if keyed(s):
        stmts.append(w.insert(s, s.ref, [w.row(s, w.fresh_key(s))]))
    yield Step("rolled_back", w.rng.choice((SUPER, OWNER)), stmts, s, finish="rollback")


# --- DDL: columns -----------------------------------------------------------------------------


@kind(7)
def add_column(w: World, s: Source) -> Iterator[Step]:
    taken = set(s.keys) | set(s.extra) | set(s.cols.values())
    pool = TRICKY_COLUMNS[:6] if w.rng.random() < 0.5 else TRICKY_COLUMNS  # one-letter aliases first
    name = w.rng.choice([c for c in pool if c not in taken] or [w.new_name("x")])
    typ = w.rng.choice(("int", "text", "boolean", "jsonb", "bigint"))
    value = {"int": "7", "bigint": "7", "text": "'d'", "boolean": "true", "jsonb": "'{}'"}[typ]
    tail = w.rng.choice(("", " DEFAULT ", " NOT NULL DEFAULT "))
    yield ddl(w, s, "add_column", S("ALTER TABLE {} ADD COLUMN {} {}{}{}", s.ref, ident(name), sql.SQL(typ),
                                    sql.SQL(tail), sql.SQL(value if tail else "")),
              on_commit=lambda: s.extra.__setitem__(name, typ))


def unwatched(s: Source) -> list[str]:
    return list(s.extra) + ([s.cols["n"]] if s.cols["n"] else [])


@kind(2)
def drop_column(w: World, s: Source) -> Iterator[Step]:
    if not unwatched(s):
        return
    col = w.rng.choice(unwatched(s))

    def done():
        s.extra.pop(col, None)
        if s.cols["n"] == col:
            s.cols["n"] = None
    yield ddl(w, s, "drop_column", S("ALTER TABLE {} DROP COLUMN {}", s.ref, ident(col)), on_commit=done)


@kind(2)
def rename_column(w: World, s: Source) -> Iterator[Step]:
    if not unwatched(s):
        return
    col, new = w.rng.choice(unwatched(s)), w.new_name("renamed")

    def done():
        if col in s.extra:
            s.extra[new] = s.extra.pop(col)
        else:
            s.cols["n"] = new
    yield ddl(w, s, "rename_column", S("ALTER TABLE {} RENAME COLUMN {} TO {}", s.ref, ident(col), ident(new)),
              on_commit=done)


@kind(3)
def rename_watched(w: World, s: Source) -> Iterator[Step]:
    """A column the vectorizer reads, renamed while the application writes, then renamed back."""
    present = [c for c in WATCHED if s.cols[c] == c]
    if not present:
        return
    col = w.rng.choice(present)
    yield ddl(w, s, "rename_watched", S("ALTER TABLE {} RENAME COLUMN {} TO {}", s.ref, ident(col),
                                        ident(col + "_renamed")),
              on_commit=lambda: s.cols.__setitem__(col, col + "_renamed"))
    for _ in range(w.rng.randint(1, 3)):
        yield from dml(w, s)
    yield from restore_column(w, s, col)


@kind(1)
def drop_watched(w: World, s: Source) -> Iterator[Step]:
    """A column the vectorizer reads, dropped, written without, then added again and filled."""
    present = [c for c in WATCHED if s.cols[c] == c]
    if not present:
        return
    col = w.rng.choice(present)
    yield ddl(w, s, "drop_watched", S("ALTER TABLE {} DROP COLUMN {}", s.ref, ident(col)),
              on_commit=lambda: s.cols.__setitem__(col, None))
    for _ in range(w.rng.randint(1, 2)):
        yield from dml(w, s)
    yield from restore_column(w, s, col)


def restore_column(w: World, s: Source, col: str) -> Iterator[Step]:
    """A column the vectorizer reads back in place: renamed back, or added again and filled."""
    current = s.cols[col]
    if current == col or not exists(s):
        return
    if current is not None:
        yield ddl(w, s, "rename_watched", S("ALTER TABLE {} RENAME COLUMN {} TO {}", s.ref, ident(current), ident(col)),
                  on_commit=lambda: s.cols.__setitem__(col, col))
        return
    yield ddl(w, s, "drop_watched", S("ALTER TABLE {} ADD COLUMN {} text", s.ref, ident(col)),
              on_commit=lambda: s.cols.__setitem__(col, col))
    if s.cols[col] == col:
        value = {"title": "title again", "body": "body again", "cat": "x"}[col]
        yield Step("drop_watched", w.dml_role(), [S("UPDATE {} SET {} = {}", s.ref, ident(col), lit(value))], s)


@kind(4, fits=keyed)
def rename_key(w: World, s: Source) -> Iterator[Step]:
    """May be refused; if not, the application writes with the new name, then renames it back."""
    i = w.rng.randrange(len(s.keys))
    old, new = s.keys[i], s.keys[i] + "_renamed"
    step = ddl(w, s, "rename_key", S("ALTER TABLE {} RENAME COLUMN {} TO {}", s.ref, ident(old), ident(new)),
               refusable=True, on_commit=lambda: s.keys.__setitem__(i, new))
    if (yield step):
        for _ in range(w.rng.randint(1, 2)):
            yield from insert(w, s)
        yield ddl(w, s, "rename_key", S("ALTER TABLE {} RENAME COLUMN {} TO {}", s.ref, ident(new), ident(old)),
                  role=step.role, on_commit=lambda: s.keys.__setitem__(i, old))


@kind(1, fits=keyed)
def drop_key(w: World, s: Source) -> Iterator[Step]:
    col = w.rng.choice(s.keys)

    def done():  # not refused: the table has no key any more
        s.state = "keyless"
        s.extra.update((k, t) for k, t in zip(s.keys, s.key_types) if k != col)
        s.keys, s.key_types = [], []
    if (yield ddl(w, s, "drop_key", S("ALTER TABLE {} DROP COLUMN {}", s.ref, ident(col)), refusable=True,
                  on_commit=done)):
        yield from insert(w, s)


RETYPES = {"int": "bigint", "bigint": "bigint", "text": "varchar(64)", "varchar": "text", "uuid": "text"}


@kind(5, fits=keyed)
def retype_key(w: World, s: Source) -> Iterator[Step]:
    """A key column's new type (int -> bigint above all), then a key only the new type holds."""
    ints = [i for i, typ in enumerate(s.key_types) if typ == "int"]
    i = w.rng.choice(ints) if ints and w.rng.random() < 0.8 else w.rng.randrange(len(s.keys))
    old = s.key_types[i]
    new, using = RETYPES[old], sql.SQL("")
    if old == "text" and s.shape.key == "uuid" and w.rng.random() < 0.5:
        new, using = "uuid", sql.SQL(" USING {}::uuid").format(ident(s.keys[i]))

    def done():
        s.key_types[i] = new.split("(")[0]
        s.big_ids = s.big_ids or (old == "int" and new == "bigint")
        if s.state == "live":
            s.vtypes = list(s.key_types)
    took = yield ddl(w, s, "retype_key", S("ALTER TABLE {} ALTER COLUMN {} TYPE {}{}", s.ref, ident(s.keys[i]),
                                           sql.SQL(new), using), refusable=True, on_commit=done)
    if took and old == "int":
        target, region = w.target(s, detached=False)
        yield Step("insert", w.dml_role(), [w.insert(s, target, [w.row(s, w.fresh_key(s, region, past_int=True))])], s)


@kind(2)
def retype_column(w: World, s: Source) -> Iterator[Step]:
    choices = [c for c in (*WATCHED, "n") if s.cols[c]]
    if choices:
        logical = w.rng.choice(choices)
        typ = w.rng.choice(("bigint", "int") if logical == "n" else ("varchar(200)", "text", "varchar"))
        yield ddl(w, s, "retype_column", S("ALTER TABLE {} ALTER COLUMN {} TYPE {}", s.ref, ident(s.cols[logical]),
                                           sql.SQL(typ)))


@kind(1)
def default(w: World, s: Source) -> Iterator[Step]:
    cols = [c for c in (s.cols["title"], s.cols["cat"], s.cols["n"]) if c]
    if cols:
        col = w.rng.choice(cols)
        action = sql.SQL("DROP DEFAULT") if w.rng.random() < 0.5 else sql.SQL("SET DEFAULT {}").format(
            lit(7 if col == s.cols["n"] else "d"))
        yield ddl(w, s, "default", S("ALTER TABLE {} ALTER COLUMN {} {}", s.ref, ident(col), action))


@kind(1)
def not_null(w: World, s: Source) -> Iterator[Step]:
    cols = [c for c in (s.cols["title"], s.cols["n"], *s.keys[:1]) if c]
    if cols:
        action = sql.SQL(w.rng.choice(("SET NOT NULL", "DROP NOT NULL")))
        yield ddl(w, s, "not_null", S("ALTER TABLE {} ALTER COLUMN {} {}", s.ref, ident(w.rng.choice(cols)), action))


# --- DDL: constraints and indexes -------------------------------------------------------------


@kind(1)
def check(w: World, s: Source) -> Iterator[Step]:
    if s.constraints and w.rng.random() < 0.4:
        name = s.constraints[-1]
        yield ddl(w, s, "check", S("ALTER TABLE {} DROP CONSTRAINT {}", s.ref, ident(name)),
                  on_commit=lambda: s.constraints.remove(name))
    elif s.cols["n"]:
        name, n = w.new_name("chk"), ident(s.cols["n"])
        valid = sql.SQL(w.rng.choice(("", " NOT VALID")))
        yield ddl(w, s, "check", S("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NULL OR {} >= 0){}", s.ref,
                                   ident(name), n, n, valid), on_commit=lambda: s.constraints.append(name))


@kind(1, fits=keyed)
def unique(w: World, s: Source) -> Iterator[Step]:
    name = w.new_name("uq")
    cols = [*s.keys] + ([s.cols["title"]] if s.cols["title"] else [])
    yield ddl(w, s, "unique", S("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE ({})", s.ref, ident(name), idents(cols)),
              on_commit=lambda: s.constraints.append(name))


@kind(2, fits=keyed)
def primary_key(w: World, s: Source) -> Iterator[Step]:
    """The primary key dropped, the application writing meanwhile, then added again."""
    pkey = w.twin_constraint(s, "p")
    add = S("ALTER TABLE {} ADD PRIMARY KEY ({})", s.ref, idents(s.keys))
    if pkey is None:
        yield ddl(w, s, "primary_key", add)
        return
    # under WAL capture the key is the table's replica identity: dropping it is refused (documented)
    if (yield ddl(w, s, "primary_key", S("ALTER TABLE {} DROP CONSTRAINT {}", s.ref, ident(pkey)),
                  refusable=s.shape.capture == "wal")):
        yield from insert(w, s)
        yield ddl(w, s, "primary_key", add)


@kind(2)
def index(w: World, s: Source) -> Iterator[Step]:
    if s.indexes and w.rng.random() < 0.4:
        name = s.indexes[-1]
        yield ddl(w, s, "index", S("DROP INDEX {}", Ref(s.schema, name)), on_commit=lambda: s.indexes.remove(name))
        return
    name = w.new_name("ix")
    unique_keys = bool(s.keys) and w.rng.random() < 0.3
    cols = s.keys if unique_keys else ([c for c in (s.cols["title"], s.cols["cat"]) if c] or s.keys)
    if cols:
        yield ddl(w, s, "index", S("CREATE {}INDEX {} ON {} ({})", sql.SQL("UNIQUE " if unique_keys else ""),
                                   ident(name), s.ref, idents(cols)), on_commit=lambda: s.indexes.append(name))


# --- DDL: the table and its schema -------------------------------------------------------------


def moved(s: Source) -> None:
    """The table was renamed or moved: its vectorizer follows it (triggers: the table's own;
    WAL: by the oid the catalog holds), unless WAL capture has not yet taken it on."""
    if s.unclaimed:
        lost(s)
    elif s.state == "live":
        s.followed = s.ref
        s.stale_name = s.shape.capture == "wal"


def lost(s: Source) -> None:
    """A WAL vectorizer's table dropped and created again, then moved before a capture ran, or
    moved, then dropped and created again at its new name before one ran: the capture finds
    neither the old table's oid nor a table at the name its catalog holds, and the vectorizer
    keeps what it had (documented: README, "What WAL capture follows"); the table is no longer its."""
    s.unclaimed = False
    if s.state == "live":
        s.state, s.followed = "other", None


@kind(4)
def rename_table(w: World, s: Source) -> Iterator[Step]:
    new = w.new_name(s.label)

    def done():
        s.table = new
        moved(s)
    yield ddl(w, s, "rename_table", S("ALTER TABLE {} RENAME TO {}", s.ref, ident(new)), on_commit=done)


@kind(2)
def set_schema(w: World, s: Source) -> Iterator[Step]:
    other = "b" if s.schema == "a" else "a"

    def done():
        s.schema = other
        s.indexes.clear()  # they went along; dropping them by their old schema would miss
        moved(s)
    yield ddl(w, s, "set_schema", S("ALTER TABLE {} SET SCHEMA {}", s.ref, Ref(other)), on_commit=done)


@kind(1)
def rename_schema(w: World, s: Source) -> Iterator[Step]:
    """ALTER SCHEMA ... RENAME TO: the source's schema, and all in it, under a new name."""
    logical = s.schema
    new = PerSide(w.schemas[SRC][logical] + "_r", w.schemas[TWIN][logical] + "_r")

    def done():
        w.schemas[SRC][logical], w.schemas[TWIN][logical] = new.vectorized, new.twin
        for other in w.sources:  # the others in it, or with their destination in it, went along
            if other is not s and logical in (other.schema, other.home):
                other.history.append(f"{step.role} rename_schema: (its schema) RENAME TO {new.vectorized}")
            if other.schema == logical:
                moved(other)
    step = ddl(w, s, "rename_schema", S("ALTER SCHEMA {} RENAME TO {}", Ref(logical), new),
               role=w.rng.choice((SUPER, OWNER)), on_commit=done)
    yield step


@kind(1)
def owner_to(w: World, s: Source) -> Iterator[Step]:
    """Ownership handed to the superuser and back, the application writing meanwhile."""
    yield ddl(w, s, "owner_to", S("ALTER TABLE {} OWNER TO {}", s.ref, ident(w.roles[SUPER])), role=SUPER)
    yield from dml(w, s)
    yield ddl(w, s, "owner_to", S("ALTER TABLE {} OWNER TO {}", s.ref, ident(w.roles[OWNER])), role=SUPER)


@kind(1)
def row_security(w: World, s: Source) -> Iterator[Step]:
    action = w.rng.choice(("ENABLE", "DISABLE", "FORCE", "NO FORCE"))
    yield ddl(w, s, "row_security", S("ALTER TABLE {} {} ROW LEVEL SECURITY", s.ref, sql.SQL(action)))
    if action == "ENABLE":
        yield from dml(w, s)
        yield ddl(w, s, "row_security", S("ALTER TABLE {} DISABLE ROW LEVEL SECURITY", s.ref))


@kind(1)
def replica_identity(w: World, s: Source) -> Iterator[Step]:
    # under WAL capture, NOTHING on a table (or a partition) of the source is refused (documented)
    yield ddl(w, s, "replica_identity", S("ALTER TABLE {} REPLICA IDENTITY {}", s.ref,
                                          sql.SQL(w.rng.choice(("FULL", "DEFAULT", "NOTHING")))),
              refusable=s.shape.capture == "wal")


@kind(1)
def storage(w: World, s: Source) -> Iterator[Step]:
    yield ddl(w, s, "storage", S("ALTER TABLE {} {}", s.ref, sql.SQL(w.rng.choice(
        ("SET (fillfactor = 70)", "RESET (fillfactor)", "SET (autovacuum_enabled = false)")))))


@kind(1)
def vacuum(w: World, s: Source) -> Iterator[Step]:
    yield Step("vacuum", w.dml_role(), [S("{} {}", sql.SQL(w.rng.choice(("VACUUM", "VACUUM ANALYZE", "ANALYZE"))),
                                          s.ref)], s, finish="autocommit")


# --- DDL: partitions and inheritance children ---------------------------------------------------


def new_region(w: World, s: Source) -> Region:
    schema = w.rng.choice((s.schema, s.schema, "b" if s.schema == "a" else "a"))
    table = w.new_name(s.label + "_part")
    if s.layout == "range":
        taken = {r.lo for r in s.regions}
        while True:
            lo = 1_000_000 * w.rng.randint(1, 49) + (BIG if s.shape.key == "bigint" else 0)
            if lo not in taken:
                return Region(schema, table, lo=lo)
    if s.layout == "list":
        return Region(schema, table, tag=w.new_name("tag"))
    return Region(schema, table)


@kind(5, fits=has_regions)
def create_partition(w: World, s: Source) -> Iterator[Step]:
    """CREATE TABLE ... PARTITION OF / INHERITS, then rows written to it directly."""
    r = new_region(w, s)
    role = w.ddl_role()
    if s.layout == "inherits":
        create = S("CREATE TABLE {} (PRIMARY KEY ({})) INHERITS ({})", r.ref, idents(s.keys), s.ref)
    else:
        create = S("CREATE TABLE {} PARTITION OF {} {}", r.ref, s.ref, r.bound())
    if (yield Step("create_partition", role, [create, *w.owned(role, r.ref)], s,
                   on_commit=lambda: s.regions.append(r))):
        for _ in range(w.rng.randint(1, 2)):
            rows = [w.row(s, w.fresh_key(s, r)) for _ in range(w.rng.randint(1, 3))]
            yield Step("insert", w.dml_role(), [w.insert(s, r.ref, rows)], s)


@kind(3, fits=has_regions)
def attach(w: World, s: Source) -> Iterator[Step]:
    """A table filled first, then attached (ATTACH PARTITION / INHERIT): its rows join the source."""
    detached = [r for r in s.regions if not r.attached]
    if detached and w.rng.random() < 0.5:
        r = w.rng.choice(detached)
    else:
        r = replace(new_region(w, s), attached=False)
        role = w.ddl_role()
        like = sql.SQL("INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES" if s.layout == "inherits"
                       else "INCLUDING DEFAULTS INCLUDING CONSTRAINTS")
        rows = [w.row(s, w.fresh_key(s, r)) for _ in range(w.rng.randint(1, 3))]
        if not (yield Step("attach", role, [S("CREATE TABLE {} (LIKE {} {})", r.ref, s.ref, like),
                                            *w.owned(role, r.ref), w.insert(s, r.ref, rows)], s,
                           on_commit=lambda: s.regions.append(r))):
            return
    if s.layout == "inherits":
        stmt = S("ALTER TABLE {} INHERIT {}", r.ref, s.ref)
    else:
        stmt = S("ALTER TABLE {} ATTACH PARTITION {} {}", s.ref, r.ref, r.bound())
    yield ddl(w, s, "attach", stmt, on_commit=lambda: setattr(r, "attached", True))


@kind(3, fits=has_regions)
def detach(w: World, s: Source) -> Iterator[Step]:
    """DETACH PARTITION / NO INHERIT: its rows leave the source, so their embeddings go."""
    if not s.attached():
        return
    r = w.rng.choice(s.attached())
    if s.layout == "inherits":
        stmt = S("ALTER TABLE {} NO INHERIT {}", r.ref, s.ref)
    else:
        stmt = S("ALTER TABLE {} DETACH PARTITION {}", s.ref, r.ref)
    if (yield ddl(w, s, "detach", stmt, on_commit=lambda: setattr(r, "attached", False))):
        yield from insert(w, s)


def dropping(w: World, s: Source, ref: Ref) -> set[str]:
    """The keys a DROP TABLE of ``ref`` takes along, if they could matter (a callback's)."""
    if s.shape.vkind != "callback" or s.state != "live":
        return set()
    return {key_text(k) for k in w.existing(s, ref, limit=None)}


@kind(2, fits=has_regions)
def drop_partition(w: World, s: Source) -> Iterator[Step]:
    if s.regions:
        r = w.rng.choice(s.regions)
        gone = dropping(w, s, r.ref) if r.attached else set()

        def done():
            s.regions.remove(r)
            s.dropped_keys |= gone
        # a callback vectorizer may refuse it instead (detach first): its rows would be lost
        yield ddl(w, s, "drop_partition", S("DROP TABLE {}", r.ref), on_commit=done,
                  refusable=s.shape.vkind == "callback")


# --- DDL: the table dropped and created again ----------------------------------------------------

OTHER_KEYS = {"int": ("uid", "bigint"), "bigint": ("id", "text"), "uuid": ("id", "bigint"),
              "text": ("id", "int"), "composite": ("id", "uuid")}


@kind(5, fits=lambda s: True)
def drop_recreate(w: World, s: Source) -> Iterator[Step]:
    """DROP TABLE, then CREATE TABLE of the same name: with the same shape (it must converge,
    without the old table's rows) or with another key (the CREATE must succeed)."""
    if exists(s):
        cascade = sql.SQL(" CASCADE" if s.layout == "inherits" and w.rng.random() < 0.8 else "")
        gone = dropping(w, s, s.ref)

        def dropped():
            s.dropped_keys |= gone
            s.state = "dropped"
            s.regions = [r for r in s.regions if not r.attached]  # the rest went with it
            s.indexes.clear()
            s.constraints.clear()
        if not (yield ddl(w, s, "drop_recreate", S("DROP TABLE {}{}", s.ref, cascade), on_commit=dropped)):
            return
        if w.rng.random() < 0.3:
            yield from insert(w, s)  # there is no table: fails on both
    same = w.rng.random() < 0.6
    if same:
        keys, types = list(s.vkeys), list(s.vtypes)
    else:
        keys, types = [OTHER_KEYS[s.shape.key][0]], [OTHER_KEYS[s.shape.key][1]]
    role = w.ddl_role()

    def created():
        if s.shape.vkind == "callback" and not same:
            # a key of another type: keys still queued for the dropped table that the new type
            # cannot hold are discarded (documented): the consumer must take the table as new
            s.dropped_keys |= {k for k, in w.inspect.execute(sql.SQL("SELECT k FROM {} WHERE label = %s").format(
                ident(*w.mirror)), [s.label]).fetchall()}
        s.state = "live" if same and s.ref == s.followed else "other"
        s.unclaimed = s.state == "live" and s.shape.capture == "wal"
        if s.unclaimed and s.stale_name:
            lost(s)
        s.keys, s.key_types, s.layout = keys, types, "plain"
        s.cols, s.extra, s.big_ids = {c: c for c in (*WATCHED, "n")}, {}, False
    create = S("CREATE TABLE {} ({}, PRIMARY KEY ({}))", s.ref, w.columns_ddl(keys, types), idents(keys))
    if (yield Step("drop_recreate", role, [create, *w.owned(role, s.ref)], s, on_commit=created)):
        for _ in range(w.rng.randint(1, 2)):
            yield from insert(w, s)


# --- set-up and tear-down ------------------------------------------------------------------------


def make_source(w: World, i: int, shape: Shape) -> Source:
    label = f"{shape.vkind[0]}{i}_{shape.key}_{shape.layout}"
    keys = ["id", "tag"] if shape.key == "composite" else ["id"]
    schema = w.rng.choice(("a", "a", "b"))
    types = [key_type(shape.key, k) for k in keys]
    s = Source(label, shape, schema, label, keys, types, shape.layout, vkeys=list(keys), vtypes=list(types),
               home=schema, followed=Ref(schema, label))
    big = BIG if shape.key == "bigint" else 0
    if shape.layout == "range":
        s.regions = [Region(s.schema, label + "_p0", lo=big), Region(s.schema, label + "_p1", lo=big + WIDTH),
                     Region(s.schema, label + "_pd", lo=big + 50_000_000, default=True)]
    elif shape.layout == "list":
        s.regions = [Region(s.schema, label + "_a", tag="a"), Region(s.schema, label + "_b", tag="b"),
                     Region(s.schema, label + "_d", tag="z", default=True)]
    elif shape.layout == "inherits":
        s.regions = [Region(s.schema, label + "_c1"), Region(s.schema, label + "_c2")]
    return s


def setup_statements(w: World, s: Source) -> list[Stmt]:
    """The table, its partitions or children and their rows, as the superuser makes them."""
    by = {"range": sql.SQL(" PARTITION BY RANGE (id)"), "list": sql.SQL(" PARTITION BY LIST (tag)")}
    stmts = [S("CREATE TABLE {} ({}, PRIMARY KEY ({})){}", s.ref, w.columns_ddl(s.keys, s.key_types), idents(s.keys),
               by.get(s.layout, sql.SQL("")))]
    for r in s.regions:
        if s.layout == "inherits":
            stmts.append(S("CREATE TABLE {} (PRIMARY KEY ({})) INHERITS ({})", r.ref, idents(s.keys), s.ref))
        else:
            stmts.append(S("CREATE TABLE {} PARTITION OF {} {}", r.ref, s.ref, r.bound()))
    for region in ([None] if not s.partitioned else []) + s.regions:
        rows = [w.row(s, w.fresh_key(s, region)) for _ in range(4 if s.regions else 8)]
        stmts.append(w.insert(s, region.ref if region else s.ref, rows))
    for ref in [s.ref] + [r.ref for r in s.regions]:
        stmts += w.owned(SUPER, ref)
    return stmts


def setup(w: World, shapes: list[Shape]) -> None:
    """Schemas the owner role owns (its new tables writable by the writer), the tables on both
    sides, then the vectorizers, created by the superuser on tables the owner owns, and a
    first sync, so the destinations hold rows before the DDL starts."""
    owner, writer = ident(w.roles[OWNER]), ident(w.roles[WRITER])
    with w.db.connect() as c:
        for side in (SRC, TWIN):
            for logical in LOGICAL_SCHEMAS:
                name = ident(w.schemas[side][logical])
                c.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(name, owner))
                c.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(name, writer))
                c.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT, INSERT, UPDATE, "
                                  "DELETE, TRUNCATE ON TABLES TO {}").format(owner, name, writer))
        c.execute(sql.SQL("CREATE SCHEMA {}").format(ident(w.mirror[0])))
        c.execute(sql.SQL("CREATE TABLE {} (label text, k text, doc text, PRIMARY KEY (label, k))").format(
            ident(*w.mirror)))
        for i, shape in enumerate(shapes):
            s = make_source(w, i, shape)
            w.sources.append(s)
            for stmt in setup_statements(w, s):
                for side in (SRC, TWIN):
                    c.execute(stmt.build(w.schemas[side], side))
        c.commit()
    for s in w.sources:
        schema = w.schemas[SRC][s.schema]
        if s.shape.vkind == "pipeline":
            s.vname = f"{w.tag}_{s.label}"
            pgvz.Vectorizer(w.db, f"{schema}.{s.table}", template="{title}: {chunk}", chunk_column="body",
                            chunk_size=1000, chunk_overlap=0, metadata=["cat"],
                            where="cat IS DISTINCT FROM 'skip'" if s.shape.where else None,
                            embedder=HashingEmbedder(8), name=s.vname, retry_backoff=0.0, max_attempts=3,
                            capture=s.shape.capture).create().close()
            if s.shape.migrating:  # its shadow follows the same table through every statement
                v = pgvz.Vectorizer.open(w.db, s.vname, embedder=HashingEmbedder(8))
                v.migrate(embedder=HashingEmbedder(SHADOW_DIMS))
                v.close()
        else:
            s.callback = {"table_name": s.table, "schema_name": schema, "id_column_name": list(s.keys),
                          "retry_backoff": 0.0, "max_attempts": 3}
            v = pgvz.Vectorize(w.db, **s.callback)
            v.register()
            v.close()
        drain(w, s)


def teardown(w: World) -> None:
    from pgvz_nb.queue import Queue

    w.inspect.close()
    with w.db.connect() as c:
        for queue in Queue.list_all(c):
            if queue.name.startswith(w.tag):
                c.rollback()
                try:
                    queue.drop(c)
                except psycopg.Error:
                    c.rollback()
        c.execute("DELETE FROM pgvz.vectorizers WHERE name LIKE %s", [w.tag + "%"])
        for name in sorted({n for side in (SRC, TWIN) for n in w.schemas[side].values()} | {w.mirror[0]}):
            c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident(name)))
        c.commit()


# --- the vectorizers' side, and the oracle ----------------------------------------------------------


def key_text(key: Any) -> str:
    return json.dumps([str(k) for k in (key if isinstance(key, tuple) else (key,))])


def doc_text(values: dict[str, Any]) -> str:
    return json.dumps({c: values.get(c) for c in WATCHED}, default=str, sort_keys=True)


def mirror_callback(w: World, label: str):
    """The callback's embed_and_write: each row mirrored into the mirror table through the
    claim's connection; a deleted source row comes with every value None."""
    mirror = ident(*w.mirror)

    def embed_and_write(rows, vectorizer):
        for r in rows:
            key = key_text(r["locked_id"])
            values = {c: v for c, v in r.items() if c != "locked_id"}
            vectorizer.connection.execute(sql.SQL("DELETE FROM {} WHERE label = %s AND k = %s").format(mirror),
                                          [label, key])
            if any(v is not None for v in values.values()):
                vectorizer.connection.execute(sql.SQL("INSERT INTO {} (label, k, doc) VALUES (%s, %s, %s)").format(
                    mirror), [label, key, doc_text(values)])
    return embed_and_write


def drain(w: World, s: Source) -> None:
    """Drain the vectorizer's queue as a worker would; raises what that raises."""
    for other in w.sources:  # its sync captures first, for every WAL vectorizer of the database
        if other.state == "live" and other.ref == other.followed:
            other.unclaimed = other.stale_name = False
    if s.shape.vkind == "pipeline":
        for name, dims in pipeline_sides(s):
            v = pgvz.Vectorizer.open(w.db, name, embedder=HashingEmbedder(dims))
            try:
                v.sync(progress=False, lanes=1)
            finally:
                v.close()
        return
    v = pgvz.Vectorize(w.db, **s.callback)  # its name is its first table's: the catalog says where it is now
    try:
        callback = mirror_callback(w, s.label)
        while v.process(callback, batch_size=100, autoregister=False) > 0:
            pass
    finally:
        v.close()


#: the vector size of a migrating source's shadow (the live one's: 8)
SHADOW_DIMS = 4


def pipeline_sides(s: Source) -> list[tuple[str, int]]:
    """(vectorizer name, vector size) of a pipeline source's vectorizers: with a migration in
    progress, the shadow too."""
    return [(s.vname, 8)] + ([(s.vname + "~migration", SHADOW_DIMS)] if s.shape.migrating else [])


def converge(w: World, s: Source) -> str | None:
    """Drain the queue, then compare the destination with what the source implies: None when
    they agree, else what differs."""
    try:
        drain(w, s)
    except Exception as exc:  # noqa: BLE001 - whatever it raises is the finding
        return f"draining the queue raised {type(exc).__name__}: {exc}"
    try:
        return compare(w, s)
    except psycopg.Error as exc:
        return f"reading the destination raised {type(exc).__name__}: {exc}"


def compare(w: World, s: Source) -> str | None:
    nk = len(s.keys)
    rows = w.inspect.execute(sql.SQL("SELECT {}, title, body, cat FROM {}").format(
        idents(s.keys), s.ref.resolve(w.schemas[SRC], SRC))).fetchall()
    if s.shape.vkind == "pipeline":
        want = Counter((key_text(tuple(r[:nk])), f"{r[nk] or ''}: {r[nk + 1] or ''}", r[nk + 2]) for r in rows
                       if not (s.shape.where and r[nk + 2] == "skip"))
        for name, dims in pipeline_sides(s):
            v = pgvz.Vectorizer.open(w.db, name, embedder=HashingEmbedder(dims))
            v.close()
            got = Counter((key_text(tuple(r[:nk])), r[nk], r[nk + 1]) for r in w.inspect.execute(
                sql.SQL("SELECT {}, contents, metadata->>'cat' FROM {}").format(
                    idents(v.config.dest_keys), ident(*v.destination))).fetchall())
            if want != got:
                missing, extra = want - got, got - want
                return (f"{name}: {sum(missing.values())} of the source's {len(rows)} rows missing or stale "
                        f"(e.g. {sorted(missing)[:2]}), {sum(extra.values())} destination rows it does not "
                        f"imply (e.g. {sorted(extra)[:2]})")
        return None
    want = Counter((key_text(tuple(r[:nk])), doc_text(dict(zip(WATCHED, r[nk:])))) for r in rows)
    got = Counter(tuple(r) for r in w.inspect.execute(
        sql.SQL("SELECT k, doc FROM {} WHERE label = %s").format(ident(*w.mirror)), [s.label]).fetchall())
    if not CALLBACK_DROPS_REACH_THE_CALLBACK:
        live = {k for k, _ in want}
        kept = Counter({r: n for r, n in got.items() if r[0] in s.dropped_keys and r[0] not in live})
        w.report.dropped_rows_kept += sum(kept.values())
        got -= kept
    if want == got:
        return None
    missing, extra = want - got, got - want
    return (f"{sum(missing.values())} of the source's {len(rows)} rows missing or stale (e.g. {sorted(missing)[:2]}), "
            f"{sum(extra.values())} destination rows it does not imply (e.g. {sorted(extra)[:2]})")


def snapshot(w: World, side: str) -> dict:
    """Every application table of one side: parent, columns, constraints, indexes, rows."""
    out = {}
    q = w.inspect.execute
    for logical in LOGICAL_SCHEMAS:
        schema = w.schemas[side][logical]
        for name, oid, parent in q(
                "SELECT c.relname, c.oid, (SELECT p.relname FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE i.inhrelid = c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 1", [schema]).fetchall():
            if name.endswith(PGVZ_SUFFIXES):
                continue
            out[logical, name] = {
                "parent": parent,
                "columns": q("SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
                             "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a LEFT JOIN pg_attrdef d "
                             "ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = %s "
                             "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", [oid]).fetchall(),
                "constraints": q("SELECT conname, contype FROM pg_constraint WHERE conrelid = %s ORDER BY 1",
                                 [oid]).fetchall(),
                "indexes": q("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                             "WHERE i.indrelid = %s ORDER BY 1", [oid]).fetchall(),
                "rows": sorted(r[0] for r in q(sql.SQL(
                    "SELECT row_to_json(snapshot_row)::text FROM ONLY {} AS snapshot_row").format(
                    ident(schema, name))).fetchall()),
            }
    return out


def twin_difference(w: World) -> str | None:
    """How the vectorized tables differ from their twins, if they do."""
    src, twin = snapshot(w, SRC), snapshot(w, TWIN)
    for key in sorted(set(src) | set(twin)):
        a, b = src.get(key), twin.get(key)
        if a is None or b is None:
            return f"table {key} exists on the {'twin' if a is None else 'vectorized'} side only"
        if a != b:
            parts = [f"{p} vectorized {a[p]!r}, twin {b[p]!r}" for p in a if a[p] != b[p]]
            return f"table {key}: " + "; ".join(parts)[:1500]
    return None


# --- the runner ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    texts: list[str]
    error: psycopg.Error | None = None
    failed: str = ""  # the statement that failed

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        if self.ok:
            return "ok"
        e = self.error
        hint = f" HINT: {e.diag.message_hint}" if e.diag.message_hint else ""
        at = f" at {self.failed[:40]}..." if len(self.texts) > 1 else ""
        return f"{type(e).__name__} [{e.sqlstate}]{at}: {e.diag.message_primary or e}{hint}"


def refusal(e: psycopg.Error | None) -> bool:
    """A documented refusal: pgvz_nb says it refuses, and a HINT says what to do instead."""
    return e is not None and (e.diag.message_primary or "").startswith("pgvz_nb:") and bool(e.diag.message_hint)


@dataclass
class Failure:
    seed: int
    step: int
    kind: str
    role: str
    source: Source | None
    what: str
    twin: list[str] = field(default_factory=list)
    vectorized: list[str] = field(default_factory=list)
    twin_outcome: str = ""
    vectorized_outcome: str = ""
    history: list[str] = field(default_factory=list)
    also: Counter = field(default_factory=Counter)  # others with the same signature: kind, seed

    def signature(self) -> tuple:
        """Failures that are likely one defect. A statement's: the vectorizer kind, the role for
        DDL, and the error; a convergence's: the symptom and the DDL the table went through."""
        vkind = self.source.shape.vkind if self.source else ""
        if self.twin:
            text = re.sub(r"ddl[0-9a-f]{6}\w*|\b[pc]\d+_\w+|\d+", "#", self.vectorized_outcome)
            return vkind, self.role if KINDS.get(self.kind, KINDS["insert"]).ddl else "any", text[:160]
        symptom = re.sub(r"\(e\.g\..*?\)|ddl[0-9a-f]{6}\w*|\b[pc]\d+_\w+|\d+", "#", self.what)
        return vkind, self.kind, symptom[:160], tuple(sorted({h.split(":")[0] for h in self.history}))

    def __str__(self) -> str:
        table = f"{self.source.label} ({self.source.shape.vkind})" if self.source else "-"
        lines = [f"seed {self.seed}, step {self.step}, kind {self.kind}, role {self.role}, table {table}: {self.what}"]
        if self.twin:
            lines += [f"  twin:       {' ; '.join(self.twin)}", f"    -> {self.twin_outcome}",
                      f"  vectorized: {' ; '.join(self.vectorized)}", f"    -> {self.vectorized_outcome}"]
        if self.history:
            lines.append("  DDL that took effect on this table before: " + " | ".join(self.history[-12:]))
        if self.also:
            lines.append("  the same again: " + ", ".join(f"{k} x{n}" for k, n in sorted(self.also.items())))
        return "\n".join(lines)


@dataclass
class Report:
    sequences: int = 0
    steps: int = 0
    statements: int = 0
    by_kind: Counter = field(default_factory=Counter)
    by_role: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)
    failed_on_both: Counter = field(default_factory=Counter)
    dropped_rows_kept: int = 0  # callback mirror rows of dropped tables, allowed to stay
    failures: int = 0
    distinct: dict[tuple, Failure] = field(default_factory=dict)

    def fail(self, f: Failure) -> None:
        self.failures += 1
        first = self.distinct.setdefault(f.signature(), f)
        if first is not f:
            first.also[f"{f.kind} (seed {f.seed})"] += 1

    def as_json(self) -> dict:
        return {"sequences": self.sequences, "steps": self.steps, "statements": self.statements,
                "by_kind": dict(sorted(self.by_kind.items())), "by_role": dict(sorted(self.by_role.items())),
                "refusals_by_kind": dict(sorted(self.refusals.items())),
                "failed_on_both_by_kind": dict(sorted(self.failed_on_both.items())),
                "callback_rows_of_dropped_tables_kept": self.dropped_rows_kept,
                "failures": self.failures, "distinct_failures": [str(f) for f in self.distinct.values()]}


class Runner:
    """Runs each step on the twin, then on the vectorized table, each in an open transaction
    of the step's role, then commits both or rolls both back: the two sides stay the same."""

    def __init__(self, w: World, report: Report, *, trace: bool = False):
        self.w, self.report, self.trace = w, report, trace
        self.step_no = self.failed = 0
        self.conns = {}
        for role in ROLES:
            for side in (SRC, TWIN):
                c = psycopg.connect(make_conninfo(w.db.dsn, user=w.roles[role]))
                c.execute("SET lock_timeout = '10s'")
                c.execute("SET statement_timeout = '60s'")
                c.commit()
                self.conns[role, side] = c

    def close(self) -> None:
        for c in self.conns.values():
            c.close()

    def _execute(self, step: Step, side: str) -> Outcome:
        """Run the step's statements in a transaction left open (a two-phase one prepared)."""
        conn, schemas = self.conns[step.role, side], self.w.schemas[side]
        out = Outcome([s.build(schemas, side).as_string(conn) for s in step.stmts])
        gid = lit(f"{self.w.tag}_{self.step_no}_{side}")
        if step.finish in ("autocommit", "prepare"):
            conn.autocommit = True  # psycopg leaves BEGIN ... PREPARE TRANSACTION to us
        try:
            if step.finish == "prepare":
                out.texts = ["BEGIN", *out.texts, sql.SQL("PREPARE TRANSACTION {}").format(gid).as_string(conn)]
                conn.execute("BEGIN")
            for out.failed, stmt in zip(out.texts[step.finish == "prepare":], step.stmts):
                if stmt.copy_rows is None:
                    conn.execute(stmt.build(schemas, side))
                    continue
                with conn.cursor().copy(stmt.build(schemas, side)) as cp:
                    for row in stmt.copy_rows:
                        cp.write_row(row)
            if step.finish == "prepare":
                out.failed = out.texts[-1]
                conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(gid))
        except psycopg.Error as exc:
            out.error = exc
        if step.finish == "autocommit":
            conn.autocommit = False
        return out

    def _finish(self, step: Step, side: str, commit: bool, prepared: bool) -> None:
        conn = self.conns[step.role, side]
        if step.finish == "prepare":
            gid = lit(f"{self.w.tag}_{self.step_no}_{side}")
            if prepared:
                conn.execute(sql.SQL("COMMIT PREPARED {}" if commit else "ROLLBACK PREPARED {}").format(gid))
            else:  # failed before or at PREPARE (which rolls back by itself)
                conn.execute("ROLLBACK")
            conn.autocommit = False
        elif step.finish != "autocommit":
            conn.commit() if commit else conn.rollback()

    def run(self, step: Step) -> bool:
        """Run one step on both sides; True when it took effect on both."""
        self.step_no += 1
        twin, vect = self._execute(step, TWIN), self._execute(step, SRC)
        commit = twin.ok and vect.ok and step.finish != "rollback"
        self._finish(step, TWIN, commit, twin.ok)
        try:
            self._finish(step, SRC, commit, vect.ok)
        except psycopg.Error as exc:  # the twin committed: the next comparison shows the difference
            vect.error, vect.failed, commit = exc, "COMMIT", False
        if self.trace:
            print(f"[seed {self.w.seed} step {self.step_no}] {step.kind} as {step.role}: {' ; '.join(vect.texts)}"
                  f"\n    twin: {twin.describe()}\n    vectorized: {vect.describe()}")
        r = self.report
        r.steps += 1
        r.statements += len(step.stmts)
        r.by_kind[step.kind] += len(step.stmts)
        r.by_role[step.role] += len(step.stmts)
        if twin.ok and not vect.ok:
            if step.refusable and refusal(vect.error):
                r.refusals[step.kind] += 1
            else:
                self.fail("fails on the vectorized table, succeeds on its twin", step, step.source, twin, vect)
        elif vect.ok and not twin.ok:
            self.fail("succeeds on the vectorized table, fails on its twin", step, step.source, twin, vect)
        elif not twin.ok:
            r.failed_on_both[step.kind] += 1
        if commit:
            if step.on_commit is not None:
                step.on_commit()
            if step.source is not None and step.kind in KINDS and KINDS[step.kind].ddl:
                step.source.history.append(f"{step.role} {step.kind}: {' ; '.join(vect.texts)}")
        return commit

    def fail(self, what: str, step: Step | None, source: Source | None, twin: Outcome | None = None,
             vect: Outcome | None = None, kind: str = "convergence") -> None:
        self.failed += 1
        self.report.fail(Failure(
            self.w.seed, self.step_no, step.kind if step else kind, step.role if step else "-", source, what,
            twin.texts if twin else [], vect.texts if vect else [], twin.describe() if twin else "",
            vect.describe() if vect else "", list(source.history) if source else []))


# --- one sequence ------------------------------------------------------------------------------------


def pick(w: World) -> tuple[Kind, Source]:
    s = w.rng.choice(w.sources)
    fits = [k for k in KINDS.values() if k.fits(s) and (w.two_phase or k.name != "two_phase")]
    return w.rng.choices(fits, weights=[k.weight for k in fits])[0], s


def run_steps(w: World, runner: Runner, steps: int, check_every: int, max_failures: int) -> None:
    """About ``steps`` steps of random kinds, the twins compared every ``check_every``; then the
    columns the vectorizers read put back in place, and a last comparison."""
    done = 0
    while done < steps and runner.failed < max_failures:
        if w.rng.random() < 0.05:  # a worker runs between statements, on a table it can read
            s = w.rng.choice(w.sources)
            if s.intact:
                try:
                    drain(w, s)
                except Exception as exc:  # noqa: BLE001
                    runner.fail(f"a sync between statements raised {type(exc).__name__}: {exc}", None, s, kind="sync")
            continue
        k, s = pick(w)
        gen, took = k.gen(w, s), None
        while True:
            try:
                step = gen.send(took)
            except StopIteration:
                break
            took = runner.run(step)
            done += 1
            if done % check_every == 0:
                diff = twin_difference(w)
                if diff:
                    runner.fail(f"the vectorized tables and their twins differ after it: {diff}", step, s)
                    return
    for s in w.sources:
        for col in WATCHED:
            for step in restore_column(w, s, col):
                runner.run(step)
    diff = twin_difference(w)
    if diff:
        runner.fail(f"the vectorized tables and their twins differ at the end: {diff}", None, None, kind="twins")


#: The same kinds of source under capture="wal" (test_ddl_property runs them apart, so that the
#: seeds of the trigger shapes keep finding what they were chosen for)
WAL_SHAPES = (
    Shape("pipeline", "int", "plain", where=True, capture="wal"),
    Shape("pipeline", "bigint", "range", capture="wal"),
    Shape("pipeline", "text", "plain", capture="wal"),
    Shape("pipeline", "composite", "list", where=True, capture="wal"),
    Shape("pipeline", "int", "range", where=True, capture="wal"),
)


def run_sequence(db: pgvz.Database, roles: dict[str, str], seed: int, steps: int, report: Report, *,
                 two_phase: bool, tables: int = 6, check_every: int = 5, max_failures: int = 30,
                 trace: bool = False, shapes: tuple[Shape, ...] = SHAPES) -> None:
    """One seeded sequence: set-up, the steps, then every vectorizer whose source still exists
    with its key must converge."""
    w = World(db, seed, roles, report, two_phase=two_phase)
    try:
        setup(w, w.rng.sample(shapes, min(tables, len(shapes))))
        runner = Runner(w, report, trace=trace)
        try:
            run_steps(w, runner, steps, check_every, max_failures)
            for s in w.sources:
                if s.intact:
                    problem = converge(w, s)
                    if problem:
                        runner.fail(f"did not converge: {problem}", None, s)
        finally:
            runner.close()
        report.sequences += 1
    finally:
        teardown(w)
