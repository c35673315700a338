"""The first rule, as a property: pgvz_nb is never the reason an application's statement
fails, and no change is lost.

Seeded random sequences of DDL and DML (tests/ddl_workload.py has one generator per kind)
run against tables carrying each kind of vectorizer (pipeline and callback; int, bigint,
uuid, text and composite keys; plain, range- and list-partitioned and inheritance sources in
two non-public schemas; where= and metadata), issued by three roles: the superuser, the
tables' owner (no access to schema pgvz) and a role that may only write them. Each statement
also runs, in its own transaction, on an unvectorized twin of the same shape and contents:
what succeeds there must succeed on the vectorized table, unless pgvz_nb refuses it in the
documented way (a "pgvz_nb: ..." error with a HINT, for a key column renamed, dropped or
retyped, or a callback source's partition dropped); a statement refused or failing on one side is rolled back on the other, and the
two sides are compared every few steps. After each sequence, every vectorizer whose source
still exists with its key is drained and its destination must hold exactly what the source
implies (a callback's mirror may keep the rows of a table dropped under it: no trigger sees
them go, and there is no destination to compare with; nor, once a table is created again with a
key of another type, the keys queued for the dropped one that the new type cannot hold;
ddl_workload.CALLBACK_DROPS_REACH_THE_CALLBACK).

CI runs a fixed list of seeds. At size: ``PGVZ_DDL_SEQUENCES=200 PGVZ_DDL_STEPS=80 pytest -s
tests/test_ddl_property.py`` (``PGVZ_DDL_SEED`` starts the seeds elsewhere; a failure's
message names its seed: ``PGVZ_DDL_SEED=<seed> PGVZ_DDL_SEQUENCES=1`` replays it), or
``pytest -m slow -s tests/test_ddl_property.py``. The counts go to
test-artifacts/ddl_property.json.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from psycopg import sql

from .ddl_workload import OWNER, SHAPES, SUPER, WAL_SHAPES, WRITER, Report, run_sequence

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CI_SEEDS = (2, 3, 4, 6, 9, 10, 11)  # on the code before issue 13, these find each defect it lists that the
# default server can show (3, 4 and 5; 6 needs max_prepared_transactions > 0) and two it does not list
CI_STEPS = 40
WAL_CI_SEEDS = (2, 3, 4, 108, 123)  # 108 and 123: a move, then a drop and create, between captures


@pytest.fixture(scope="module")
def roles(db):
    """The tables' owner (it creates tables, but has no USAGE on schema pgvz) and a writer
    (INSERT, UPDATE, DELETE, TRUNCATE, SELECT on the tables; nothing else); cluster-wide, so
    uniquely named, and dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = {OWNER: f"ddl_owner_{suffix}", WRITER: f"ddl_writer_{suffix}"}
    with db.connect(autocommit=True) as c:
        names[SUPER], database = c.execute("SELECT current_user, current_database()").fetchone()
        for role in (OWNER, WRITER):
            c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(names[role])))
        # ALTER SCHEMA ... RENAME needs CREATE on the database too
        c.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(database),
                                                                      sql.Identifier(names[OWNER])))
    yield names
    with db.connect(autocommit=True) as c:
        for role in (OWNER, WRITER):
            c.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(names[role]),
                                                                   sql.Identifier(names[SUPER])))
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(names[role])))
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(names[role])))


def two_phase_available(db) -> bool:
    with db.connect() as c:
        return int(c.execute("SHOW max_prepared_transactions").fetchone()[0]) > 0


def owner_may_use_pgvz(db, roles) -> bool:
    with db.connect() as c:
        return c.execute("SELECT to_regnamespace('pgvz') IS NOT NULL AND has_schema_privilege(%s, 'pgvz', 'USAGE')",
                         [roles[OWNER]]).fetchone()[0]


def run(db, roles, seeds, steps, shapes=SHAPES) -> Report:
    report = Report()
    two_phase = two_phase_available(db)
    t0 = time.perf_counter()
    for seed in seeds:
        run_sequence(db, roles, seed, steps, report, two_phase=two_phase, trace=bool(os.environ.get("PGVZ_DDL_TRACE")),
                     shapes=shapes)
    counts = {"seeds": list(seeds), "steps_per_sequence": steps, "seconds": round(time.perf_counter() - t0, 1),
              "two_phase": two_phase, **report.as_json()}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ddl_property.json").write_text(json.dumps(counts, indent=2) + "\n")
    print(f"\nDDL property: {report.sequences} sequences (seeds {list(seeds)}), {report.steps} steps, "
          f"{report.statements} statements in {counts['seconds']} s; two-phase commit "
          f"{'on' if two_phase else 'off (max_prepared_transactions = 0)'}")
    print(f"  by role: {counts['by_role']}")
    print(f"  by kind: {counts['by_kind']}")
    print(f"  refused by pgvz_nb (documented): {counts['refusals_by_kind']}")
    print(f"  failed on both sides alike: {counts['failed_on_both_by_kind']}")
    print(f"  callback mirror rows of dropped tables left (documented, allowed): "
          f"{counts['callback_rows_of_dropped_tables_kept']}")
    print(f"  failures found: {report.failures} ({len(report.distinct)} distinct; each in the assertion message "
          f"and in {ARTIFACTS / 'ddl_property.json'})")
    return report


def check(report: Report, db, roles) -> None:
    assert not owner_may_use_pgvz(db, roles), (
        "the owner role has USAGE on schema pgvz (granted to PUBLIC?): this test's owner is meant to have none")
    assert report.statements > 0
    if report.distinct:  # pytest.fail: an assert would print the whole report's repr too
        pytest.fail(f"{report.failures} failures, {len(report.distinct)} distinct (replay one with "
                    "PGVZ_DDL_SEED=<seed> PGVZ_DDL_SEQUENCES=1 and the same PGVZ_DDL_STEPS; PGVZ_DDL_TRACE=1 "
                    "prints every step):\n\n"
                    + "\n\n".join(str(f) for f in report.distinct.values()), pytrace=False)


def chosen_seeds(ci_seeds: tuple[int, ...]) -> tuple[int, ...] | range:
    """The CI seeds, unless PGVZ_DDL_SEED / PGVZ_DDL_SEQUENCES choose others."""
    if os.environ.get("PGVZ_DDL_SEED") or os.environ.get("PGVZ_DDL_SEQUENCES"):
        first = int(os.environ.get("PGVZ_DDL_SEED", ci_seeds[0]))
        return range(first, first + int(os.environ.get("PGVZ_DDL_SEQUENCES", len(ci_seeds))))
    return ci_seeds


def test_random_ddl_and_dml_never_fail_because_of_pgvz_and_every_vectorizer_converges(db, roles):
    steps = int(os.environ.get("PGVZ_DDL_STEPS", CI_STEPS))
    check(run(db, roles, chosen_seeds(CI_SEEDS), steps), db, roles)


def test_random_ddl_and_dml_under_wal_capture(db, roles):
    """The same property for vectorizers with capture="wal": no trigger on their tables, and
    the capture (not the application's DDL) follows what the DDL did, after the fact: renames
    and moves by the table's oid, a table created again under the name, partitions attached,
    detached and dropped, a key's new type. One thing it cannot see, documented and modelled
    (ddl_workload.lost): a table dropped, created again and moved (or moved, dropped and created
    again) with no capture between is not the vectorizer's any more."""
    steps = int(os.environ.get("PGVZ_DDL_STEPS", CI_STEPS))
    check(run(db, roles, chosen_seeds(WAL_CI_SEEDS), steps, WAL_SHAPES), db, roles)


@pytest.mark.slow
def test_random_ddl_and_dml_at_size(db, roles):
    """The stress size: 100 sequences of 80 steps unless PGVZ_DDL_* say otherwise."""
    first = int(os.environ.get("PGVZ_DDL_SEED", 1000))
    seeds = range(first, first + int(os.environ.get("PGVZ_DDL_SEQUENCES", 100)))
    check(run(db, roles, seeds, int(os.environ.get("PGVZ_DDL_STEPS", 80))), db, roles)
